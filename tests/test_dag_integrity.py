"""The DAG files import cleanly, read well in the UI, retry, and stay light to parse; every use case of the
projects folder gets its DAGs (the five of the loop and batch scoring), isolated from the others; a broken use case
is one import error naming its file and key, and costs the others nothing.

``dags/`` is parsed as the DAG processor parses it, in a fresh interpreter (so the modules it loads are its own).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FLIGHTS, ROOT

HEAVY = ("mlflow", "great_expectations", "feast", "bentoml", "evidently", "sklearn", "pandas")
#: The DAGs of a use case (the factory's contract): ``<name>_<stage>``, the five of the loop and batch scoring.
STAGES = ("ingest_validate", "features", "monitoring", "training", "rollback", "scoring")

PARSE_IN_A_FRESH_INTERPRETER = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
before = set(sys.modules)
bag = DagBag(dag_folder=sys.argv[1])
loaded = sorted({m.split(".")[0] for m in set(sys.modules) - before})


def kwarg(task, name):
    partial = getattr(task, "partial_kwargs", None)  # a mapped task keeps its arguments there
    value = partial.get(name) if isinstance(partial, dict) and name in partial else getattr(task, name, None)
    return None if value is None else str(value)


def lake_of(task):
    # what MlopsBaseOperator.lake_url resolves: lake_root, else the use case's own lake
    root = kwarg(task, "lake_root")
    folder = kwarg(task, "usecase")
    if root or not folder:
        return root
    from airflow_mlops.usecase import config

    return config.lake_url(config.load(folder))


def assets(condition):
    if condition is None:
        return []
    if hasattr(condition, "objects"):  # AssetAll / AssetAny
        return [a for part in condition.objects for a in assets(part)]
    return [condition]


dags = {}
for dag_id, dag in bag.dags.items():
    scheduled = assets(getattr(dag.timetable, "asset_condition", None))
    dags[dag_id] = {
        "doc": dag.doc_md or "",
        "tags": sorted(dag.tags or []),
        "schedule_assets": sorted(a.name for a in scheduled),
        "watcher_urls": [getattr(w.trigger, "flag_url", None) for a in scheduled for w in (a.watchers or [])],
        "tasks": {
            t.task_id: {
                "owner": t.owner,
                "retries": t.retries,
                "outlets": sorted(getattr(o, "name", str(o)) for o in (t.outlets or [])),
                "lake_root": lake_of(t),
                "usecase": kwarg(t, "usecase"),
            }
            for t in dag.tasks
        },
    }
errors = {k: str(v) for k, v in bag.import_errors.items()}
print("RESULT" + json.dumps({"errors": errors, "modules": loaded, "dags": dags}))
"""


