"""Structural checks of the production compose stack: ``docker-compose.yaml`` and ``.env.example``.

The stack runs the DAG factory over the mounted projects folder (``./examples``, ``MLOPS_PROJECTS``) and serves
the flights example (``examples/flight_delay``) with the generic BentoML service; the checks read that use case's
own ``mlops.yaml`` for its name (lake root, serving URL variable). No Docker engine is involved. The file is read
with ``yaml.safe_load``, which resolves anchors and ``<<`` merge keys the way Compose does. Each rule is a function
that returns the problems it finds, so the tests run the same function on the real file (expecting none) and on a
deliberately broken copy in ``tmp_path`` (expecting the breakage to be reported): a rule that cannot fail is caught.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
RUNTIME_LOCK = ROOT / "requirements-runtime.txt"
FULL_LOCK = ROOT / "requirements.txt"
#: Development tools of requirements-dev.in: never in the runtime lock, never in an image.
DEV_TOOLS = ("pytest", "selenium", "ruff")
#: ``name==version`` lines of a pip lock.
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;#]+)", re.MULTILINE)
#: A command installing Python packages (a run-time install).
PIP_INSTALL = re.compile(r"\b(pip3?|uv pip|python3? -m pip)\s+install\b")

INFRA_SERVICES = ("postgres", "redis")
INIT_SERVICE = "airflow-init"
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
MLOPS_SERVICES = ("mlflow", "serving", "evidently-ui")
ALL_SERVICES = (*INFRA_SERVICES, INIT_SERVICE, *AIRFLOW_SERVICES, *MLOPS_SERVICES)
LONG_RUNNING_SERVICES = tuple(name for name in ALL_SERVICES if name != INIT_SERVICE)

#: Host folder of the project → where the Airflow containers see it.
PROJECT_MOUNTS = {
    "./dags": "/opt/airflow/dags",
    "./plugins": "/opt/airflow/plugins",
    "./examples": "/opt/airflow/examples",
}
#: The use case the ``serving`` service serves.
SERVED_USECASE = ROOT / "examples" / "flight_delay"
#: Settings of the single-example layout that the generic suite replaced; nothing may still set them.
REMOVED_SETTINGS = ("MLOPS_INCLUDE", "MLOPS_CONFIG", "MLOPS_SERVING_CONFIG", "MLOPS_SERVING_URL", "MLOPS_SERVING_PORT")
#: Paths of that layout (``include/config``, ``include/serving``, ``include/feature_repo``), gone from the project.
REMOVED_PATH = re.compile(r"(?<![\w-])include(/|\b)")
#: Service → the only container port it publishes on the host.
PUBLISHED_PORTS = {"airflow-apiserver": 8080, "mlflow": 5000, "serving": 3000, "evidently-ui": 8000}

LOOPBACK = "127.0.0.1"
#: The production auth manager (users and roles in the metadata DB); Airflow's default, the SimpleAuthManager, is
#: documented as for development and testing.
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$")
PLACEHOLDER = re.compile(r"|change-me|<[^<>]+>")
#: ``scheme://user:password@host``: the password part, which must come from a variable.
URL_PASSWORD = re.compile(r"://[^\s:/@]*:([^\s@]*)@")
VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --------------------------------------------------------------------------------------- loading
def load_compose(path: Path) -> dict[str, Any]:
    """Parse a compose file; anchors and merge keys are resolved by the YAML loader."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a dotenv file; comments and blank lines ignored, quotes stripped."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not KEY=value: {raw!r}"
        key = key.removeprefix("export ").strip()
        assert key not in values, f"{path.name}:{number}: {key} defined twice"
        values[key] = value.strip().strip("'\"")
    return values


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose.get("services") or {}


def strings(node: Any) -> Iterator[str]:
    """Every string value (not key) in a parsed YAML tree."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def interpolations(text: str) -> Iterator[tuple[str, str]]:
    """Compose variable references in ``text`` as ``(name, modifier)``; ``$$`` is an escaped ``$``.

    The modifier is what follows the name inside braces (``:-default``, ``:?message``, ...).
    """
    i = 0
    while i < len(text):
        if text[i] != "$":
            i += 1
        elif text.startswith("$$", i):
            i += 2
        elif text.startswith("${", i):
            end = text.find("}", i)
            body = text[i + 2 : end if end != -1 else len(text)]
            match = VAR_NAME.match(body)
            yield (match.group(0), body[match.end() :]) if match else (body, "")
            i = end + 1 if end != -1 else len(text)
        else:
            match = VAR_NAME.match(text, i + 1)
            if match:
                yield match.group(0), ""
                i = match.end()
            else:
                i += 1


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency → condition (the list form means ``service_started``)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def port_host_ip(spec: Any) -> str | None:
    """Host address a published port binds to; ``None`` means every interface."""
    if isinstance(spec, dict):
        return spec.get("host_ip")
    text = str(spec).split("/", 1)[0]
    if text.startswith("["):
        return text[1 : text.index("]")]
    parts = text.split(":")
    return parts[0] if len(parts) == 3 else None


def bind_sources(service: dict[str, Any]) -> list[str]:
    """Host paths bind-mounted into a service (short and long volume syntax)."""
    sources = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                sources.append(volume["source"])
        elif str(volume).startswith((".", "/", "~")):
            sources.append(str(volume).split(":", 1)[0])
    return sources


def volume_targets(service: dict[str, Any]) -> dict[str, str]:
    """Source → container path of a service's volumes (short syntax)."""
    pairs = (str(volume).split(":") for volume in service.get("volumes") or [])
    return {parts[0]: parts[1] for parts in pairs if len(parts) >= 2}


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command") or ""
    return " ".join(command) if isinstance(command, list) else str(command)


# ----------------------------------------------------------------------------------------- rules
def missing_services(compose: dict[str, Any]) -> list[str]:
    return [f"{name}: service missing" for name in ALL_SERVICES if name not in services(compose)]


def healthcheck_problems(compose: dict[str, Any]) -> list[str]:
    problems = []
    for name in LONG_RUNNING_SERVICES:
        check = services(compose).get(name, {}).get("healthcheck")
        if not check:
            problems.append(f"{name}: no healthcheck")
        elif check.get("disable"):
            problems.append(f"{name}: healthcheck disabled")
        elif not check.get("test") or check["test"] in (["NONE"], "NONE"):
            problems.append(f"{name}: healthcheck without a test command")
    return problems


