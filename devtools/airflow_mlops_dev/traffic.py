"""Live traffic for the demo: request rows sent to a use case's serving endpoint, as its callers would.

    python -m airflow_mlops_dev.traffic <use-case folder> <requests.csv|.parquet> [--url URL] [--concurrency 2]
        [--batch-size 250] [--period LABEL]

A frame whose columns are the use case's request fields (``serving.request.fields``; other columns are ignored)
becomes request bodies (``requests_from_frame``), in order of the event-time field, as traffic arrives. They go in
batches to ``/predict_batch`` (``{"rows": [...]}``) from a bounded pool of clients on loopback. A batch answered
5xx or not at all (e.g. while a new model is deployed) is retried with backoff; a 4xx is counted, never retried.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlops.usecase.config import UseCase


@dataclass
class TrafficResult:
    """What one period of traffic did."""

    period: str
    sent: int = 0
    answered: int = 0
    refused: int = 0
    failed: int = 0
    retries: int = 0
    seconds: float = 0.0
    versions: dict[str, int] = field(default_factory=dict)
    defaults_used: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_second": round(self.rows_per_second, 1)}


def _json_value(value: Any) -> Any:
    """A frame cell as a JSON value: None for a missing one (None, NaN, NaT), ISO 8601 for times, Python numbers
    for numpy's."""
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def requests_from_frame(frame: pd.DataFrame, usecase: UseCase | str | Path) -> list[dict[str, Any]]:
    """Request bodies from the rows of ``frame``, in order of the request's event-time field.

    Each body holds the use case's request fields the frame has (a missing value is left out: the field's default
    applies, or the server names the missing field). Times become ISO 8601 (a naive one stays naive: the field's
    ``timezone`` reads it).

    :param frame: one row per request; columns named like the request fields (others are ignored).
    :param usecase: the use case, or its folder.
    :raises ValueError: the frame lacks a required request field (the message names them).
    """
    import pandas as pd

    from airflow_mlops.core.request_schema import parse_spec
    from airflow_mlops.usecase import config

    uc = usecase if not isinstance(usecase, str | Path) else config.load(usecase)
    spec = parse_spec((uc.serving or {}).get("request") or {})
    missing = [f.name for f in spec.fields if f.required and f.name not in frame.columns]
    if missing:
        raise ValueError(f"the request frame has no {', '.join(missing)} (required fields of {uc.name}'s requests)")
    names = [f.name for f in spec.fields if f.name in frame.columns]
    ordered = frame.loc[:, names]
    if spec.event_time in ordered.columns:
        values = ordered[spec.event_time]
        text = values.dtype == object and values.map(lambda v: isinstance(v, str)).any()
        order = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601" if text else None)
        ordered = ordered.iloc[order.argsort(kind="stable")]
    bodies = []
    for values in ordered.itertuples(index=False, name=None):
        body = {}
        for name, value in zip(names, values, strict=True):
            converted = _json_value(value)
            if converted is not None:
                body[name] = converted
        bodies.append(body)
    return bodies


