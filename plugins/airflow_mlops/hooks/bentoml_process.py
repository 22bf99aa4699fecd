"""The suite's own serving processes: ``bentoml serve airflow_mlops.serving_service:MlopsService`` of one use case
on 127.0.0.1 (``MLOPS_USECASE`` = its folder), known by a pid file under ``MLOPS_HOME``.

State under ``MLOPS_HOME``: ``run/<name>.pid`` (``serving-<use case>`` for the embedded server), ``run/serving.token``
(the admin token, 0600, shared by the use cases) and ``logs/<name>.log``. The server runs in its own process group,
so ``stop`` stops its workers too; SIGTERM first (BentoML runs the service's shutdown hook: the inference log is
flushed), SIGKILL after a grace period.

Runtime code: ``BentoMLDeployOperator`` starts the embedded server when nothing answers, ``BentoMLInfraValidateOperator`` a
second, pinned one on a free port (both through ``BentoServingHook``). The developer command line
(``python -m airflow_mlops_dev.serving up|down|status``) lives in the ``airflow-mlops-dev`` distribution.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_mlops import settings
from airflow_mlops.processes import descendants, kill_all, process_running
from airflow_mlops.processes import group_alive as _group_alive
from airflow_mlops.processes import signal_group as _signal_group

if TYPE_CHECKING:
    from airflow_mlops.usecase.config import UseCase

SERVICE = "airflow_mlops.serving_service:MlopsService"
TOKEN_FILE = "serving.token"


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def admin_token(home: Path | None = None) -> str:
    """The embedded server's admin token (created on first use, mode 0600)."""
    path = (home or settings.mlops_home()) / "run" / TOKEN_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def embedded_token(home: Path | None = None) -> str:
    """The token the embedded server accepts: ``MLOPS_SERVING_TOKEN`` if set (the server gives it precedence
    over its token file), else the home's ``admin_token``."""
    return os.environ.get("MLOPS_SERVING_TOKEN") or admin_token(home)


class ServingError(RuntimeError):
    """The serving process exited or did not become ready; the message carries the tail of its log."""


