"""The native Airflow of both profiles: start, stop and talk to it.

    python -m airflow_mlops_dev.devstack up      # API server + UI on 127.0.0.1:8080, scheduler, DAG processor, triggerer
    python -m airflow_mlops_dev.devstack status
    python -m airflow_mlops_dev.devstack down

``MLOPS_PROFILE`` picks the profile (configuration only; the DAGs and operators are the same):

* ``embedded`` (default): SQLite metadata DB and LocalExecutor, MLflow on SQLite, Feast online store on SQLite.
* ``production``: CeleryExecutor on PostgreSQL and Redis, plus ``airflow celery worker`` and an MLflow tracking
  server (PostgreSQL backend, artifacts in the lake) as components; the Feast online store on Redis. Where the
  services are: ``MLOPS_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432``, the databases
  ``MLOPS_AIRFLOW_DB``/``MLOPS_MLFLOW_DB``, default ``airflow``/``mlflow``, are created if missing),
  ``MLOPS_REDIS_URL`` (default ``redis://127.0.0.1:6379``; Celery broker in db ``MLOPS_CELERY_REDIS_DB`` = 0,
  Feast in db ``MLOPS_FEAST_REDIS_DB`` = 1), ``MLOPS_MLFLOW_PORT`` (default 5000). It is what
  ``docker-compose.yaml`` runs, as processes on this machine.

Signing in: the embedded profile keeps Airflow's ``SimpleAuthManager`` (one user, ``admin``, with the password
Airflow generates into ``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated``), which Airflow documents as
for development and testing. The production profile uses the FAB auth manager (``apache-airflow-providers-fab``):
users and roles (Admin, Op, User, Viewer, Public) in the metadata DB; ``up`` migrates its tables and keeps the user
``admin`` (role Admin) with the password in ``$AIRFLOW_HOME/.admin_password`` (generated once, mode 600). More users:
``python -m airflow_mlops_dev.devstack add-user NAME --role Viewer`` (prints the generated password). ``up`` and
``status`` print how to sign in.

Everything else lives under ``MLOPS_HOME``: the Airflow home, one log file per component in ``logs/``, pid files
in ``run/``. Each component runs in its own process group, so ``down`` also stops the task processes a component
started. ``MLOPS_AIRFLOW_PORT`` picks another port. ``down`` and ``status`` use the profile ``up`` recorded.
"""

from __future__ import annotations

import argparse
import base64
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
#: The components of each profile; ``celery-worker`` is ``airflow celery worker``, ``mlflow-server`` is
#: ``mlflow server``.
PROFILES = {"embedded": COMPONENTS, "production": (*COMPONENTS, "celery-worker", "mlflow-server")}
ALL_COMPONENTS = PROFILES["production"]
ADMIN_USER = "admin"
#: Who signs users in, per profile: Airflow's default (development and testing) or FAB's (users and roles).
AUTH_MANAGERS = {
    "embedded": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
    "production": "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager",
}
#: The roles the FAB auth manager creates (``airflow users create --role``).
FAB_ROLES = ("Admin", "Op", "User", "Viewer", "Public")
PROFILE_FILE = "profile"
#: Written to a component's log before each start: readiness is judged on the log after the newest one.
START_MARK = "=== started"
#: The embedded profile's SQLite metadata DB is shared by the API server, scheduler, DAG processor, triggerer and
#: the task processes: a writer waits up to this long for another's lock (sqlite3's default, 5 s, is short on a
#: busy small host and surfaces as an API 500 "Database error"). Airflow imports it by name
#: (``[database] sql_alchemy_connect_args``).
SQLITE_CONNECT_ARGS = {"timeout": 60}


