"""Drift check cost: a month of traffic against the champion's reference, vs plain numpy/scipy KS on the same columns.

    .venv/bin/python benchmarks/bench_drift.py [--repeat 3] [--evidently-full]

The flight_delay example (``examples/flight_delay/mlops.yaml``: the model's features, the ``monitoring`` drift
settings). Reference: every labelled flight of January–March 2013 with the model's 26 features (~78k rows); current:
all of April (~27k rows); both with a ``prediction`` column (the logged probability). Measured:

* ``profile``  — building the reference profile (once per champion; cached in the lake, not part of a check);
* ``check``    — ``core.drift.compare`` of the month against the cached profile (what decides);
* ``ks``       — scipy ``ks_2samp`` per numeric column + ``chi2_contingency`` per categorical column, month vs the
                 full reference (the plain baseline: it re-reads the reference every time);
* ``report``   — the Evidently report the operator renders (5k reference sample vs ≤ 20k current rows);
* ``evidently-full`` (flag) — Evidently's own drift on the full month vs the full reference, no cache.

Target: check ≤ 3× ks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: The use case benchmarked: the flights example, as shipped.
FLIGHTS = ROOT / "examples" / "flight_delay"
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "tests")]


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--evidently-full", action="store_true")
    args = ap.parse_args()

    import pandas as pd
    from scipy.stats import chi2_contingency, ks_2samp

    from airflow_mlops.core import drift
    from airflow_mlops.usecase import config as usecase_config

    from training_fixtures import build_frame

    usecase = usecase_config.load(FLIGHTS)
    config = usecase.training_config()
    cats, nums = list(config.categorical), list(config.numeric)
    rng = np.random.default_rng(0)
    ref, cur = build_frame((1, 2, 3)), build_frame((4,))
    ref[drift.PREDICTION] = rng.beta(2, 5, len(ref))
    cur[drift.PREDICTION] = rng.beta(2, 5, len(cur))
    columns = [*cats, *nums]
    settings_ = drift.DriftSettings.from_config(usecase.monitoring)  # the use case's method, threshold and bins
    print(f"reference {len(ref)} rows, current {len(cur)} rows, {len(columns)} features + prediction")

    t_profile, profile = timed(
        lambda: drift.build_profile(
            ref,
            categorical=cats,
            numeric=nums,
            predictions=ref[drift.PREDICTION],
            bins=settings_.bins,
            max_categories=settings_.max_categories,
        ),
        1,
    )
    t_check, result = timed(lambda: drift.compare(profile, cur, settings_, columns=columns), args.repeat)

    def ks():
        out = {}
        for c in [*nums, drift.PREDICTION]:
            a, b = ref[c].dropna().to_numpy(), cur[c].dropna().to_numpy()
            out[c] = ks_2samp(a, b).pvalue
        for c in cats:
            table = pd.crosstab(
                np.r_[np.zeros(len(ref)), np.ones(len(cur))], np.r_[ref[c].astype(str), cur[c].astype(str)]
            )
            out[c] = chi2_contingency(table.to_numpy())[1]
        return out

    t_ks, pvalues = timed(ks, args.repeat)

    from airflow_mlops.hooks.evidently_workspace import EvidentlyHook

    sample = drift.sample_rows(ref, 5000)
    started = time.perf_counter()
    import evidently  # noqa: F401 - import cost reported apart

    t_import = time.perf_counter() - started
    t_report, _ = timed(
        lambda: EvidentlyHook.drift_report(
            sample,
            drift.sample_rows(cur, 20000),
            categorical=cats,
            numeric=[*nums, drift.PREDICTION],
            method=settings_.method,
            threshold=settings_.threshold,
        ),
        1,
    )

    print(f"profile (once per champion)        {t_profile:7.3f} s")
    print(
        f"check: month vs cached profile      {t_check:7.3f} s   drift share {result.drift_share:.2f}: {', '.join(result.drifted_columns)}"
    )
    print(
        f"scipy KS + chi2: month vs reference {t_ks:7.3f} s   p < 0.01 in {sum(p < 0.01 for p in pvalues.values())}/{len(pvalues)} columns"
    )
    print(f"evidently import                    {t_import:7.3f} s")
    print(f"evidently report (5k vs 20k rows)   {t_report:7.3f} s")
    if args.evidently_full:
        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import DriftedColumnsCount, ValueDrift

        definition = DataDefinition(numerical_columns=[*nums, drift.PREDICTION], categorical_columns=cats)
        cols = [*columns, drift.PREDICTION]

        def full():
            report = Report(
                [
                    DriftedColumnsCount(columns=cols, method=settings_.method),
                    *(ValueDrift(column=c, method=settings_.method) for c in cols),
                ]
            )
            return report.run(
                Dataset.from_pandas(cur[cols], data_definition=definition),
                Dataset.from_pandas(ref[cols], data_definition=definition),
            )

        t_full, _ = timed(full, 1)
        print(f"evidently, full month vs full ref   {t_full:7.3f} s   ({t_full / t_ks:.1f}x KS)")
    ratio = t_check / t_ks
    print(f"check / KS = {ratio:.2f}x (target <= 3x): {'OK' if ratio <= 3 else 'OVER'}")
    return 0 if ratio <= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
