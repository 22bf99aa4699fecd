"""DAG folder parse time with the whole stack installed, as Airflow's DAG processor parses it.

    .venv/bin/python benchmarks/bench_dag_parse.py [--repeat 5]

Each repeat parses ``dags/`` in a fresh interpreter (after warming ``airflow.sdk``, like the processor) and
records the time and any heavy module the parse loaded. Target: folder < 1 s, no heavy module.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("mlflow", "great_expectations", "feast", "bentoml", "evidently", "sklearn", "pandas", "torch")
PARSE = """
import json, sys, time
from airflow.sdk import dag  # warm the SDK: time the parse, not Airflow's own import
from airflow.dag_processing.dagbag import DagBag
before = set(sys.modules)
start = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
took = time.perf_counter() - start
heavy = sorted({m.split(".")[0] for m in set(sys.modules) - before} & set(sys.argv[2].split(",")))
print("RESULT" + json.dumps({"seconds": took, "dags": len(bag.dags), "errors": len(bag.import_errors), "heavy": heavy}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    env = dict(
        os.environ,
        AIRFLOW_HOME=tempfile.mkdtemp(prefix="bench-parse-"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        PYTHONWARNINGS="ignore",
    )
    results = []
    for _ in range(args.repeat):
        out = subprocess.run(
            [sys.executable, "-c", PARSE, str(ROOT / "dags"), ",".join(HEAVY)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        results.append(json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT"))[6:]))
    times = [r["seconds"] for r in results]
    median = statistics.median(times)
    heavy = sorted({m for r in results for m in r["heavy"]})
    print(
        f"dag folder parse: {len(list((ROOT / 'dags').glob('*.py')))} files, {results[0]['dags']} DAGs, "
        f"{results[0]['errors']} import errors"
    )
    print(
        f"  median {median:.3f} s  min {min(times):.3f} s  max {max(times):.3f} s  over {len(times)} fresh interpreters"
    )
    print(f"  ratio to the 1 s budget: {median / 1.0:.2f}   heavy modules loaded: {heavy or 'none'}")


if __name__ == "__main__":
    main()