@dataclass
class ServingProcess:
    """One ``bentoml serve`` of a use case's service on ``127.0.0.1:<port>``, known by its pid file.

    :param usecase: the use-case folder (holding ``mlops.yaml``): ``MLOPS_USECASE`` of the server.
    :param name: names the pid and log files; default ``serving-<use case name>`` (the embedded server).
    :param env: extra environment for the server (e.g. ``MLOPS_SERVING_MODEL_VERSION`` to pin a version).
    :param lake_root: the use case's lake root, where the server's inference log goes (``MLOPS_SERVING_LAKE_ROOT``);
        default ``airflow_mlops.usecase.config.lake_url`` in this process.
    """

    usecase: str | Path
    port: int = 3000
    name: str = ""
    home: Path = field(default_factory=settings.mlops_home)
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    lake_root: str | None = None

    def __post_init__(self) -> None:
        self.usecase = Path(self.usecase).resolve()
        if not self.name:
            self.name = f"serving-{self.config.name}"

    @property
    def config(self) -> UseCase:
        from airflow_mlops.usecase import config

        return config.load(self.usecase)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pidfile(self) -> Path:
        return self.home / "run" / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return self.home / "logs" / f"{self.name}.log"

    @property
    def token_file(self) -> Path:
        return self.home / "run" / TOKEN_FILE

    def pid(self) -> int | None:
        """The running server's pid (its process group id), or None; a stale pid file is removed."""
        if not self.pidfile.exists():
            return None
        pid = int(self.pidfile.read_text().split()[0])
        if _group_alive(pid):
            return pid
        self.pidfile.unlink(missing_ok=True)
        return None

    def recorded_port(self) -> int | None:
        if not self.pidfile.exists():
            return None
        parts = self.pidfile.read_text().split()
        return int(parts[1]) if len(parts) > 1 else None

    def environment(self) -> dict[str, str]:
        # The profile's services (production: the MLflow server, Feast on Redis) come with this process's
        # environment (an Airflow component's) or with ``env`` (the developer command line passes them).
        env = dict(os.environ)
        # Started from an Airflow task, the environment carries the task runner's DB block
        # ("airflow-db-not-allowed:///"), which Airflow refuses at import; the server never touches Airflow's DB.
        for name in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__SQL_ALCHEMY_CONN"):
            if env.get(name, "").startswith("airflow-db-not-allowed"):
                env.pop(name)
        venv_bin = str(Path(sys.executable).parent)
        admin_token(self.home)
        from airflow_mlops.usecase import config

        env.update(
            {
                "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
                "MLOPS_HOME": str(self.home),
                "MLOPS_USECASE": str(self.usecase),
                "MLOPS_SERVING_LAKE_ROOT": self.lake_root or config.lake_url(self.config),
                "MLOPS_SERVING_TOKEN_FILE": str(self.token_file),
                "BENTOML_HOME": env.get("BENTOML_HOME") or str(self.home / "bentoml"),
                "BENTOML_DO_NOT_TRACK": "true",
                "DO_NOT_TRACK": "1",
                "FEAST_USAGE": "False",
                "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS") or "1",
                "PYTHONWARNINGS": "ignore",
            }
        )
        env.update(self.env)
        return env

    def start(self) -> int:
        """Start the server unless one with this name runs; returns its pid (does not wait for readiness).

        Two callers at once (a deploy task's retry and ``make up`` after a crash) are serialized on a lock file
        next to the pid file: one starts the server, the other gets its pid.
        """
        import fcntl

        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        with self.pidfile.with_name(f"{self.pidfile.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._start_unlocked()

    def _start_unlocked(self) -> int:
        running = self.pid()
        if running is not None:
            return running
        if _port_in_use(self.host, self.port):
            raise ServingError(f"port {self.port} on {self.host} is already taken by another process")
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        bentoml = Path(sys.executable).with_name("bentoml")
        command = [str(bentoml), "serve", SERVICE, "--host", self.host, "--port", str(self.port)]
        with self.logfile.open("ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                command,
                cwd=settings.project_root(),
                env=self.environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pidfile.write_text(f"{proc.pid} {self.port}")
        self._proc = proc
        return proc.pid

    def wait_ready(self, timeout: float = 120.0, on_poll: object = None) -> float:
        """Poll ``/readyz`` until 200; returns seconds waited.

        :param on_poll: called with an ``httpx.Client`` between polls; may raise to give up early.
        :raises ServingError: the process exited, or ``timeout`` passed (with the log's tail).
        """
        import httpx

        started = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=5.0) as http:
            while True:
                if self.pid() is None:
                    raise ServingError(f"{self.name} exited before it was ready:\n{self.log_tail()}")
                try:
                    if http.get("/readyz").status_code == 200:
                        return time.monotonic() - started
                except httpx.HTTPError:
                    pass
                if callable(on_poll):
                    on_poll(http)
                if time.monotonic() - started > timeout:
                    raise ServingError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")
                time.sleep(0.5)

    def stop(self, grace: float = 30.0) -> bool:
        """SIGTERM the process group, SIGKILL after ``grace`` seconds; True if something was running."""
        pid = self.pid()
        if pid is None:
            return False
        # BentoML's workers run in process groups of their own: killing the server's group alone would leave
        # them answering on its socket. They stop with the server on SIGTERM; past ``grace`` each is killed.
        workers = descendants(pid)
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (_group_alive(pid) or any(map(process_running, workers))):
            time.sleep(0.2)
        if _group_alive(pid):
            workers += descendants(pid)  # and the workers it started meanwhile (SIGTERM early in its start is lost)
            _signal_group(pid, signal.SIGKILL)
        kill_all(workers)
        proc = getattr(self, "_proc", None)
        if proc is not None:
            proc.wait(timeout=10)
        self.pidfile.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 40) -> str:
        if not self.logfile.exists():
            return "(no log)"
        return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
