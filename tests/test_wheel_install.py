"""The provider works installed as a wheel, with no checkout: the wheel is built from the package alone, installed
into a fresh virtualenv (the pinned requirements, then the wheel without dependencies), and from a folder outside
the checkout Airflow lists it as a provider, registers its connection types and parses a use case's DAGs from a
projects folder that holds a copy of one example.

Fast with a warm uv cache (`make install` fills it): the virtualenv's packages are hard links into the cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "plugins" / "airflow_mlops"
EXAMPLE = "seattle_weather"
DAG_IDS = [
    f"{EXAMPLE}_{step}" for step in ("features", "ingest_validate", "monitoring", "rollback", "scoring", "training")
]
DAGS_FILE = "from airflow_mlops.usecase.factory import dags_for_projects\n\nglobals().update(dags_for_projects())\n"

# Run by the virtualenv's interpreter: where the package comes from, what it resolves without a checkout, the
# providers' view of it, whether the pinned environment satisfies its declared dependencies, and the DagBag.
_PROBE = """
import json
from importlib.metadata import PackageNotFoundError, distribution, version

from packaging.requirements import Requirement

import airflow_mlops
from airflow.dag_processing.dagbag import DagBag
from airflow.providers_manager import ProvidersManager
from airflow_mlops import settings
from airflow_mlops.usecase import config

dist = distribution("airflow-mlops")
extras = dist.metadata.get_all("Provides-Extra") or []
unmet = []
for text in dist.requires or []:
    req = Requirement(text)
    if req.name == "airflow-mlops" or (req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras)):
        continue
    try:
        if not req.specifier.contains(version(req.name), prereleases=True):
            unmet.append(f"{text} (installed {version(req.name)})")
    except PackageNotFoundError:
        unmet.append(f"{text} (not installed)")
pm = ProvidersManager()
bag = DagBag()
print(json.dumps({
    "file": airflow_mlops.__file__,
    "checkout": str(settings.checkout_root()),
    "mlops_home": str(settings.mlops_home()),
    "projects": str(config.projects_dir()),
    "extras": extras,
    "unmet": unmet,
    "provider": pm.providers["airflow-mlops"].data["package-name"],
    "hooks": {t: pm.hooks[t].hook_class_name for t in ("mlflow", "bentoml", "feast") if pm.hooks.get(t)},
    "dag_ids": sorted(bag.dag_ids),
    "errors": bag.import_errors,
}))
"""


def _uv() -> list[str]:
    """The uv the Makefile uses: on PATH, else importable by python3, else its own virtualenv ``.uv/``."""
    found = shutil.which("uv")
    if found:
        return [found]
    for python in (sys.executable, shutil.which("python3")):
        if python and subprocess.run([python, "-m", "uv", "--version"], capture_output=True).returncode == 0:
            return [python, "-m", "uv"]
    bootstrapped = ROOT / ".uv" / "bin" / "uv"
    if bootstrapped.is_file():
        return [str(bootstrapped)]
    pytest.fail("uv is needed to build and install the wheel: `make install` bootstraps it into .uv/")


def _run(command: list[str], *, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _package_files(folder: Path) -> set[str]:
    return {
        p.relative_to(folder.parent).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """The wheel, built from a copy of the package (no build leftovers in the checkout). Yields (wheel, work folder)
    and removes the work folder afterwards."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(
        PACKAGE, source / "plugins" / "airflow_mlops", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    _run([*_uv(), "build", "--quiet", "--wheel", "--out-dir", str(work / "dist"), str(source)], cwd=work)
    (wheel,) = (work / "dist").glob("airflow_mlops-*.whl")
    try:
        yield wheel, work
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(built) -> tuple[Path, Path]:
    """A fresh virtualenv with the pinned requirements and the wheel (without its dependencies): (venv, work)."""
    wheel, work = built
    uv = _uv()
    venv = work / "venv"
    python = venv / "bin" / "python"
    _run([*uv, "venv", "--quiet", "--python", sys.executable, str(venv)], cwd=work)
    requirements = [*uv, "pip", "install", "--quiet", "--python", str(python), "-r", str(ROOT / "requirements.txt")]
    offline = subprocess.run([*requirements, "--offline"], capture_output=True, text=True, timeout=900, cwd=work)
    if offline.returncode != 0:  # a cold uv cache: fetch
        _run(requirements, timeout=1800, cwd=work)
    _run([*uv, "pip", "install", "--quiet", "--python", str(python), "--no-deps", str(wheel)], cwd=work)
    return venv, work