def exposed_port_problems(compose: dict[str, Any]) -> list[str]:
    return [
        f"{name}: port {spec!r} binds {port_host_ip(spec) or 'every interface'}, not {LOOPBACK}"
        for name, service in services(compose).items()
        for spec in service.get("ports") or []
        if port_host_ip(spec) != LOOPBACK
    ]


def dangling_dependencies(compose: dict[str, Any]) -> list[str]:
    known = services(compose)
    return [
        f"{name}: depends on unknown service {target!r}"
        for name, service in known.items()
        for target in depends_on(service)
        if target not in known
    ]


def init_dependency_problems(compose: dict[str, Any]) -> list[str]:
    """Everything but the databases waits for airflow-init to have *finished successfully*."""
    problems = []
    for name, service in services(compose).items():
        condition = depends_on(service).get(INIT_SERVICE)
        must_wait = name not in (*INFRA_SERVICES, INIT_SERVICE)
        if must_wait and condition is None:
            problems.append(f"{name}: does not depend on {INIT_SERVICE}")
        elif condition is not None and condition != "service_completed_successfully":
            problems.append(f"{name}: waits for {INIT_SERVICE} with {condition}")
    return problems


def airflow_env_problems(compose: dict[str, Any]) -> list[str]:
    """Airflow services carry the whole x-airflow-common environment: Celery, Postgres, Redis."""
    common = compose.get("x-airflow-common") or {}
    common_env = environment(common)
    problems = []
    if common_env.get("AIRFLOW__CORE__EXECUTOR") != "CeleryExecutor":
        problems.append("x-airflow-common: executor is not CeleryExecutor")
    if not common_env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "").startswith("postgresql"):
        problems.append("x-airflow-common: sql_alchemy_conn is not postgresql")
    if not common_env.get("AIRFLOW__CELERY__BROKER_URL", "").startswith("redis://"):
        problems.append("x-airflow-common: celery broker is not redis")
    for name in (INIT_SERVICE, *AIRFLOW_SERVICES):
        service = services(compose).get(name, {})
        env = environment(service)
        problems += [
            f"{name}: {key} is {env.get(key)!r}, x-airflow-common has {value!r}"
            for key, value in common_env.items()
            if env.get(key) != value
        ]
        if service.get("image") != common.get("image"):
            problems.append(f"{name}: image {service.get('image')!r} differs from x-airflow-common")
    return problems


def undefined_variables(compose: dict[str, Any], env_example: dict[str, str]) -> list[str]:
    """``${VAR}`` / ``${VAR:?msg}`` need VAR in .env.example; ``${VAR:-default}`` does not."""
    return sorted(
        {
            f"${{{name}}} is not in .env.example and has no default"
            for text in strings(compose)
            for name, modifier in interpolations(text)
            if name not in env_example and not modifier.startswith((":-", "-"))
        }
    )


def unused_env_example_variables(compose: dict[str, Any], env_example: dict[str, str]) -> list[str]:
    used = {name for text in strings(compose) for name, _ in interpolations(text)}
    return [f"{key} in .env.example is not used" for key in env_example if key not in used]


def unsafe_env_example_values(env_example: dict[str, str]) -> list[str]:
    return [
        f"{key} in .env.example holds a value that is not a placeholder"
        for key, value in env_example.items()
        if SECRET_NAME.search(key) and not PLACEHOLDER.fullmatch(value)
    ]


def hardcoded_credentials(compose: dict[str, Any]) -> list[str]:
    """Secrets reach the file only as ``${VAR:?...}``: never a literal, never a default."""
    problems = []
    for name, service in {**services(compose), "x-airflow-common": compose.get("x-airflow-common") or {}}.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):
                refs = list(interpolations(value))
                if not refs or any(not modifier.startswith((":?", "?")) for _, modifier in refs):
                    problems.append(f"{name}: {key} is not a required ${{VAR:?...}} from .env")
            for password in URL_PASSWORD.findall(value):
                if password and not all(m.startswith((":?", "?")) for _, m in interpolations(password)):
                    problems.append(f"{name}: {key} has a password that is not a required variable")
                if password and not list(interpolations(password)):
                    problems.append(f"{name}: {key} has a literal password")
    return problems


def missing_bind_sources(compose: dict[str, Any], root: Path) -> list[str]:
    return [
        f"{name}: bind source {source} does not exist under {root}"
        for name, service in services(compose).items()
        for source in bind_sources(service)
        if not (root / source).exists()
    ]


def undeclared_named_volumes(compose: dict[str, Any]) -> list[str]:
    declared = set(compose.get("volumes") or {})
    return [
        f"{name}: named volume {source!r} is not declared"
        for name, service in services(compose).items()
        for source in volume_targets(service)
        if not source.startswith((".", "/", "~", "$")) and source not in declared
    ]


def stale_references(compose: dict[str, Any]) -> list[str]:
    """Nothing points at the removed ``include/`` layout, and no service sets a setting of it (the shared
    ``x-`` environments are merged into the services, so they are checked there)."""
    problems = sorted(
        {
            f"{text.strip()[:80]!r} refers to the removed include/ folder"
            for text in strings(compose)
            if REMOVED_PATH.search(text)
        }
    )
    return problems + [
        f"{name}: sets {key}, a setting that no longer exists"
        for name, service in services(compose).items()
        for key in environment(service)
        if key in REMOVED_SETTINGS
    ]


def _host_folder(service: dict[str, Any], container_path: str, root: Path) -> Path | None:
    """The project folder a container path of ``service`` is bind-mounted from, or None."""
    path = PurePosixPath(container_path)
    for source, target in volume_targets(service).items():
        if source.startswith(".") and (path == PurePosixPath(target) or PurePosixPath(target) in path.parents):
            return root / source / path.relative_to(target)
    return None


