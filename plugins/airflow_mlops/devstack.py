"""The embedded Airflow of the default profile: start, stop and talk to it.

    python -m airflow_mlops.devstack up      # API server + UI on 127.0.0.1:8080, scheduler, DAG processor, triggerer
    python -m airflow_mlops.devstack status
    python -m airflow_mlops.devstack down

Everything lives under ``MLOPS_HOME``: the Airflow home (SQLite, LocalExecutor), one log file per component in
``logs/``, pid files in ``run/``. Each component runs in its own process group, so ``down`` also stops the
task processes a component started. ``MLOPS_AIRFLOW_PORT`` picks another port.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from airflow_mlops import settings
from airflow_mlops.processes import group_alive as _group_alive
from airflow_mlops.processes import signal_group as _signal_group

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
ADMIN_USER = "admin"


@dataclass(frozen=True)
class Stack:
    """One embedded Airflow: its home, its port and the environment every component shares."""

    home: Path
    port: int = 8080

    @classmethod
    def from_env(cls) -> Stack:
        return cls(home=settings.mlops_home(), port=int(os.environ.get("MLOPS_AIRFLOW_PORT", "8080")))

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _secret(self, name: str) -> str:
        path = self.airflow_home / f".{name}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def env(self) -> dict[str, str]:
        """The environment of every component (and of any CLI call against this stack)."""
        root = settings.project_root()
        venv_bin = str(Path(sys.executable).parent)
        env = dict(os.environ)
        env.update(
            {
                "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
                "MLOPS_HOME": str(self.home),
                "AIRFLOW_HOME": str(self.airflow_home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": env.get("AIRFLOW__CORE__PARALLELISM", "4"),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt_secret"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.airflow_home / 'airflow.db'}",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs" / "tasks"),
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
                "AIRFLOW__TRIGGERER__CAPACITY": "50",
                "PYTHONWARNINGS": "ignore",
            }
        )
        return env

    # -- processes -----------------------------------------------------------------------------------------
    def _pidfile(self, component: str) -> Path:
        return self.home / "run" / f"{component}.pid"

    def pids(self) -> dict[str, int]:
        alive = {}
        for component in COMPONENTS:
            path = self._pidfile(component)
            if path.exists():
                pid = int(path.read_text())
                try:
                    os.kill(pid, 0)
                    alive[component] = pid
                except ProcessLookupError:
                    path.unlink()
        return alive

    def migrate(self) -> None:
        log = self.home / "logs" / "db-migrate.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            done = subprocess.run([_airflow(), "db", "migrate"], env=self.env(), stdout=out, stderr=subprocess.STDOUT)
        if done.returncode:
            raise RuntimeError(f"airflow db migrate failed (exit {done.returncode}); see {log}")

    def up(self, timeout: float = 180.0) -> None:
        """Start the components that are not running, then wait until the API reports all of them healthy."""
        (self.home / "run").mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        running = self.pids()
        if len(running) < len(COMPONENTS):
            if not running:
                print(f"preparing the metadata DB in {self.airflow_home} ...", flush=True)
                self.migrate()
            for component in COMPONENTS:
                if component in running:
                    continue
                log = (self.home / "logs" / f"{component}.log").open("ab")
                proc = subprocess.Popen(
                    [_airflow(), *component.split()],
                    env=self.env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd=self.home,
                )
                self._pidfile(component).write_text(str(proc.pid))
                print(f"started {component} (pid {proc.pid}), log: {log.name}", flush=True)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 180.0) -> dict:
        import httpx

        deadline, last = time.monotonic() + timeout, "no answer yet"
        while time.monotonic() < deadline:
            missing = [c for c in COMPONENTS if c not in self.pids()]
            if missing:
                raise RuntimeError(f"{', '.join(missing)} exited; see {self.home / 'logs'}")
            try:
                health = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
                states = {k: v.get("status") for k, v in health.items() if isinstance(v, dict)}
                if states and all(s == "healthy" for s in states.values()):
                    return health
                last = json.dumps(states)
            except (httpx.HTTPError, ValueError) as err:
                last = str(err)
            time.sleep(1.0)
        raise TimeoutError(f"Airflow at {self.url} not healthy after {timeout:.0f} s: {last}; see {self.home / 'logs'}")

    def down(self, grace: float = 20.0) -> None:
        """Stop every component and the processes it started (each runs in its own process group)."""
        running = self.pids()
        for pid in running.values():
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_group_alive(pid) for pid in running.values()):
            time.sleep(0.3)
        for component, pid in running.items():
            if _group_alive(pid):
                _signal_group(pid, signal.SIGKILL)
            self._pidfile(component).unlink(missing_ok=True)
            print(f"stopped {component} (pid {pid})", flush=True)

    def admin_password(self) -> str:
        path = self.airflow_home / "simple_auth_manager_passwords.json.generated"
        return json.loads(path.read_text())[ADMIN_USER]


def _airflow() -> str:
    return shutil.which("airflow", path=str(Path(sys.executable).parent)) or "airflow"


class AirflowClient:
    """A small client for the Airflow REST API v2 (what an external system uses to trigger runs)."""

    def __init__(self, url: str, username: str, password: str) -> None:
        import httpx

        token = httpx.post(f"{url}/auth/token", json={"username": username, "password": password}, timeout=30)
        token.raise_for_status()
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token.json()['access_token']}"}, timeout=30
        )

    def _ok(self, response):
        if response.is_error:
            raise RuntimeError(
                f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
            )
        return response.json() if response.content else None

    def wait_dag(self, dag_id: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.http.get(f"/api/v2/dags/{dag_id}")
            if response.status_code == 200:
                return response.json()
            time.sleep(1.0)
        raise TimeoutError(f"DAG {dag_id} was not parsed within {timeout:.0f} s")

    def unpause(self, dag_id: str) -> None:
        self._ok(self.http.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}))

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        run = self._ok(
            self.http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        )
        return run["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict]:
        return self._ok(self.http.get(f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 100}))["dag_runs"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 300.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self._ok(self.http.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"))["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(1.0)
        raise TimeoutError(f"run {run_id} of {dag_id} did not finish within {timeout:.0f} s")

    def wait_idle(self, dag_id: str, timeout: float = 600.0) -> list[dict]:
        """Wait until no run of ``dag_id`` is queued or running; returns all its runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.runs(dag_id)
            if runs and not any(r["state"] in ("queued", "running") for r in runs):
                return runs
            time.sleep(2.0)
        raise TimeoutError(f"{dag_id} still has active runs after {timeout:.0f} s")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self._ok(self.http.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"))["task_instances"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_mlops.devstack", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    stack = Stack.from_env()
    if args.command == "up":
        try:
            stack.up()
        except (RuntimeError, TimeoutError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"Airflow is up: {stack.url}  (login: {ADMIN_USER} / {stack.admin_password()})")
        print(f"logs: {stack.home / 'logs'}   stop with: make down")
    elif args.command == "down":
        stack.down()
    else:
        pids = stack.pids()
        for component in COMPONENTS:
            state = f"running, pid {pids[component]}" if component in pids else "stopped"
            print(f"{component:14s} {state}")
        return 0 if len(pids) == len(COMPONENTS) else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