@dataclass(frozen=True)
class ProductionServices:
    """Where the production profile's PostgreSQL, Redis and MLflow server are (``MLOPS_*`` variables)."""

    postgres_url: str = "postgresql://postgres@127.0.0.1:5432"
    airflow_db: str = "airflow"
    mlflow_db: str = "mlflow"
    redis_url: str = "redis://127.0.0.1:6379"
    celery_redis_db: int = 0
    feast_redis_db: int = 1
    mlflow_port: int = 5000

    @classmethod
    def from_env(cls) -> ProductionServices:
        env, default = os.environ, cls()
        return cls(
            postgres_url=(env.get("MLOPS_POSTGRES_URL") or default.postgres_url).rstrip("/"),
            airflow_db=env.get("MLOPS_AIRFLOW_DB") or default.airflow_db,
            mlflow_db=env.get("MLOPS_MLFLOW_DB") or default.mlflow_db,
            redis_url=(env.get("MLOPS_REDIS_URL") or default.redis_url).rstrip("/"),
            celery_redis_db=int(env.get("MLOPS_CELERY_REDIS_DB") or default.celery_redis_db),
            feast_redis_db=int(env.get("MLOPS_FEAST_REDIS_DB") or default.feast_redis_db),
            mlflow_port=int(env.get("MLOPS_MLFLOW_PORT") or default.mlflow_port),
        )

    def database_url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{self.postgres_url.split('://', 1)[1]}/{database}"

    @property
    def broker_url(self) -> str:
        return f"{self.redis_url}/{self.celery_redis_db}"

    @property
    def feast_redis(self) -> str:
        """Feast's redis ``connection_string``: ``host:port,db=N[,password=...]``."""
        from urllib.parse import urlsplit

        url = urlsplit(self.redis_url)
        parts = [f"{url.hostname or '127.0.0.1'}:{url.port or 6379}", f"db={self.feast_redis_db}"]
        if url.password:
            parts.append(f"password={url.password}")
        return ",".join(parts)

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def ensure_databases(self) -> list[str]:
        """Create the Airflow and MLflow databases when missing (as the compose file's init service does)."""
        import psycopg2
        from psycopg2 import sql

        created = []
        conn = psycopg2.connect(self.database_url("postgres", driver="postgresql"))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for name in dict.fromkeys((self.airflow_db, self.mlflow_db)):
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cur.fetchone() is None:
                        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                        created.append(name)
        finally:
            conn.close()
        return created

    def env(self) -> dict[str, str]:
        """What every component, task and the serving process of this profile share."""
        return {
            "MLOPS_PROFILE": "production",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url(self.airflow_db),
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": self.database_url(self.airflow_db, driver="db+postgresql"),
            # The MLflow server as the suite finds it (MlflowHook: the mlflow_default connection).
            "AIRFLOW_CONN_MLFLOW_DEFAULT": self.mlflow_url,
            "MLOPS_FEAST_ONLINE_STORE": "redis",
            "MLOPS_FEAST_REDIS": self.feast_redis,
            # The MLflow server's job runner (a process and seven huey consumers, ~0.8 GiB) runs MLflow's GenAI
            # jobs (scorers, prompt optimization), which the suite does not use; off, as in compose.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }


def current_profile(home: Path | None = None) -> str:
    """``MLOPS_PROFILE``, else the profile ``up`` recorded under ``MLOPS_HOME``, else ``embedded``."""
    profile = os.environ.get("MLOPS_PROFILE", "").strip().lower()
    if not profile:
        recorded = (home or settings.mlops_home()) / "run" / PROFILE_FILE
        profile = recorded.read_text().strip() if recorded.exists() else "embedded"
    if profile not in PROFILES:
        raise ValueError(f"MLOPS_PROFILE={profile!r}: expected one of {', '.join(PROFILES)}")
    return profile


def profile_env() -> dict[str, str]:
    """The service settings of the current profile for a process outside Airflow (e.g. the serving process)."""
    if current_profile() != "production":
        return {}
    services = ProductionServices.from_env().env()
    keep = ("MLOPS_", "AIRFLOW_CONN_")
    return {k: v for k, v in services.items() if k.startswith(keep)}


@dataclass(frozen=True)
class Stack:
    """One native Airflow: its home, its port, its profile and the environment every component shares."""

    home: Path
    port: int = 8080
    profile: str = "embedded"

    @classmethod
    def from_env(cls) -> Stack:
        home = settings.mlops_home()
        return cls(home=home, port=int(os.environ.get("MLOPS_AIRFLOW_PORT", "8080")), profile=current_profile(home))

    @property
    def components(self) -> tuple[str, ...]:
        return PROFILES[self.profile]

    @property
    def services(self) -> ProductionServices:
        return ProductionServices.from_env()

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def sqlite_db(self) -> Path:
        """The embedded profile's metadata DB."""
        return self.airflow_home / "airflow.db"

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

    def _internal_port(self, name: str) -> int:
        """A port for a component's internal server (log servers, health check), chosen free once per home, so two
        stacks on one machine (``make demo`` and ``make test``) never fight over Airflow's fixed defaults."""
        path = self.home / "run" / "ports.json"
        ports = json.loads(path.read_text()) if path.exists() else {}
        if name not in ports:
            from airflow_mlops.hooks.bentoml_process import free_port

            ports[name] = free_port()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(ports, indent=2))
        return int(ports[name])

    def _fernet_key(self) -> str:
        path = self.airflow_home / ".fernet_key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
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
                "AIRFLOW__CORE__AUTH_MANAGER": AUTH_MANAGERS["embedded"],
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt_secret"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.sqlite_db}",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs" / "tasks"),
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
                "AIRFLOW__TRIGGERER__CAPACITY": "50",
                "PYTHONWARNINGS": "ignore",
            }
        )
        for name in (
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT",
        ):
            env.setdefault(name, str(self._internal_port(name)))
        if self.profile == "production":
            env.update(self.services.env())
            env.update(
                {
                    "AIRFLOW__CORE__FERNET_KEY": self._fernet_key(),
                    "AIRFLOW__CORE__AUTH_MANAGER": AUTH_MANAGERS["production"],
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": env.get("AIRFLOW__CELERY__WORKER_CONCURRENCY", "4"),
                }
            )
        else:
            # By its module's name, not ``__name__``: that is ``__main__`` under ``python -m`` (``make up``).
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] = "airflow_mlops_dev.devstack.SQLITE_CONNECT_ARGS"
        if env["AIRFLOW__CORE__AUTH_MANAGER"] != AUTH_MANAGERS["embedded"]:
            env.pop("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS")
        return env

    # -- processes -----------------------------------------------------------------------------------------
    def _pidfile(self, component: str) -> Path:
        return self.home / "run" / f"{component}.pid"

    def pids(self) -> dict[str, int]:
        """The running components (of any profile: ``down`` stops what another profile left)."""
        alive = {}
        for component in ALL_COMPONENTS:
            path = self._pidfile(component)
            if path.exists():
                pid = int(path.read_text())
                if _running(pid):
                    alive[component] = pid
                else:
                    path.unlink()
        return alive

    def migrate(self) -> None:
        """Migrate the metadata DB (with the FAB provider installed, ``airflow db migrate`` migrates FAB's tables
        too); in production, also make sure the ``admin`` user signs in with ``admin_password()``."""
        log = self.home / "logs" / "db-migrate.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            done = subprocess.run([_airflow(), "db", "migrate"], env=self.env(), stdout=out, stderr=subprocess.STDOUT)
        if done.returncode:
            raise RuntimeError(f"airflow db migrate failed (exit {done.returncode}); see {log}")
        if self.profile == "embedded":
            use_wal(self.sqlite_db)
        else:
            self.add_user(ADMIN_USER, "Admin", self.admin_password())

    def add_user(self, username: str, role: str, password: str | None = None) -> str:
        """Create a user of the production profile's FAB auth manager (``airflow users create``) with ``role`` and
        ``password`` (generated when None); a user that exists gets ``password`` (its role is left as it is).
        Returns the password."""
        if self.profile != "production":
            raise ValueError(
                f"the {self.profile} profile signs in with the SimpleAuthManager (user {ADMIN_USER} only): users and "
                "roles are the production profile's (MLOPS_PROFILE=production)"
            )
        if role not in FAB_ROLES:
            raise ValueError(f"role {role!r}: expected one of {', '.join(FAB_ROLES)}")
        password = password or secrets.token_urlsafe(16)
        log = self.home / "logs" / "users.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        # The CLI takes the password as an argument (it prompts otherwise), as in Airflow's own compose file.
        create = [_airflow(), "users", "create", "--username", username, "--password", password, "--role", role]
        create += ["--firstname", username, "--lastname", role, "--email", f"{username}@localhost"]
        reset = [_airflow(), "users", "reset-password", "--username", username, "--password", password]
        for command in (create, reset):
            done = subprocess.run(command, env=self.env(), capture_output=True, text=True)
            with log.open("a") as out:
                out.write(f"$ airflow users {command[2]} --username {username}\n{done.stdout}{done.stderr}")
            if done.returncode:
                raise RuntimeError(f"airflow users {command[2]} {username} failed (exit {done.returncode}); see {log}")
            if command is create and "already exists" not in done.stdout:
                break
        return password

    def up(self, timeout: float = 180.0) -> None:
        """Start the components that are not running, then wait until all of them are healthy."""
        (self.home / "run").mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        running = self.pids()
        if stray := sorted(set(running) - set(self.components)):
            raise RuntimeError(f"{', '.join(stray)} of another profile still run: `make down` first")
        if len(running) < len(self.components):
            if self.profile == "production":
                for name in self.services.ensure_databases():
                    print(f"created PostgreSQL database {name}", flush=True)
            if "api-server" not in running and _port_taken(self.port):
                # Another server there would answer the health checks in this stack's place.
                raise RuntimeError(
                    f"port {self.port} on 127.0.0.1 is taken by another process: stop it, or set MLOPS_AIRFLOW_PORT"
                )
            if not running:
                print(f"preparing the metadata DB ({self.profile} profile) ...", flush=True)
                self.migrate()
            (self.home / "run" / PROFILE_FILE).write_text(self.profile)
            started = _utc_now()
            # The MLflow server first: it migrates its own database while Airflow starts.
            for component in sorted(self.components, key=lambda c: c != "mlflow-server"):
                if component not in running:
                    self.start(component)
            # A component restarted after a crash: the health of the dead one's last heartbeat is no answer.
            self.wait_healthy(timeout, heartbeats_since={c: started for c in self.components if c not in running})
            return
        self.wait_healthy(timeout)

    def command(self, component: str) -> list[str]:
        """The command line of a component."""
        if component == "mlflow-server":
            lake = os.environ.get("MLOPS_LAKE") or (self.home / "lake").as_uri()
            if lake.startswith("file://"):
                Path(lake.removeprefix("file://"), "mlflow-artifacts").mkdir(parents=True, exist_ok=True)
            services = self.services
            return [
                shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow",
                "server",
                "--backend-store-uri",
                services.database_url(services.mlflow_db),
                # Runs, models and their files in the lake, uploaded and served through the server.
                "--artifacts-destination",
                f"{lake.rstrip('/')}/mlflow-artifacts",
                "--serve-artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(services.mlflow_port),
                # One worker natively (each imports MLflow: ~1 GB and a slow start on a small host); compose runs 2.
                "--workers",
                os.environ.get("MLOPS_MLFLOW_WORKERS", "1"),
            ]
        if component == "celery-worker" or (component == "scheduler" and self.profile == "embedded"):
            # Tasks fork from the scheduler (LocalExecutor) or from the Celery worker's pool (CeleryExecutor):
            # the heavy libraries are imported once, there. A scheduler that hands tasks to Celery runs none, so
            # it does not preload (~0.45 GiB less on the production profile), as in compose.
            return [sys.executable, "-m", "airflow_mlops.preload", *component.replace("-", " ").split()]
        return [_airflow(), *component.split()]

    def start(self, component: str) -> int:
        """Start one component in its own process group (its log: ``logs/<component>.log``); returns its pid."""
        command = self.command(component)
        with (self.home / "logs" / f"{component}.log").open("ab") as log:
            log.write(f"\n{START_MARK} {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                command,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.home,
            )
        self._pidfile(component).write_text(str(proc.pid))
        print(f"started {component} (pid {proc.pid}), log: {log.name}", flush=True)
        return proc.pid

    def _since_start(self, component: str) -> str:
        """The component's log since its latest start."""
        path = self.home / "logs" / f"{component}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text[text.rfind(START_MARK) :] if START_MARK in text else text

    def wait_healthy(self, timeout: float = 180.0, heartbeats_since: dict[str, str] | None = None) -> dict:
        """Wait until the API reports every Airflow component healthy (and, in production, the MLflow server
        answers and the Celery worker is ready); returns the API's health document.

        :param heartbeats_since: component → ISO time (UTC): its latest heartbeat must be later (a component just
            started: its predecessor, killed, may still count as healthy for a while).
        """
        import httpx

        deadline, last = time.monotonic() + timeout, "no answer yet"
        while time.monotonic() < deadline:
            missing = [c for c in self.components if c not in self.pids()]
            if missing:
                raise RuntimeError(f"{', '.join(missing)} exited; see {self.home / 'logs'}")
            try:
                health = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
                states = {k: v.get("status") for k, v in health.items() if isinstance(v, dict)}
                for component, since in (heartbeats_since or {}).items():
                    key = component.replace("-", "_")
                    beat = (health.get(key) or {}).get(f"latest_{key}_heartbeat") if key in states else None
                    if key in states and (beat is None or beat < since):
                        states[key] = "waiting for a heartbeat of the new process"
                if self.profile == "production":
                    mlflow = httpx.get(f"{self.services.mlflow_url}/health", timeout=5)
                    states["mlflow_server"] = "healthy" if mlflow.status_code == 200 else f"HTTP {mlflow.status_code}"
                    ready = " ready." in self._since_start("celery-worker")
                    states["celery_worker"] = "healthy" if ready else "starting"
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
        # A SIGKILL is sent, not yet done (e.g. the MLflow server's job runners, slow to honour SIGTERM): return
        # once the groups are gone, so nothing of the stack outlives ``down``.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_group_alive(pid) for pid in running.values()):
            time.sleep(0.1)
        (self.home / "run" / PROFILE_FILE).unlink(missing_ok=True)

    def admin_password(self) -> str:
        """The password of ``admin``: the one the SimpleAuthManager generated (embedded; exists once the API server
        started), or the production profile's own (generated once, kept in ``$AIRFLOW_HOME/.admin_password``)."""
        if self.profile == "production":
            return self._secret("admin_password")
        path = self.airflow_home / "simple_auth_manager_passwords.json.generated"
        return json.loads(path.read_text())[ADMIN_USER]

    def sign_in_hint(self) -> str:
        """How to sign in to this stack (``up`` and ``status`` print it)."""
        if self.profile == "production":
            return (
                f"sign in: {ADMIN_USER} / {self.admin_password()} (FAB auth manager, role Admin; more users: "
                "python -m airflow_mlops_dev.devstack add-user NAME --role Viewer|User|Op|Admin)"
            )
        path = self.airflow_home / "simple_auth_manager_passwords.json.generated"
        if not path.exists():
            return f"sign in: {ADMIN_USER}, password generated into {path} when the API server starts"
        return f"sign in: {ADMIN_USER} / {self.admin_password()} (SimpleAuthManager, development only)"