def serving_usecase_problems(compose: dict[str, Any], root: Path) -> list[str]:
    """``serving`` runs the generic service for a use case of the mounted projects folder, writes its inference log
    into that use case's lake root, and the Airflow services' deploy step reaches it, with its admin token, at
    ``MLOPS_SERVING_URL__<NAME>``."""
    from airflow_mlops.hooks.bentoml_process import SERVICE
    from airflow_mlops.usecase import config

    serving = services(compose).get("serving") or {}
    env, common = environment(serving), environment(compose.get("x-airflow-common") or {})
    command = command_text(serving)
    problems = []
    if f"bentoml serve {SERVICE} " not in command:
        problems.append(f"serving: does not run `bentoml serve {SERVICE}`")
    folder = env.get("MLOPS_USECASE", "")
    host = _host_folder(serving, folder, root) if folder else None
    if host is None:
        return [*problems, f"serving: MLOPS_USECASE {folder!r} is not a folder mounted from the project"]
    try:
        usecase = config.load(host)
    except config.UseCaseConfigError as err:
        return [*problems, f"serving: MLOPS_USECASE {folder}: {err}"]
    projects = common.get("MLOPS_PROJECTS", "")
    if PurePosixPath(folder).parent != PurePosixPath(projects):
        problems.append(f"serving: MLOPS_USECASE {folder} is not a use case of MLOPS_PROJECTS {projects!r}")
    lake_root = f"{env.get('MLOPS_LAKE', '').rstrip('/')}/{usecase.name}"
    if env.get("MLOPS_SERVING_LAKE_ROOT") != lake_root:
        problems.append(f"serving: MLOPS_SERVING_LAKE_ROOT is {env.get('MLOPS_SERVING_LAKE_ROOT')!r}, not {lake_root}")
    port = re.search(r"--port (\d+)", command)
    key, url = f"MLOPS_SERVING_URL__{usecase.name.upper()}", f"http://serving:{port.group(1) if port else 3000}"
    if common.get(key) != url:
        problems.append(f"x-airflow-common: {key} is {common.get(key)!r}, not {url} (the deploy step's endpoint)")
    if not env.get("MLOPS_SERVING_TOKEN") or env.get("MLOPS_SERVING_TOKEN") != common.get("MLOPS_SERVING_TOKEN"):
        problems.append("serving: MLOPS_SERVING_TOKEN is not the Airflow services' (the deploy step's swap is refused)")
    try:
        watch = float(env.get("MLOPS_SERVING_WATCH_INTERVAL_S") or 0)
    except ValueError:
        watch = 0.0
    if watch <= 0:
        problems.append("serving: MLOPS_SERVING_WATCH_INTERVAL_S is not > 0 (the first champion is never served)")
    check = (serving.get("healthcheck") or {}).get("test") or []
    probe = " ".join(check) if isinstance(check, list) else str(check)
    if "/livez" not in probe or "/readyz" in probe:
        problems.append("serving: the healthcheck does not probe /livez (it stays unhealthy until a model is served)")
    return problems


def python_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the project's code: airflow-init, Airflow's components, MLflow, serving, Evidently."""
    return {name: service for name, service in services(compose).items() if name not in INFRA_SERVICES}


def image_problems(compose: dict[str, Any], root: Path) -> list[str]:
    """Every Python service runs the one image compose builds from the project's Dockerfile; none installs
    packages when it starts (``pip install`` in a command, ``_PIP_ADDITIONAL_REQUIREMENTS``)."""
    problems = []
    images = set()
    for name, service in python_services(compose).items():
        build = service.get("build")
        if not isinstance(build, dict) or not build.get("dockerfile"):
            problems.append(f"{name}: not built from the project's Dockerfile (no build.dockerfile)")
        else:
            context = root / str(build.get("context", "."))
            dockerfile = context / str(build["dockerfile"])
            if context.resolve() != root.resolve():
                problems.append(f"{name}: build context {build.get('context')!r} is not the project's root")
            if dockerfile.resolve() != DOCKERFILE.resolve():
                problems.append(f"{name}: builds {build['dockerfile']!r}, not docker/Dockerfile")
        images.add(service.get("image"))
        if PIP_INSTALL.search(command_text(service)) or PIP_INSTALL.search(str(service.get("entrypoint") or "")):
            problems.append(f"{name}: installs packages at run time (pip install in its command)")
        if "_PIP_ADDITIONAL_REQUIREMENTS" in environment(service):
            problems.append(f"{name}: installs packages at run time (_PIP_ADDITIONAL_REQUIREMENTS)")
    if len(images) != 1:
        problems.append(f"the Python services run {len(images)} images ({sorted(map(str, images))}), not one")
    return problems


def dockerfile_problems(text: str) -> list[str]:
    """The Dockerfile extends the official Airflow image as its documentation shows, with the runtime lock only,
    and installs the airflow-mlops distribution itself without dependencies."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    code = "\n".join(lines)
    problems = []
    if not re.search(r"^FROM \$\{AIRFLOW_IMAGE_NAME\}", code, re.MULTILINE):
        problems.append("Dockerfile: does not build FROM ${AIRFLOW_IMAGE_NAME} (the official Airflow image)")
    if not re.search(
        r'pip install [^\n]*"apache-airflow==\$\{AIRFLOW_VERSION\}" -r \S*requirements-runtime\.txt', code
    ):
        problems.append('Dockerfile: no pip install "apache-airflow==${AIRFLOW_VERSION}" -r requirements-runtime.txt')
    for dev in re.findall(r"(?<![\w-])(requirements(?:-dev)?\.(?:txt|in))", code):
        problems.append(f"Dockerfile: refers to {dev}, the development lock (test and lint tools)")
    for tool in DEV_TOOLS:
        if re.search(rf"(?<![\w-]){tool}(?![\w-])", code):
            problems.append(f"Dockerfile: installs {tool}")
    if not re.search(r"pip install [^\n]*--no-deps", code):
        problems.append("Dockerfile: does not install the airflow-mlops distribution (pip install --no-deps)")
    return problems


def pins(text: str) -> dict[str, str]:
    """``name -> version`` of a lock's pins, names normalised (PEP 503)."""
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in PIN.findall(text)}


def runtime_lock_problems(runtime: str, full: str) -> list[str]:
    """The runtime lock holds no development tool, and each of its pins is the full lock's (the tested versions)."""
    runtime_pins, full_pins = pins(runtime), pins(full)
    problems = [
        f"requirements-runtime.txt: pins {name}, a development tool"
        for name in runtime_pins
        if name in DEV_TOOLS or name.startswith(tuple(f"{tool}-" for tool in DEV_TOOLS))
    ]
    problems += [
        f"requirements-runtime.txt: {name}=={version}, requirements.txt has {full_pins.get(name)}"
        for name, version in runtime_pins.items()
        if full_pins.get(name) != version
    ]
    if "apache-airflow" not in runtime_pins:
        problems.append("requirements-runtime.txt: does not pin apache-airflow")
    return problems


