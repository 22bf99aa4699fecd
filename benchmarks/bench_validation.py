"""Validation cost: the GX suites vs the same checks in plain pandas, for one month and for the whole year.

    .venv/bin/python benchmarks/bench_validation.py [--repeat 5]

Both sides run the same expectations, the flight_delay example's batch suites (``source.suites`` of
``examples/flight_delay/mlops.yaml``, in its ``expectations/``), on the same frames (its ``demo_batches`` through
its ``prepare_validation``, as the validate DAG prepares them); the pandas side is a minimal interpreter of those
expectation types. Both must agree on which expectations fail.
Targets: the whole year GX <= 3x plain pandas. The one-month ratio is reported but no longer judged (its <= 3x
target is retired, issue 20: GX runs as shipped, without the run-time patches that held a month under it).
Warm: one warm-up call first (imports; the GX context is then reused, as in a worker process that validates
several batches); the two sides run alternately, median of ``--repeat``. Data Docs are not rendered here
(``validate_batch`` without ``docs_dir``). As in ``ValidateBatchOperator``, GX is given the batch's content hash
(the ingest's ``batch_hash`` of its files' sha256, computed before timing) to record; GX hashes the frames itself
as well.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from airflow_mlops.core import validation
from airflow_mlops.core.batches import batch_hash, sha256_bytes
from airflow_mlops.usecase import config, load_function
from airflow_mlops_dev import replay_source

ROOT = Path(__file__).resolve().parents[1]
#: The GX-to-pandas ratio each case is judged against; None: reported only (the month's target is retired, issue 20).
TARGETS = {"one month": None, "whole year": 3.0}
#: The use case benchmarked: the flights example, as shipped.
USECASE = config.load(ROOT / "examples" / "flight_delay")


def _param(value, params):
    return params[value["$PARAMETER"]] if isinstance(value, dict) else value


def _mostly(ok: pd.Series, kw: dict) -> bool:
    return (ok.mean() if len(ok) else 1.0) >= kw.get("mostly", 1.0)


def pandas_check(frame: pd.DataFrame, suite: dict, params: dict) -> dict[str, bool]:
    """The suite's expectations in plain pandas: expectation key → success."""
    out = {}
    for exp in suite["expectations"]:
        kind, kw = exp["type"], exp["kwargs"]
        key = f"{kind}({kw.get('column') or ','.join(kw.get('column_list', []))})"
        col = kw.get("column")
        if col is not None and col not in frame.columns:
            out[key] = False
            continue
        if kind == "expect_table_columns_to_match_set":
            ok = set(frame.columns) == set(kw["column_set"])
        elif kind == "expect_table_row_count_to_be_between":
            ok = kw["min_value"] <= len(frame) <= kw["max_value"]
        elif kind == "expect_column_values_to_not_be_null":
            ok = bool(frame[col].notna().all())
        elif kind == "expect_column_values_to_be_of_type":
            ok = isinstance(frame[col].dtype, pd.DatetimeTZDtype)
        elif kind == "expect_column_values_to_be_between":
            values = pd.to_numeric(frame[col], errors="coerce").dropna()
            lo, hi = _param(kw["min_value"], params), _param(kw["max_value"], params)
            ok = _mostly(values.between(lo, hi), kw)
        elif kind == "expect_column_values_to_be_in_set":
            values = frame[col].dropna()
            ok = _mostly(values.isin(kw["value_set"]), kw)
        elif kind == "expect_column_values_to_match_regex":
            values = frame[col].dropna().astype(str)
            ok = _mostly(values.str.match(re.compile(kw["regex"])), kw)
        elif kind == "expect_compound_columns_to_be_unique":
            ok = not frame.duplicated(kw["column_list"], keep=False).any()
        elif kind == "expect_column_values_to_be_unique":
            ok = not frame[col].dropna().duplicated(keep=False).any()
        else:
            raise NotImplementedError(kind)
        out[key] = bool(ok)
    return out


def _frames(months: list[str]) -> dict[str, pd.DataFrame]:
    parts: dict[str, list] = {}
    for month in months:
        for name, frame in replay_source.demo_frames(month, USECASE).items():
            parts.setdefault(config.stem(name), []).append(frame)
    raw = {name: pd.concat(p, ignore_index=True) if name != "planes" else p[0] for name, p in parts.items()}
    # as the ingest/validate DAG does: the event time parsed, then the use case's prepare_validation
    source = USECASE.source
    prepare = load_function(USECASE.module_file, "prepare_validation", arity=1)
    return validation.prepare_batch(
        raw,
        prepare,
        {config.stem(source.event_time_file): source.event_time_column},
        source.event_time_format or "ISO8601",
    )


def _fingerprint(months: list[str]) -> str:
    """The batch's content hash as ingest records it (for several months: over all their files)."""
    return batch_hash(
        {
            f"{month}/{name}": sha256_bytes(data)
            for month in months
            for name, data in replay_source.batch_files(month, usecase=USECASE).items()
        }
    )


def _time_pair(first, second, repeat: int) -> tuple[float, float]:
    """Medians of ``first`` and ``second`` run alternately, so load from other processes falls on both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, bucket in zip((first, second), times, strict=True):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    suites = {config.stem(name): validation.load_suite(path) for name, path in USECASE.source.suites.items()}
    # Imports and the GX context, which later calls reuse.
    validation.validate_batch("warm-up", _frames(["2013-01"]), suites, validation.batch_parameters("2013-01"))

    print(f"{'case':12s} {'rows':>8s} {'GX s':>8s} {'pandas s':>9s} {'ratio':>7s}  {'target':22s}  agree")
    for label, months in (("one month", ["2013-03"]), ("whole year", [f"2013-{m:02d}" for m in range(1, 13)])):
        frames = _frames(months)
        params = validation.batch_parameters(months[0])  # as ValidateBatchOperator: the (first) month's
        fingerprint = _fingerprint(months)
        report = None

        def run_gx(label=label, frames=frames, params=params, fingerprint=fingerprint):
            nonlocal report
            report = validation.validate_batch(label, frames, suites, params, fingerprint=fingerprint)

        def run_pandas(frames=frames, params=params):
            return {n: pandas_check(frames[n], suites[n], params) for n in suites}

        gx_s, pd_s = _time_pair(run_gx, run_pandas, args.repeat)
        gx_failed = {(s.suite, f.expectation, f.column or "") for s in report.suites for f in s.failures}
        pd_result = run_pandas()
        pd_failed = {
            (suites[n]["name"], k.split("(")[0], k.split("(")[1].rstrip(")"))
            for n, checks in pd_result.items()
            for k, ok in checks.items()
            if not ok
        }
        rows = sum(len(f) for f in frames.values())
        ratio = gx_s / pd_s
        target = TARGETS[label]
        verdict = "retired, issue 20" if target is None else f"<= {target:g}x: {'met' if ratio <= target else 'MISSED'}"
        print(
            f"{label:12s} {rows:8d} {gx_s:8.3f} {pd_s:9.3f} {ratio:6.1f}x  {verdict:22s}  "
            f"{'yes' if gx_failed == pd_failed else 'NO'}"
            f"  ({len(gx_failed)} failing: {sorted(e for _, e, _ in gx_failed) or 'none'})"
        )
    np.random.seed(0)


if __name__ == "__main__":
    main()