def _env(venv: Path, work: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "MLOPS_", "MLFLOW_", "PYTHON", "VIRTUAL_ENV", "UV_"))
    }
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        HOME=str(work / "home"),
        AIRFLOW_HOME=str(work / "airflow"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(work / "dags"),
        MLOPS_PROJECTS=str(work / "projects"),
    )
    return env


def test_the_wheel_holds_every_file_of_the_package(built) -> None:
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.startswith("airflow_mlops/")}
    missing = _package_files(PACKAGE) - shipped
    assert not missing, f"not in the wheel (pyproject.toml [tool.setuptools.package-data]): {sorted(missing)}"


@pytest.mark.slow
def test_installed_wheel_is_a_provider_and_parses_a_use_case_without_a_checkout(installed) -> None:
    venv, work = installed
    shutil.copytree(
        ROOT / "examples" / EXAMPLE, work / "projects" / EXAMPLE, ignore=shutil.ignore_patterns("__pycache__")
    )
    (work / "dags").mkdir()
    (work / "dags" / "mlops.py").write_text(DAGS_FILE)
    (work / "home").mkdir()
    env = _env(venv, work)
    site_packages = next((venv / "lib").glob("python3.*/site-packages"))

    providers = _run([str(venv / "bin" / "airflow"), "providers", "list", "-o", "json"], cwd=work, env=env)
    listed = {p["package_name"]: p for p in json.loads(providers.stdout[providers.stdout.index("[") :])}
    assert listed["airflow-mlops"]["version"] == "0.1.0"

    probe = _run([str(venv / "bin" / "python"), "-c", _PROBE], cwd=work, env=env)
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(seen["file"]).is_relative_to(site_packages), seen["file"]
    assert seen["checkout"] == "None"
    assert seen["mlops_home"] == str((work / "airflow" / "mlops").resolve())
    assert seen["projects"] == str((work / "projects").resolve())
    assert {"gx", "mlflow", "feast", "bentoml", "evidently", "all", "examples"} <= set(seen["extras"])
    assert not seen["unmet"], f"requirements.txt does not satisfy the declared dependencies: {seen['unmet']}"
    assert seen["provider"] == "airflow-mlops"
    assert set(seen["hooks"]) == {"mlflow", "bentoml", "feast"}, seen["hooks"]
    assert not seen["errors"], seen["errors"]
    assert seen["dag_ids"] == DAG_IDS

    # The use-case template ships as package data: `new` copies it, `check` passes it.
    _run([str(venv / "bin" / "python"), "-m", "airflow_mlops", "new", "shop_sales"], cwd=work, env=env)
    checked = _run(
        [str(venv / "bin" / "python"), "-m", "airflow_mlops", "check", str(work / "projects" / "shop_sales")],
        cwd=work,
        env=env,
    )
    assert checked.stdout.strip() == "ok shop_sales"


def test_settings_in_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a source checkout the defaults stay where they were: ``.mlops`` and ``examples/`` of the checkout."""
    from airflow_mlops import settings
    from airflow_mlops.usecase import config

    monkeypatch.delenv("MLOPS_HOME", raising=False)
    monkeypatch.delenv("MLOPS_PROJECTS", raising=False)
    assert settings.checkout_root() == ROOT
    assert settings.project_root() == ROOT
    assert settings.mlops_home() == ROOT / ".mlops"
    assert config.projects_dir() == ROOT / "examples"
    monkeypatch.setenv("MLOPS_HOME", str(ROOT / "elsewhere"))
    assert settings.mlops_home() == ROOT / "elsewhere"