def auth_problems(compose: dict[str, Any]) -> list[str]:
    """Airflow signs users in with the FAB auth manager, none of the SimpleAuthManager's settings is left, and
    airflow-init creates the admin user (role Admin) from .env on every start, idempotently."""
    problems = []
    manager = environment(compose.get("x-airflow-common") or {}).get("AIRFLOW__CORE__AUTH_MANAGER")
    if manager != FAB_AUTH_MANAGER:
        problems.append(f"x-airflow-common: auth manager is {manager!r}, not FabAuthManager")
    for name, service in services(compose).items():
        problems += [f"{name}: sets {key}" for key in environment(service) if "SIMPLE_AUTH_MANAGER" in key]
        if "SIMPLE_AUTH_MANAGER" in command_text(service):
            problems.append(f"{name}: its command uses the SimpleAuthManager")
    init = services(compose).get(INIT_SERVICE) or {}
    command, env = command_text(init), environment(init)
    create = re.search(r"airflow users create (.*?)\)", command, re.S)
    if not create:
        problems.append(f"{INIT_SERVICE}: does not create the admin user (airflow users create)")
    else:
        for needed in (
            '--username "$$AIRFLOW_ADMIN_USERNAME"',
            '--password "$$AIRFLOW_ADMIN_PASSWORD"',
            "--role Admin",
        ):
            if needed not in create.group(1):
                problems.append(f"{INIT_SERVICE}: airflow users create lacks {needed}")
        if command.find("airflow db migrate") > create.start():
            problems.append(f"{INIT_SERVICE}: creates the admin user before migrating the database")
    reset = 'airflow users reset-password --username "$$AIRFLOW_ADMIN_USERNAME" --password "$$AIRFLOW_ADMIN_PASSWORD"'
    if reset not in command:
        problems.append(f"{INIT_SERVICE}: an existing admin user does not get the password of .env")
    for key in ("AIRFLOW_ADMIN_USERNAME", "AIRFLOW_ADMIN_PASSWORD"):
        if f"${{{key}" not in env.get(key, ""):
            problems.append(f"{INIT_SERVICE}: {key} does not come from .env")
    return problems


# -------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE_FILE)


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


# ------------------------------------------------------------------------- the real file passes
@pytest.mark.parametrize("name", ALL_SERVICES, ids=ALL_SERVICES)
def test_service_exists(compose: dict[str, Any], name: str) -> None:
    assert name in services(compose)


@pytest.mark.parametrize("name", LONG_RUNNING_SERVICES, ids=LONG_RUNNING_SERVICES)
def test_long_running_service_has_healthcheck(compose: dict[str, Any], name: str) -> None:
    assert [p for p in healthcheck_problems(compose) if p.startswith(f"{name}:")] == []


@pytest.mark.parametrize(
    ("name", "image"),
    [pytest.param("postgres", "postgres:16", id="postgres"), pytest.param("redis", "redis:7.2-bookworm", id="redis")],
)
def test_infrastructure_image(compose: dict[str, Any], name: str, image: str) -> None:
    assert services(compose)[name]["image"] == image


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        pytest.param("postgres", "pg_isready", id="postgres-pg_isready"),
        pytest.param("redis", "redis-cli ping", id="redis-ping"),
        pytest.param("mlflow", "http://localhost:5000/health", id="mlflow-health"),
        # Liveness: healthy before the first champion exists (readiness = a model is served).
        pytest.param("serving", "http://localhost:3000/livez", id="serving-livez"),
    ],
)
def test_healthcheck_probes(compose: dict[str, Any], name: str, fragment: str) -> None:
    test = services(compose)[name]["healthcheck"]["test"]
    assert fragment in (" ".join(test) if isinstance(test, list) else test)


@pytest.mark.parametrize("name", [INIT_SERVICE, *AIRFLOW_SERVICES], ids=[INIT_SERVICE, *AIRFLOW_SERVICES])
def test_airflow_service_shares_common_environment(compose: dict[str, Any], name: str) -> None:
    problems = airflow_env_problems(compose)
    assert [p for p in problems if p.startswith((f"{name}:", "x-airflow-common:"))] == []


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor"),
        ("AIRFLOW__CORE__AUTH_MANAGER", FAB_AUTH_MANAGER),
        ("AIRFLOW__CELERY__BROKER_URL", "redis://:@redis:6379/0"),
        ("AIRFLOW__CORE__LOAD_EXAMPLES", "false"),
        ("AIRFLOW__CORE__PARALLELISM", "4"),
        ("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "http://airflow-apiserver:8080/execution/"),
        ("AIRFLOW_CONN_MLFLOW_DEFAULT", "http://mlflow:5000"),
        ("MLOPS_HOME", "/opt/mlops"),
        ("MLOPS_LAKE", "file:///opt/mlops/lake"),
        ("MLOPS_PROFILE", "production"),
        ("MLOPS_FEAST_ONLINE_STORE", "redis"),
        ("MLOPS_FEAST_REDIS", "redis:6379,db=1"),
        ("MLOPS_PROJECTS", "/opt/airflow/examples"),
        ("MLOPS_SERVING_URL__FLIGHT_DELAY", "http://serving:3000"),
    ],
    ids=lambda value: str(value),
)
def test_airflow_common_setting(compose: dict[str, Any], key: str, expected: str) -> None:
    assert environment(compose["x-airflow-common"])[key] == expected


@pytest.mark.parametrize(
    ("key", "prefix"),
    [
        pytest.param("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql+psycopg2://", id="sql_alchemy_conn"),
        pytest.param("AIRFLOW__CELERY__RESULT_BACKEND", "db+postgresql://", id="result_backend"),
        pytest.param("AIRFLOW__CORE__FERNET_KEY", "${AIRFLOW_FERNET_KEY:?", id="fernet_key"),
        pytest.param("AIRFLOW__API_AUTH__JWT_SECRET", "${AIRFLOW_JWT_SECRET:?", id="jwt_secret"),
        pytest.param("MLOPS_SERVING_TOKEN", "${MLOPS_SERVING_TOKEN:?", id="serving_token"),
    ],
)
def test_airflow_common_secret_wiring(compose: dict[str, Any], key: str, prefix: str) -> None:
    assert environment(compose["x-airflow-common"])[key].startswith(prefix)