def send(
    url: str,
    bodies: list[dict[str, Any]],
    *,
    period: str,
    batch_size: int = 250,
    concurrency: int = 2,
    max_retries: int = 5,
    timeout: float = 60.0,
    log: Any = None,
) -> TrafficResult:
    """POST ``bodies`` to ``url``/predict_batch in batches from ``concurrency`` clients; never raises for HTTP errors.

    :param period: labels the result (e.g. the replayed period).
    """
    import httpx

    result = TrafficResult(period=period)
    versions: Counter[str] = Counter()
    lock = threading.Lock()
    batches = [bodies[i : i + batch_size] for i in range(0, len(bodies), batch_size)]
    started = time.perf_counter()

    def one(batch: list[dict[str, Any]], http: httpx.Client) -> None:
        for attempt in range(max_retries + 1):
            try:
                response = http.post("/predict_batch", json={"rows": batch})
            except httpx.HTTPError as err:
                error = f"{type(err).__name__}: {err}"
            else:
                if response.status_code == 200:
                    predictions = response.json()["predictions"]
                    with lock:
                        result.answered += len(predictions)
                        versions.update(p["model_version"] for p in predictions)
                        result.defaults_used += sum(1 for p in predictions if p.get("defaults_used"))
                    return
                if 400 <= response.status_code < 500:
                    with lock:
                        result.refused += len(batch)
                        result.errors.append(f"{response.status_code}: {response.text[:300]}")
                    return
                error = f"{response.status_code}: {response.text[:300]}"
            if attempt < max_retries:
                with lock:
                    result.retries += 1
                time.sleep(min(0.5 * 2**attempt, 8.0))
        with lock:
            result.failed += len(batch)
            result.errors.append(error)

    def worker(chunk: list[list[dict[str, Any]]]) -> None:
        with httpx.Client(base_url=url, timeout=timeout) as http:
            for batch in chunk:
                one(batch, http)

    workers = max(1, min(concurrency, len(batches)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Interleaved: at any moment the clients send neighbouring events, as traffic arrives over time.
        list(pool.map(worker, [batches[i::workers] for i in range(workers)]))
    result.sent = len(bodies)
    result.seconds = time.perf_counter() - started
    result.versions = dict(versions)
    result.errors = result.errors[:10]
    if log:
        log(
            f"   traffic {period}: {result.answered}/{result.sent} answered in {result.seconds:.1f} s "
            f"({result.rows_per_second:.0f} rows/s), versions {result.versions}, refused {result.refused}, "
            f"failed {result.failed}, retries {result.retries}"
        )
    return result


def wait_logged(url: str, timeout: float = 60.0, poll: float = 0.5, token: str | None = None) -> dict[str, Any]:
    """Wait until the server has committed every answered prediction to the inference log (``/info`` reports
    nothing pending); returns its inference-log stats. The log is flushed every ``flush_interval_s``: an
    upstream that announces outcomes right after the traffic would otherwise be monitored on part of it.
    With the admin ``token`` the server is asked to commit now (``/admin/flush_log``) instead of waiting for
    its next interval.

    With ``server.workers`` > 1 each worker keeps its own buffer and ``/info`` answers for one of them: wait
    ``flush_interval_s`` more in that case.

    :raises TimeoutError: rows are still pending after ``timeout`` seconds (e.g. the lake refuses writes).
    """
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=10.0) as http:
        if token:
            # Only saves waiting for the next interval: if refused (another token, an older server), poll on.
            http.post("/admin/flush_log", json={}, headers={"X-MLOPS-Token": token})
        while True:
            stats = http.post("/info", json={}).json().get("inference_log") or {}
            if not stats.get("pending"):
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: {stats['pending']} predictions still not in the inference log: {stats}")
            time.sleep(poll)


def read_frame(path: str | Path) -> pd.DataFrame:
    """A request frame from a ``.parquet`` or ``.csv`` file."""
    import pandas as pd

    target = Path(path)
    return pd.read_parquet(target) if target.suffix == ".parquet" else pd.read_csv(target)


def main(argv: list[str] | None = None) -> int:
    from airflow_mlops.usecase import config

    parser = argparse.ArgumentParser(prog="python -m airflow_mlops_dev.traffic", description=__doc__.split("\n")[0])
    parser.add_argument("usecase", help="the use-case folder (holding mlops.yaml)")
    parser.add_argument("requests", help="a .csv or .parquet file of request rows")
    parser.add_argument("--url", default=None, help="serving URL (default: the use case's serving_url)")
    parser.add_argument("--period", default=None, help="labels the result (default: the file's stem)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=250)
    args = parser.parse_args(argv)
    usecase = config.load(args.usecase)
    url = args.url or config.serving_url(usecase)
    bodies = requests_from_frame(read_frame(args.requests), usecase)
    period = args.period or Path(args.requests).stem
    result = send(url, bodies, period=period, batch_size=args.batch_size, concurrency=args.concurrency, log=print)
    print(json.dumps(result.to_dict(), indent=2))
    return 0 if result.failed == 0 and result.refused == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
