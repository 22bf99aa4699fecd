"""The embedded serving processes from the command line: per use case, the provider's ``ServingProcess``
(``airflow_mlops.hooks.bentoml_process``) with the current profile's services.

    python -m airflow_mlops_dev.serving up [USECASE_FOLDER] [--port 3000]   # start (if not running), wait
    python -m airflow_mlops_dev.serving status [USECASE_FOLDER]
    python -m airflow_mlops_dev.serving down [USECASE_FOLDER]

Without a folder: ``MLOPS_USECASE`` if set, else every use case under ``MLOPS_PROJECTS`` (each on the port of
``airflow_mlops.usecase.config.serving_url``). The state (pid, token and log files under ``MLOPS_HOME``) is the
provider's: a server started here is the one ``BentoMLDeployOperator`` finds, swaps and restarts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from airflow_mlops import settings
from airflow_mlops.hooks.bentoml_process import (
    SERVICE,
    ServingError,
    ServingProcess,
    admin_token,
    embedded_token,
    free_port,
)

__all__ = [
    "SERVICE",
    "ServingError",
    "ServingProcess",
    "admin_token",
    "embedded",
    "embedded_token",
    "free_port",
    "main",
    "usecase_folders",
]


class _NoChampion(Exception):
    pass


def _stop_waiting_without_champion(http: object) -> None:
    import httpx

    try:
        state = http.post("/info", json={})  # type: ignore[attr-defined]
    except httpx.HTTPError:
        return
    if state.status_code == 200 and "does not exist yet" in (state.json().get("load_error") or ""):
        raise _NoChampion(state.json()["load_error"])


def usecase_folders(usecase: str | Path | None = None) -> list[Path]:
    """The use cases meant: ``usecase`` if given, else ``MLOPS_USECASE``, else every one under ``MLOPS_PROJECTS``."""
    from airflow_mlops.usecase import config

    chosen = usecase or os.environ.get("MLOPS_USECASE")
    if chosen:
        return [Path(chosen).resolve()]
    return config.discover()


def embedded(usecase: str | Path | None = None, port: int | None = None) -> ServingProcess:
    """The embedded server of a use case under ``MLOPS_HOME`` (port: argument, else the port of the use case's
    loopback ``serving_url`` — ``MLOPS_SERVING_URL__<NAME>``, ``MLOPS_SERVING_PORT__<NAME>``,
    ``serving.server.port`` —, else the pid file's, else 3000).

    :param usecase: the use-case folder; None: the only one ``usecase_folders`` finds.
    :raises ValueError: no use case given and not exactly one found.
    """
    from urllib.parse import urlsplit

    from airflow_mlops.usecase import config

    if usecase is None:
        found = usecase_folders()
        if len(found) != 1:
            raise ValueError(
                f"{len(found)} use cases found ({', '.join(p.name for p in found) or 'none'}): name the use-case "
                "folder (or set MLOPS_USECASE)"
            )
        usecase = found[0]
    from airflow_mlops_dev.devstack import profile_env

    # The profile's services (production: the MLflow server, Feast on Redis) as Airflow's components see them.
    process = ServingProcess(usecase=usecase, home=settings.mlops_home(), env=profile_env())
    parts = urlsplit(config.serving_url(process.config))
    configured = parts.port if parts.hostname in ("127.0.0.1", "localhost") else None
    process.port = int(port or configured or process.recorded_port() or 3000)
    return process


def _example_request(process: ServingProcess) -> str:
    """A canned request of the use case as JSON, for the ``curl`` hint (empty if there is none)."""
    import json

    from airflow_mlops.core.serving_schemas import ServingSettings

    try:
        return json.dumps(ServingSettings.from_usecase(process.config).canned()["single"][0])
    except (ValueError, KeyError):
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_mlops_dev.serving", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("usecase", nargs="?", default=None, help="the use-case folder (default: every use case)")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    folders = usecase_folders(args.usecase)
    if not folders:
        print("no use case to serve: name its folder, set MLOPS_USECASE or MLOPS_PROJECTS", file=sys.stderr)
        return 1
    if args.port is not None and len(folders) > 1:
        print("--port needs one use case: name its folder", file=sys.stderr)
        return 1
    code = 0
    for folder in folders:
        code = max(code, _command(args.command, embedded(folder, args.port), args.timeout))
    return code


def _command(command: str, process: ServingProcess, timeout: float) -> int:
    label = process.config.name
    if command == "up":
        pid = process.start()
        print(f"serving {label} (pid {pid}) on {process.url}, log: {process.logfile}", flush=True)
        try:
            waited = process.wait_ready(timeout, on_poll=_stop_waiting_without_champion)
        except _NoChampion as err:
            print(
                f"up, not ready: {err} (the training DAG's deploy step, or `up` again once a champion exists, loads it)"
            )
            return 0
        except ServingError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        example = _example_request(process)
        print(f"ready after {waited:.1f} s.")
        if example:
            print(
                f"Try:\n  curl -s -X POST {process.url}/predict -H 'Content-Type: application/json' -d '{{\"rows\": [{example}]}}'"
            )
    elif command == "down":
        print(f"stopped serving {label}" if process.stop() else f"serving {label} was not running")
    else:
        pid = process.pid()
        state = f"running, pid {pid}, {process.url}" if pid else "stopped"
        print(f"serving {label:<16} {state}")
        return 0 if pid else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