def test_every_dependency_exists(compose: dict[str, Any]) -> None:
    assert dangling_dependencies(compose) == []


@pytest.mark.parametrize("name", [*AIRFLOW_SERVICES, *MLOPS_SERVICES], ids=[*AIRFLOW_SERVICES, *MLOPS_SERVICES])
def test_waits_for_airflow_init_to_complete(compose: dict[str, Any], name: str) -> None:
    assert depends_on(services(compose)[name]).get(INIT_SERVICE) == "service_completed_successfully"
    assert [p for p in init_dependency_problems(compose) if p.startswith(f"{name}:")] == []


@pytest.mark.parametrize("name", [INIT_SERVICE, *AIRFLOW_SERVICES], ids=[INIT_SERVICE, *AIRFLOW_SERVICES])
def test_airflow_waits_for_healthy_databases(compose: dict[str, Any], name: str) -> None:
    deps = depends_on(services(compose)[name])
    assert deps.get("postgres") == "service_healthy"
    assert deps.get("redis") == "service_healthy"


def test_every_published_port_is_loopback(compose: dict[str, Any]) -> None:
    assert exposed_port_problems(compose) == []


@pytest.mark.parametrize(("name", "port"), list(PUBLISHED_PORTS.items()), ids=list(PUBLISHED_PORTS))
def test_published_port(compose: dict[str, Any], name: str, port: int) -> None:
    assert services(compose)[name]["ports"] == [f"{LOOPBACK}:{port}:{port}"]


def test_only_the_user_facing_services_publish_ports(compose: dict[str, Any]) -> None:
    assert {name for name, service in services(compose).items() if service.get("ports")} == set(PUBLISHED_PORTS)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        pytest.param(INIT_SERVICE, "airflow db migrate", id="init-migrates"),
        pytest.param(INIT_SERVICE, 'm.version("airflow-mlops")', id="init-checks-the-image-package"),
        pytest.param("mlflow", "mlflow server", id="mlflow-server"),
        pytest.param("mlflow", "--backend-store-uri", id="mlflow-backend"),
        pytest.param("mlflow", "--artifacts-destination /opt/mlops/lake/mlflow-artifacts", id="mlflow-artifacts"),
        pytest.param("mlflow", "--serve-artifacts", id="mlflow-serve-artifacts"),
        pytest.param(
            "serving",
            "bentoml serve airflow_mlops.serving_service:MlopsService --host 0.0.0.0 --port 3000",
            id="serving-bentoml",
        ),
        pytest.param(
            "evidently-ui",
            "evidently ui --workspace /opt/mlops/evidently --host 0.0.0.0 --port 8000",
            id="evidently-ui",
        ),
        pytest.param("airflow-worker", "python -m airflow_mlops.preload celery worker", id="worker-celery-preloaded"),
    ],
)
def test_service_command(compose: dict[str, Any], name: str, fragment: str) -> None:
    assert fragment in command_text(services(compose)[name])


def test_mlflow_backend_is_its_own_postgres_database(compose: dict[str, Any]) -> None:
    uri = environment(services(compose)["mlflow"])["MLFLOW_BACKEND_STORE_URI"]
    assert uri.startswith("postgresql+psycopg2://")
    assert uri.endswith("@postgres:5432/mlflow")