def _utc_now() -> str:
    """Now as the API's health document writes times (ISO 8601, UTC, ``+00:00``), comparable as text."""
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


def _port_taken(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _running(pid: int) -> bool:
    """Whether ``pid`` runs; a component this process started and that exited is a zombie until reaped here."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def use_wal(path: Path) -> None:
    """Put a SQLite DB in write-ahead-log mode (kept in the file): readers no longer block the one writer.

    The embedded Airflow's components read the metadata DB all the time (the UI, the scheduler loop) while tasks
    and the API write to it; in SQLite's default rollback-journal mode every reader holds the writer off.
    """
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(path, timeout=SQLITE_CONNECT_ARGS["timeout"])) as db:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        raise RuntimeError(f"{path}: SQLite refused write-ahead-log mode (journal_mode is {mode!r})")


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

    def pause(self, dag_id: str) -> None:
        self._ok(self.http.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": True}))

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

    def pending_approvals(self, dag_id: str = "~", run_id: str = "~") -> list[dict]:
        """Human-in-the-loop requests with no answer yet (an approval step waiting for a person)."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/hitlDetails"
        return self._ok(self.http.get(path, params={"response_received": False}))["hitl_details"]

    def respond(self, dag_id: str, run_id: str, task_id: str, option: str, comment: str | None = None) -> dict:
        """Answer a waiting approval step: ``option`` is ``Approve`` or ``Reject``, as the signed-in user."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails"
        body = {"chosen_options": [option], "params_input": {"comment": comment}}
        return self._ok(self.http.patch(path, json=body))

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> list[str]:
        """A task attempt's log events (their messages), oldest first."""
        response = self.http.get(
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": True},
            headers={"Accept": "application/json"},
        )
        content = (self._ok(response) or {}).get("content") or []
        return [str(e.get("event", e)) if isinstance(e, dict) else str(e) for e in content]

    def asset_id(self, asset: str) -> int:
        """The id of an Asset, given its URI (``mlops://<use case>/upstream/outcomes``) or its name
        (``<use case>.outcomes``); it exists once a DAG using it was parsed."""
        by = "uri" if "://" in asset else "name"
        found = self._ok(self.http.get("/api/v2/assets", params={f"{by}_pattern": asset, "limit": 100}))["assets"]
        for candidate in found:
            if candidate[by] == asset:
                return candidate["id"]
        raise LookupError(f"no asset with {by} {asset} (is a DAG that uses it parsed?)")

    def post_asset_event(self, asset: str, extra: dict | None = None) -> dict:
        """Announce an update of an Asset (its URI or name), as an upstream system does:
        ``POST /api/v2/assets/events``."""
        return self._ok(
            self.http.post("/api/v2/assets/events", json={"asset_id": self.asset_id(asset), "extra": extra or {}})
        )

    def asset_events(self, asset: str, limit: int = 100) -> list[dict]:
        """The newest events of an Asset (its URI or name), newest first."""
        params = {"asset_id": self.asset_id(asset), "order_by": "-timestamp", "limit": limit}
        return self._ok(self.http.get("/api/v2/assets/events", params=params))["asset_events"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> object:
        """A task's XCom value, or None if it pushed none."""
        response = self.http.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")
        if response.status_code == 404:
            return None
        return self._ok(response)["value"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_mlops_dev.devstack", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("up", "down", "status", "add-user"))
    parser.add_argument("username", nargs="?", help="add-user: the new user's name (production profile)")
    parser.add_argument("--role", default="Viewer", choices=FAB_ROLES, help="add-user: the user's role")
    args = parser.parse_args(argv)
    stack = Stack.from_env()
    if args.command == "add-user":
        if not args.username:
            parser.error("add-user needs a USERNAME")
        try:
            password = stack.add_user(args.username, args.role)
        except (RuntimeError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"user {args.username} (role {args.role}) signs in at {stack.url} with password: {password}")
        return 0
    if args.command == "up":
        try:
            stack.up()
        except (RuntimeError, TimeoutError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"Airflow is up ({stack.profile} profile): {stack.url}  {stack.sign_in_hint()}")
        if stack.profile == "production":
            services = stack.services
            print(
                f"MLflow: {services.mlflow_url}  Celery broker: {services.broker_url}  Feast online: redis {services.feast_redis}"
            )
        print(f"logs: {stack.home / 'logs'}   stop with: make down")
    elif args.command == "down":
        stack.down()
    else:
        pids = stack.pids()
        print(f"profile        {stack.profile}   {stack.sign_in_hint()}")
        for component in stack.components:
            state = f"running, pid {pids[component]}" if component in pids else "stopped"
            print(f"{component:14s} {state}")
        return 0 if all(c in pids for c in stack.components) else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
