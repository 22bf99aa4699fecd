"""The installable provider (``airflow_mlops``, plugins/) is separate from the developer tooling (``airflow_mlops_dev``,
devtools/): the tooling imports the provider, never the reverse. Fast: the provider's files are read with ``ast``.

Every import of every module of the provider counts: at module level or inside a function, ``import x`` and
``from x import y``, relative imports resolved against the module's package.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROVIDER = ROOT / "plugins" / "airflow_mlops"
DEVTOOLS = ROOT / "devtools" / "airflow_mlops_dev"
TOOLING = "airflow_mlops_dev"
#: What moved out of the provider into the tooling (``core/replay_source`` → ``airflow_mlops_dev/replay_source``).
MOVED = ("demo", "devstack", "replay", "replay_loop", "replay_report", "replay_source", "traffic", "serving_process")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROVIDER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, the names imported from a module included."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return _imports_in(path.read_text(), package, str(path))


def _imports_in(source: str, package: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """The imports of ``source``, a module of ``package`` (relative imports resolve against it)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return found


def _provider_files() -> list[Path]:
    return sorted(p for p in PROVIDER.rglob("*.py") if "__pycache__" not in p.parts)


def _is_tooling(name: str) -> bool:
    return name == TOOLING or name.startswith(f"{TOOLING}.")


def test_the_scan_sees_imports_of_every_kind():
    """The checker itself: absolute, from-, function-level and relative imports are all resolved."""
    names = {name for _, name in _imports(PROVIDER / "operators" / "serving.py")}
    assert "airflow_mlops.operators.base.MlopsBaseOperator" in names
    assert "airflow_mlops.hooks.bentoml_process.ServingError" in names  # inside execute
    code = "from . import base\nfrom ..core import gate\ndef f():\n    import airflow_mlops_dev.demo\n"
    names = {name for _, name in _imports_in(code, "airflow_mlops.operators")}
    assert {"airflow_mlops.operators.base", "airflow_mlops.core.gate", "airflow_mlops_dev.demo"} <= names
    assert [line for line, name in _imports_in(code, "airflow_mlops.operators") if _is_tooling(name)] == [4]


def test_the_provider_never_imports_the_tooling():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in _provider_files()
        for line, name in _imports(path)
        if _is_tooling(name)
    ]
    assert not offenders, "runtime code imports the developer tooling:\n" + "\n".join(offenders)


def test_the_provider_holds_none_of_the_moved_modules():
    left = [str(p.relative_to(ROOT)) for p in _provider_files() if p.stem in MOVED]
    assert not left, f"developer tooling left in the provider (it belongs in devtools/{TOOLING}/): {left}"
    imported = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in _provider_files()
        for line, name in _imports(path)
        if name.startswith("airflow_mlops.") and name.split(".")[-1] in MOVED
    ]
    assert not imported, "\n".join(imported)


@pytest.mark.parametrize("name", sorted(p.stem for p in DEVTOOLS.glob("*.py")))
def test_the_tooling_modules_import(name):
    module = importlib.import_module(f"{TOOLING}.{name}")
    assert Path(module.__file__).resolve().parent == DEVTOOLS  # the devtools/ checkout, not a stale copy