def test_every_variable_is_in_env_example(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    assert undefined_variables(compose, env_example) == []


def test_every_env_example_variable_is_used(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    assert unused_env_example_variables(compose, env_example) == []


def test_env_example_holds_only_placeholder_secrets(env_example: dict[str, str]) -> None:
    assert unsafe_env_example_values(env_example) == []
    assert [key for key in env_example if SECRET_NAME.search(key)], "no secret variable recognised"


def test_no_credentials_in_compose_file(compose: dict[str, Any]) -> None:
    assert hardcoded_credentials(compose) == []


@pytest.mark.parametrize(("source", "target"), list(PROJECT_MOUNTS.items()), ids=list(PROJECT_MOUNTS))
def test_project_folder_is_mounted(compose: dict[str, Any], source: str, target: str) -> None:
    assert (ROOT / source).is_dir(), f"{source} is not a folder of the project"
    for name in (INIT_SERVICE, *AIRFLOW_SERVICES):
        assert volume_targets(services(compose)[name]).get(source) == target, name


def test_every_bind_source_exists(compose: dict[str, Any]) -> None:
    assert missing_bind_sources(compose, ROOT) == []


def test_every_named_volume_is_declared(compose: dict[str, Any]) -> None:
    assert undeclared_named_volumes(compose) == []


def test_nothing_refers_to_the_removed_include_layout(compose: dict[str, Any]) -> None:
    assert stale_references(compose) == []


def test_serving_serves_the_flights_example(compose: dict[str, Any]) -> None:
    from airflow_mlops.usecase import config

    env = environment(services(compose)["serving"])
    assert _host_folder(services(compose)["serving"], env["MLOPS_USECASE"], ROOT) == SERVED_USECASE
    name = config.load(SERVED_USECASE).name
    assert env["MLOPS_SERVING_LAKE_ROOT"] == f"file:///opt/mlops/lake/{name}"
    assert serving_usecase_problems(compose, ROOT) == []


def test_every_python_service_runs_the_built_image(compose: dict[str, Any]) -> None:
    assert image_problems(compose, ROOT) == []
    assert set(python_services(compose)) == {INIT_SERVICE, *AIRFLOW_SERVICES, *MLOPS_SERVICES}


def test_image_is_built_from_the_official_airflow_image(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    """The Dockerfile's base is AIRFLOW_IMAGE_NAME, passed by compose (the same default as .env.example's), and
    that image's Airflow is the lock's."""
    args = services(compose)["airflow-worker"]["build"]["args"]
    assert args["AIRFLOW_IMAGE_NAME"] == "${AIRFLOW_IMAGE_NAME:-" + env_example["AIRFLOW_IMAGE_NAME"] + "}"
    default = re.search(r"^ARG AIRFLOW_IMAGE_NAME=(\S+)$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert default and default.group(1) == env_example["AIRFLOW_IMAGE_NAME"]
    tag = re.fullmatch(r"apache/airflow:([\d.]+)-python(3\.\d+)", env_example["AIRFLOW_IMAGE_NAME"])
    assert tag, env_example["AIRFLOW_IMAGE_NAME"]
    assert pins(RUNTIME_LOCK.read_text(encoding="utf-8"))["apache-airflow"] == tag.group(1)
    assert f"--python-version {tag.group(2)}" in RUNTIME_LOCK.read_text(encoding="utf-8")


def test_dockerfile_installs_the_runtime_lock_only() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text(encoding="utf-8")) == []


def test_runtime_lock_is_the_full_lock_without_dev_tools() -> None:
    runtime, full = RUNTIME_LOCK.read_text(encoding="utf-8"), FULL_LOCK.read_text(encoding="utf-8")
    assert runtime_lock_problems(runtime, full) == []
    # The full lock does hold them (else the check above proves nothing).
    assert all(tool in pins(full) for tool in DEV_TOOLS)


def test_dockerignore_keeps_secrets_and_the_virtualenv_out() -> None:
    """The build context is an allow-list: the lock, pyproject.toml, README.md, plugins/; never .env or .venv."""
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in rules if ln.startswith("!")}
    assert allowed == {"requirements-runtime.txt", "pyproject.toml", "README.md", "plugins"}
    copied = re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert {part.rstrip("/") for line in copied for part in line.split()} == allowed


def test_airflow_init_refuses_a_placeholder_serving_token(compose: dict[str, Any]) -> None:
    assert "MLOPS_SERVING_TOKEN:MLOPS_SERVING_TOKEN" in command_text(services(compose)[INIT_SERVICE])


def test_signs_in_with_fab_and_airflow_init_creates_the_admin(compose: dict[str, Any]) -> None:
    assert auth_problems(compose) == []


def test_lake_volume_is_shared(compose: dict[str, Any]) -> None:
    for name in (INIT_SERVICE, *AIRFLOW_SERVICES, *MLOPS_SERVICES):
        assert volume_targets(services(compose)[name]).get("mlops-data") == "/opt/mlops", name


# --------------------------------------------------------------- each rule fails on a broken copy
Mutation = Callable[[str], str]


def replace(old: str, new: str) -> Mutation:
    """Text mutation; refuses to be a silent no-op."""

    def mutate(text: str) -> str:
        assert old in text, f"mutation target {old!r} not found"
        return text.replace(old, new, 1)

    return mutate


def edit(change: Callable[[dict[str, Any]], None]) -> Mutation:
    """Structural mutation: parse, change, dump (anchors come back expanded, same content)."""

    def mutate(text: str) -> str:
        data = yaml.safe_load(text)
        change(data)
        return yaml.safe_dump(data, sort_keys=False)

    return mutate


def _drop_healthcheck(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda data: data["services"][name].pop("healthcheck")


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def _with_env(check: Callable[[dict[str, Any], dict[str, str]], list[str]]) -> Callable[[dict[str, Any]], list[str]]:
    return lambda compose: check(compose, read_env_file(ENV_EXAMPLE))


_FAKE_SECRET = secrets.token_hex(16)  # generated per run: no secret-looking literal in this file

COMPOSE_MUTATIONS = [
    pytest.param(
        edit(_drop_healthcheck("mlflow")), healthcheck_problems, "mlflow: no healthcheck", id="healthcheck-removed"
    ),
    pytest.param(
        edit(_drop_healthcheck("redis")), healthcheck_problems, "redis: no healthcheck", id="infra-healthcheck-removed"
    ),
    pytest.param(
        edit(_set(("services", "airflow-worker", "healthcheck", "test"), ["NONE"])),
        healthcheck_problems,
        "airflow-worker: healthcheck without a test",
        id="healthcheck-none",
    ),
    pytest.param(
        replace('"127.0.0.1:8080:8080"', '"0.0.0.0:8080:8080"'),
        exposed_port_problems,
        "airflow-apiserver: port '0.0.0.0:8080:8080'",
        id="port-on-all-interfaces",
    ),
    pytest.param(
        replace('"127.0.0.1:3000:3000"', '"3000:3000"'),
        exposed_port_problems,
        "serving: port '3000:3000' binds every interface",
        id="port-without-host-ip",
    ),
    pytest.param(
        edit(_set(("services", "serving", "depends_on", "bento-store"), {"condition": "service_healthy"})),
        dangling_dependencies,
        "serving: depends on unknown service 'bento-store'",
        id="dangling-depends-on",
    ),
    pytest.param(
        edit(_set(("services", "airflow-scheduler", "depends_on", INIT_SERVICE), {"condition": "service_started"})),
        init_dependency_problems,
        "airflow-scheduler: waits for airflow-init with service_started",
        id="init-condition-started",
    ),
    pytest.param(
        edit(lambda data: data["services"]["evidently-ui"].pop("depends_on")),
        init_dependency_problems,
        "evidently-ui: does not depend on airflow-init",
        id="init-not-awaited",
    ),
    pytest.param(
        replace("AIRFLOW__CORE__EXECUTOR: CeleryExecutor", "AIRFLOW__CORE__EXECUTOR: LocalExecutor"),
        airflow_env_problems,
        "executor is not CeleryExecutor",
        id="executor-local",
    ),
    pytest.param(
        replace("AIRFLOW__CELERY__BROKER_URL: redis://", "AIRFLOW__CELERY__BROKER_URL: amqp://"),
        airflow_env_problems,
        "celery broker is not redis",
        id="broker-not-redis",
    ),
    pytest.param(
        replace("postgresql+psycopg2://${POSTGRES_USER", "sqlite:////tmp/airflow.db#${POSTGRES_USER"),
        airflow_env_problems,
        "sql_alchemy_conn is not postgresql",
        id="metadata-db-sqlite",
    ),
    # an `environment:` that forgets `<<: *airflow-common-env`
    pytest.param(
        edit(_set(("services", "airflow-triggerer", "environment"), {"DUMB_INIT_SETSID": "0"})),
        airflow_env_problems,
        "airflow-triggerer: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        id="common-env-not-merged",
    ),
    pytest.param(
        replace("MLOPS_PROFILE: production", "MLOPS_PROFILE: ${MLOPS_PROFILE_UNDECLARED}"),
        _with_env(undefined_variables),
        "${MLOPS_PROFILE_UNDECLARED}",
        id="undefined-variable",
    ),
    pytest.param(
        replace("${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}", _FAKE_SECRET),
        hardcoded_credentials,
        "literal password",
        id="literal-password-in-url",
    ),
    pytest.param(
        replace("${AIRFLOW_JWT_SECRET:?set AIRFLOW_JWT_SECRET in .env}", "${AIRFLOW_JWT_SECRET:-insecure}"),
        hardcoded_credentials,
        "AIRFLOW__API_AUTH__JWT_SECRET is not a required",
        id="secret-with-default",
    ),
    pytest.param(
        replace("./examples:/opt/airflow/examples", "./examples-missing:/opt/airflow/examples"),
        lambda compose: missing_bind_sources(compose, ROOT),
        "bind source ./examples-missing",
        id="missing-bind-source",
    ),
    pytest.param(
        replace("- mlops-data:/opt/mlops", "- mlops-lake:/opt/mlops"),
        undeclared_named_volumes,
        "named volume 'mlops-lake'",
        id="undeclared-volume",
    ),
    pytest.param(
        edit(lambda data: data["services"].pop("evidently-ui")),
        missing_services,
        "evidently-ui: service missing",
        id="service-removed",
    ),
    pytest.param(
        replace(
            "  - ./examples:/opt/airflow/examples\n",
            "  - ./examples:/opt/airflow/examples\n  - ./include/serving:/opt/airflow/include/serving\n",
        ),
        stale_references,
        "refers to the removed include/ folder",
        id="include-mount-back",
    ),
    pytest.param(
        replace(
            "  MLOPS_LAKE: file:///opt/mlops/lake\n",
            "  MLOPS_LAKE: file:///opt/mlops/lake\n  MLOPS_SERVING_URL: http://serving:3000\n",
        ),
        stale_references,
        "airflow-worker: sets MLOPS_SERVING_URL, a setting that no longer exists",
        id="plain-serving-url",
    ),
    pytest.param(
        replace(
            "exec bentoml serve airflow_mlops.serving_service:MlopsService",
            "exec bentoml serve include/serving/service.py:FlightDelayService",
        ),
        lambda compose: serving_usecase_problems(compose, ROOT),
        "serving: does not run `bentoml serve airflow_mlops.serving_service:MlopsService`",
        id="serving-old-service",
    ),
    pytest.param(
        replace("MLOPS_USECASE: /opt/airflow/examples/flight_delay", "MLOPS_USECASE: /opt/airflow/examples/no_such"),
        lambda compose: serving_usecase_problems(compose, ROOT),
        "no_such/mlops.yaml: no such file",
        id="serving-unknown-usecase",
    ),
    pytest.param(
        replace("MLOPS_USECASE: /opt/airflow/examples/flight_delay", "MLOPS_USECASE: /srv/flight_delay"),
        lambda compose: serving_usecase_problems(compose, ROOT),
        "serving: MLOPS_USECASE '/srv/flight_delay' is not a folder mounted from the project",
        id="serving-usecase-not-mounted",
    ),
    pytest.param(
        replace(
            "MLOPS_SERVING_LAKE_ROOT: file:///opt/mlops/lake/flight_delay",
            "MLOPS_SERVING_LAKE_ROOT: file:///opt/mlops/lake",
        ),
        lambda compose: serving_usecase_problems(compose, ROOT),
        "serving: MLOPS_SERVING_LAKE_ROOT is 'file:///opt/mlops/lake', not file:///opt/mlops/lake/flight_delay",
        id="serving-shared-lake-root",
    ),
    pytest.param(
        replace(
            "MLOPS_SERVING_URL__FLIGHT_DELAY: http://serving:3000",
            "MLOPS_SERVING_URL__FLIGHT_DELAY: http://serving:3001",
        ),
        lambda compose: serving_usecase_problems(compose, ROOT),
        "x-airflow-common: MLOPS_SERVING_URL__FLIGHT_DELAY is 'http://serving:3001', not http://serving:3000",
        id="serving-url-wrong-port",
    ),
    pytest.param(
        edit(lambda data: data["services"]["serving"]["environment"].pop("MLOPS_SERVING_TOKEN")),
        lambda compose: serving_usecase_problems(compose, ROOT),
        "serving: MLOPS_SERVING_TOKEN is not the Airflow services'",
        id="serving-without-token",
    ),
    pytest.param(
        replace('MLOPS_SERVING_WATCH_INTERVAL_S: "30"', 'MLOPS_SERVING_WATCH_INTERVAL_S: "0"'),
        lambda compose: serving_usecase_problems(compose, ROOT),
        "serving: MLOPS_SERVING_WATCH_INTERVAL_S is not > 0",
        id="serving-without-watch",
    ),
    pytest.param(
        replace("http://localhost:3000/livez", "http://localhost:3000/readyz"),
        lambda compose: serving_usecase_problems(compose, ROOT),
        "serving: the healthcheck does not probe /livez",
        id="serving-healthcheck-readiness",
    ),
    pytest.param(
        edit(lambda data: data["services"]["serving"].pop("build")),
        lambda compose: image_problems(compose, ROOT),
        "serving: not built from the project's Dockerfile",
        id="serving-not-built",
    ),
    pytest.param(
        edit(_set(("services", "mlflow", "image"), "ghcr.io/mlflow/mlflow:v3.17.2")),
        lambda compose: image_problems(compose, ROOT),
        "the Python services run 2 images",
        id="mlflow-own-image",
    ),
    pytest.param(
        edit(_set(("services", "airflow-worker", "build", "dockerfile"), "Dockerfile.dev")),
        lambda compose: image_problems(compose, ROOT),
        "airflow-worker: builds 'Dockerfile.dev', not docker/Dockerfile",
        id="worker-other-dockerfile",
    ),
    pytest.param(
        replace('echo "== secrets"', 'pip install --no-cache-dir -r requirements.txt\n        echo "== secrets"'),
        lambda compose: image_problems(compose, ROOT),
        "airflow-init: installs packages at run time (pip install in its command)",
        id="init-pip-installs",
    ),
    pytest.param(
        edit(_set(("services", "airflow-scheduler", "environment", "_PIP_ADDITIONAL_REQUIREMENTS"), "lxml")),
        lambda compose: image_problems(compose, ROOT),
        "airflow-scheduler: installs packages at run time (_PIP_ADDITIONAL_REQUIREMENTS)",
        id="pip-additional-requirements",
    ),
    pytest.param(
        replace(FAB_AUTH_MANAGER, "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"),
        auth_problems,
        "x-airflow-common: auth manager is 'airflow.api_fastapi.auth.managers.simple.simple_auth_manager.",
        id="auth-simple",
    ),
    pytest.param(
        edit(
            _set(
                ("services", "airflow-apiserver", "environment", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"), "a:admin"
            )
        ),
        auth_problems,
        "airflow-apiserver: sets AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
        id="auth-simple-users-left",
    ),
    pytest.param(
        replace("--role Admin --firstname", "--role Viewer --firstname"),
        auth_problems,
        "airflow-init: airflow users create lacks --role Admin",
        id="auth-admin-not-admin",
    ),
    pytest.param(
        replace("airflow users reset-password", "true users reset-password"),
        auth_problems,
        "airflow-init: an existing admin user does not get the password of .env",
        id="auth-admin-password-not-reset",
    ),
]


@pytest.mark.parametrize(("mutation", "check", "expected"), COMPOSE_MUTATIONS)
def test_rule_detects_broken_compose_copy(
    tmp_path: Path, mutation: Mutation, check: Callable[[dict[str, Any]], list[str]], expected: str
) -> None:
    assert check(load_compose(COMPOSE_FILE)) == [], "the rule must pass on the real file"
    broken = tmp_path / "docker-compose.yaml"
    broken.write_text(mutation(COMPOSE_FILE.read_text(encoding="utf-8")), encoding="utf-8")
    problems = check(load_compose(broken))
    assert any(expected in problem for problem in problems), problems


ENV_MUTATIONS = [
    pytest.param(
        replace("AIRFLOW_JWT_SECRET=change-me", f"AIRFLOW_JWT_SECRET={_FAKE_SECRET}"),
        lambda env, compose: unsafe_env_example_values(env),
        "AIRFLOW_JWT_SECRET",
        id="real-looking-secret",
    ),
    pytest.param(
        replace("POSTGRES_PASSWORD=change-me", "POSTGRES_PASSWORD=airflow"),
        lambda env, compose: unsafe_env_example_values(env),
        "POSTGRES_PASSWORD",
        id="weak-default-password",
    ),
    pytest.param(
        replace("AIRFLOW_FERNET_KEY=change-me\n", ""),
        lambda env, compose: undefined_variables(compose, env),
        "${AIRFLOW_FERNET_KEY}",
        id="required-variable-missing",
    ),
    pytest.param(
        lambda text: text + "MLOPS_STALE_SETTING=1\n",
        lambda env, compose: unused_env_example_variables(compose, env),
        "MLOPS_STALE_SETTING",
        id="stale-variable",
    ),
]


@pytest.mark.parametrize(("mutation", "check", "expected"), ENV_MUTATIONS)
def test_rule_detects_broken_env_example_copy(
    tmp_path: Path,
    compose: dict[str, Any],
    mutation: Mutation,
    check: Callable[[dict[str, str], dict[str, Any]], list[str]],
    expected: str,
) -> None:
    assert check(read_env_file(ENV_EXAMPLE), compose) == [], "the rule must pass on the real file"
    broken = tmp_path / ".env.example"
    broken.write_text(mutation(ENV_EXAMPLE.read_text(encoding="utf-8")), encoding="utf-8")
    problems = check(read_env_file(broken), compose)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        pytest.param(
            replace("-r /opt/airflow-mlops/requirements-runtime.txt", "-r /opt/airflow-mlops/requirements.txt"),
            "refers to requirements.txt",
            id="full-lock",
        ),
        pytest.param(
            replace('RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r', "RUN pip install -r"),
            'no pip install "apache-airflow==${AIRFLOW_VERSION}"',
            id="airflow-not-held",
        ),
        pytest.param(
            replace("FROM ${AIRFLOW_IMAGE_NAME}", "FROM python:3.11-slim"), "FROM ${AIRFLOW_IMAGE_NAME}", id="base"
        ),
        pytest.param(lambda text: text + "RUN pip install --no-cache-dir pytest\n", "installs pytest", id="pytest"),
        pytest.param(replace("--no-deps", "--upgrade"), "does not install the airflow-mlops distribution", id="no-pkg"),
    ],
)
def test_dockerfile_rule_detects_broken_copy(mutation: Mutation, expected: str) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert dockerfile_problems(text) == [], "the rule must pass on the real file"
    problems = dockerfile_problems(mutation(text))
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        pytest.param(lambda text: text + "pytest==9.2.0\n", "pins pytest, a development tool", id="pytest"),
        pytest.param(lambda text: text + "selenium==4.51.0\n", "pins selenium, a development tool", id="selenium"),
        pytest.param(lambda text: text + "pytest-timeout==2.4.0\n", "pins pytest-timeout", id="pytest-plugin"),
        pytest.param(
            replace("\nbentoml==1.4.39\n", "\nbentoml==1.4.38\n"),
            "bentoml==1.4.38, requirements.txt has 1.4.39",
            id="drift",
        ),
    ],
)
def test_runtime_lock_rule_detects_broken_copy(mutation: Mutation, expected: str) -> None:
    runtime, full = RUNTIME_LOCK.read_text(encoding="utf-8"), FULL_LOCK.read_text(encoding="utf-8")
    assert runtime_lock_problems(runtime, full) == [], "the rule must pass on the real files"
    problems = runtime_lock_problems(mutation(runtime), full)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("${A}", [("A", "")], id="plain"),
        pytest.param("${A:-x} ${B:?msg}", [("A", ":-x"), ("B", ":?msg")], id="modifiers"),
        pytest.param("$$HOSTNAME $${HOME} $$(id -u)", [], id="escaped"),
        pytest.param("$A/$$B", [("A", "")], id="unbraced"),
    ],
)
def test_interpolation_scanner(text: str, expected: list[tuple[str, str]]) -> None:
    assert list(interpolations(text)) == expected