def parse_dags(**env: str) -> dict:
    """Parse ``dags/`` in a fresh interpreter with ``env`` on top of this session's environment.

    :param env: e.g. ``MLOPS_PROJECTS``.
    """
    done = subprocess.run(
        [sys.executable, "-c", PARSE_IN_A_FRESH_INTERPRETER, str(ROOT / "dags")],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(line.removeprefix("RESULT"))


def expected_ids(name: str) -> set[str]:
    return {f"{name}_{stage}" for stage in STAGES}


def usecase_names(root: Path) -> list[str]:
    """The names declared by the ``mlops.yaml`` of each folder under ``root`` (read here, not by the factory)."""
    import yaml

    return sorted(
        yaml.safe_load((folder / "mlops.yaml").read_text())["name"]
        for folder in root.iterdir()
        if (folder / "mlops.yaml").is_file()
    )


@pytest.fixture(scope="module")
def parsed() -> dict:
    """``dags/`` with the default projects folder (``examples/``)."""
    return parse_dags()


def test_no_import_errors(parsed):
    assert parsed["errors"] == {}
    assert parsed["dags"], "no DAG found in dags/"


def test_every_example_gets_its_dags_and_nothing_else(parsed):
    names = usecase_names(ROOT / "examples")
    assert "flight_delay" in names
    assert set(parsed["dags"]) == set().union(*(expected_ids(n) for n in names))


def test_parsing_imports_no_heavy_module(parsed):
    assert sorted(set(parsed["modules"]) & set(HEAVY)) == []


def test_every_dag_has_docs_tags_owner_and_retries(parsed):
    for dag_id, dag in parsed["dags"].items():
        name = next(n for n in usecase_names(ROOT / "examples") if dag_id in expected_ids(n))
        assert dag["doc"].strip(), f"{dag_id} has no doc_md"
        assert f"`{name}`" in dag["doc"], f"{dag_id}'s doc does not name its use case {name}"
        assert {"mlops", name} <= set(dag["tags"]), f"{dag_id} lacks the 'mlops' or {name!r} tag: {dag['tags']}"
        assert dag["tasks"], f"{dag_id} has no task"
        for task_id, task in dag["tasks"].items():
            assert task["owner"] not in ("", "airflow"), f"{dag_id}.{task_id} has no owner"
            assert task["retries"] >= 1, f"{dag_id}.{task_id} does not retry"


def test_the_ingest_dag_is_there(parsed):
    assert {"ingest_batch", "validate_batch"} <= set(parsed["dags"]["flight_delay_ingest_validate"]["tasks"])


# -- several use cases side by side, one of them broken -------------------------------------------------------------
#: Ways to break a copy of the example: (the line replaced, its replacement, the key the error must name).
BREAKAGES = {
    "bad_view_type": ("        dest: string\n", "        dest: text\n", "features.views.flight_features.fields.dest"),
    "unknown_estimator": (
        "  estimator: hist_gradient_boosting\n",
        "  estimator: gradient_magic\n",
        "model.estimator",
    ),
}


def copy_usecase(target: Path, name: str, replace: tuple[str, str] | None = None) -> Path:
    """A copy of the flight_delay example in ``target`` named ``name`` (its ``name:`` line edited, nothing else but
    ``replace``: one line of mlops.yaml, which must be there exactly once)."""
    shutil.copytree(FLIGHTS, target, ignore=shutil.ignore_patterns("__pycache__"))
    config = target / "mlops.yaml"
    text = config.read_text()
    assert text.count("\nname: flight_delay\n") == 1
    text = text.replace("\nname: flight_delay\n", f"\nname: {name}\n")
    if replace is not None:
        old, new = replace
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    config.write_text(text)
    return target


@pytest.fixture(scope="module", params=sorted(BREAKAGES))
def side_by_side(request, tmp_path_factory) -> dict:
    """A projects folder with the example, a renamed copy of it, and a copy broken in one way; parsed."""
    old, new, key = BREAKAGES[request.param]
    root = tmp_path_factory.mktemp("projects")
    good = {name: copy_usecase(root / name, name) for name in ("flight_delay", "other")}
    broken = copy_usecase(root / "broken", "broken", (old, new))
    lake = tmp_path_factory.mktemp("lake").as_uri()
    return {
        "parsed": parse_dags(MLOPS_PROJECTS=str(root), MLOPS_LAKE=lake),
        "good": good,
        "broken": broken,
        "key": key,
        "lake": lake,
    }


def test_a_broken_use_case_is_one_import_error_naming_its_file_and_key(side_by_side):
    errors = side_by_side["parsed"]["errors"]
    assert len(errors) == 1, errors
    ((file, message),) = errors.items()
    assert Path(file).name == "mlops.py", file
    # the folder (the whole path, not a prefix of another) and the file's key, e.g. "mlops.yaml: model.estimator"
    assert re.search(re.escape(str(side_by_side["broken"].resolve())) + r"(?![\w.-])", message), message
    assert re.search(rf"mlops\.yaml: {re.escape(side_by_side['key'])}\b", message), message


def test_the_good_use_cases_keep_their_dags(side_by_side):
    assert set(side_by_side["parsed"]["dags"]) == expected_ids("flight_delay") | expected_ids("other")


def test_two_use_cases_share_no_dag_asset_lake_or_feast_project(side_by_side):
    from airflow_mlops.hooks.feast_store import FeastHook

    dags = side_by_side["parsed"]["dags"]
    seen: dict[str, dict[str, set[str]]] = {}
    for name, folder in side_by_side["good"].items():
        lake_root = f"{side_by_side['lake']}/{name}"
        mine = {dag_id: dag for dag_id, dag in dags.items() if dag_id in expected_ids(name)}
        assert set(mine) == expected_ids(name)
        assets = {a for dag in mine.values() for a in dag["schedule_assets"]}
        assets |= {a for dag in mine.values() for task in dag["tasks"].values() for a in task["outlets"]}
        foreign = sorted(a for a in assets if not a.startswith(f"{name}."))
        assert assets and not foreign, f"{name}'s DAGs use Assets not named {name}.*: {foreign}"
        roots = {t["lake_root"] for dag in mine.values() for t in dag["tasks"].values() if t["lake_root"]}
        assert roots == {lake_root}, roots
        watchers = [url for dag in mine.values() for url in dag["watcher_urls"]]
        assert watchers and all(url.startswith(f"{lake_root}/") for url in watchers), watchers
        folders = {t["usecase"] for dag in mine.values() for t in dag["tasks"].values() if t["usecase"]}
        assert folders and {Path(f).resolve() for f in folders} == {folder.resolve()}, folders
        projects = {FeastHook(folder).project}
        seen[name] = {"dags": set(mine), "assets": assets, "lakes": roots, "projects": projects}
    first, second = seen.values()
    for kind in ("dags", "assets", "lakes", "projects"):
        assert not first[kind] & second[kind], (kind, first[kind] & second[kind])


def test_two_folders_declaring_one_name_are_an_import_error(tmp_path):
    """A copied use case whose ``name`` was not changed would take the other's DAG ids, Assets and lake: it is an
    error naming both folders, not a silent replacement."""
    copy_usecase(tmp_path / "flight_delay", "flight_delay")
    copy_usecase(tmp_path / "flight_delay_copy", "flight_delay")
    parsed = parse_dags(MLOPS_PROJECTS=str(tmp_path), MLOPS_LAKE=(tmp_path / "lake").as_uri())
    ((_, message),) = parsed["errors"].items()
    for folder in ("flight_delay", "flight_delay_copy"):
        assert re.search(re.escape(str((tmp_path / folder).resolve())) + r"(?!\w)", message), message
    # The first folder (in sorted order) keeps its DAGs; the copy gets none.
    assert set(parsed["dags"]) == expected_ids("flight_delay")
    folders = {t["usecase"] for dag in parsed["dags"].values() for t in dag["tasks"].values() if t["usecase"]}
    assert {Path(f).resolve() for f in folders} == {(tmp_path / "flight_delay").resolve()}
