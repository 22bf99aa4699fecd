"""A serving stack for tests and benchmarks: Feast online features for January 2013, a champion in a SQLite MLflow.

``build_stack(home)`` sets the environment (``MLOPS_LAKE``, ``MLOPS_FEAST_HOME``, ``MLFLOW_TRACKING_URI``, ...)
to folders under ``home``, seeds validated January, builds and materializes its features (features_fixtures +
the feature stage's own code), and runs train → gate → register → promote with the real operators
(training_fixtures) so ``flight_delay_test`` v1 is ``champion``. ``register_*`` add further versions: a good
second model, one whose artifacts cannot be loaded, one that answers NaN.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from features_fixtures import seed_validated
from training_fixtures import build_frame, run_pipeline, write_configs, write_snapshot

MODEL = "flight_delay_test"
ROOT = Path(__file__).resolve().parents[1]


def stack_env(home: Path) -> dict[str, str]:
    return {
        "MLOPS_LAKE": (home / "lake").as_uri(),
        "MLOPS_FEAST_HOME": str(home / "feast"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "MLOPS_MLFLOW_ARTIFACTS": (home / "artifacts").as_uri(),
        "MLOPS_SERVING_MODEL_NAME": MODEL,
        "MLOPS_SERVING_CONFIG": str(home / "serving.yaml"),
        "MLOPS_GIT_COMMIT": "0123456789abcdef0123456789abcdef01234567",
        "FEAST_USAGE": "False",
    }


def write_serving_config(home: Path, **overrides: Any) -> Path:
    """The repo's serving.yaml with test-sized settings (fast flushes, a small batch limit)."""
    import yaml

    config = yaml.safe_load((ROOT / "include" / "config" / "serving.yaml").read_text())
    config["inference_log"].update(flush_rows=50, flush_interval_s=1)
    config["request"]["batch_max_size"] = 20
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        config[section][key] = value
    path = home / "serving.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def build_features(home: Path, month: str = "2013-01") -> None:
    from airflow_mlops.core import features as F
    from airflow_mlops.core.batches import month_bounds
    from airflow_mlops.hooks.feast_store import FeastHook
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.operators.features import build_partition

    lake = LakeHook(root_url=(home / "lake").as_uri())
    lake.ensure_zones()
    spec = F.load_spec()
    seed_validated(lake, month)
    build_partition(lake, month, spec, logging.getLogger("serving-fixtures"))
    hook = FeastHook(lake_root=lake.root_url)
    hook.apply()
    start, end = month_bounds(month)
    hook.materialize(start, end - timedelta(microseconds=1))


def build_stack(home: Path) -> dict[str, Any]:
    """Environment set (``os.environ`` updated), features online, champion v1. Returns paths and the pipeline out."""
    os.environ.update(stack_env(home))
    write_serving_config(home)
    build_features(home)
    from airflow_mlops.hooks.lake import LakeHook

    lake = LakeHook(root_url=(home / "lake").as_uri())
    frame = build_frame((1, 2, 3), sample=0.3, seed=0)
    paths = write_configs(home / "config")
    first = run_pipeline(write_snapshot(lake, frame), paths, "manual__serving_v1")
    assert first["promoted"] != "skipped", first["gate"]
    return {"home": home, "lake": lake, "frame": frame, "paths": paths, "v1": first}


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
    return json.loads((ROOT / "include" / "serving" / "canned_requests.json").read_text())


def client_loop(url: str, stop_file: str, out_file: str, threads: int = 4, max_seconds: float = 120.0) -> None:
    """Clients hammering ``/predict`` from their own process until ``stop_file`` exists (bounded in time).

    Touches ``<out_file>.ready`` at the first answer; writes ``[{status, version, request_id}]`` to ``out_file``. Run: ``python -c 'import serving_fixtures as s;
    s.client_loop(...)'`` from ``tests/``.
    """
    import threading
    import time

    import httpx

    flights = canned()["single"]
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds
    ready = Path(f"{out_file}.ready")  # the first answer arrived: the caller may start the swap

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30.0) as http:
            i = k
            while not os.path.exists(stop_file) and time.monotonic() < deadline:
                try:
                    response = http.post("/predict", json=flights[i % len(flights)])
                    body = response.json() if response.status_code == 200 else {}
                    record = {
                        "status": response.status_code,
                        "version": body.get("model_version"),
                        "request_id": body.get("request_id"),
                    }
                except httpx.HTTPError as err:
                    record = {"status": 0, "error": repr(err)}
                with lock:
                    results.append(record)
                    if record["status"] == 200 and not ready.exists():
                        ready.touch()
                i += 1

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    Path(out_file).write_text(json.dumps(results))
