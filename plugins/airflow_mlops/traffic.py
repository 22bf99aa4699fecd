"""Live traffic for the replay: a month's scheduled flights sent to the serving endpoint, as booking systems would.

    python -m airflow_mlops.traffic 2013-03 [--url http://127.0.0.1:3000] [--concurrency 2] [--batch-size 250]

Only what is known at scheduling time is sent (carrier, flight number, origin, destination, scheduled departure in
local time, tail number); the outcomes stay with the upstream system until it announces them. Flights go in order of
departure, in batches to ``/predict_batch`` from a bounded pool of clients on loopback. A batch answered 5xx or
not at all (e.g. while a new model is deployed) is retried with backoff; a 4xx is counted, never retried.
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
from typing import Any

from airflow_mlops.core.batches import parse_month


@dataclass
class TrafficResult:
    """What one month of traffic did."""

    month: str
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


def month_requests(month: str) -> list[dict[str, Any]]:
    """The month's scheduled flights as request bodies, in order of scheduled departure (local time at origin)."""
    from airflow_mlops.core.replay_source import month_frames

    flights = month_frames(month)["flights.csv"]
    flights = flights.sort_values(["year", "month", "day", "sched_dep_time", "carrier", "flight"], kind="stable")
    bodies = []
    for row in flights[
        ["year", "month", "day", "sched_dep_time", "carrier", "flight", "origin", "dest", "tailnum"]
    ].itertuples(index=False):
        hour, minute = divmod(int(row.sched_dep_time), 100)
        body = {
            "carrier": row.carrier,
            "flight": int(row.flight),
            "origin": row.origin,
            "dest": row.dest,
            "scheduled_departure": f"{row.year:04d}-{row.month:02d}-{row.day:02d}T{hour:02d}:{minute:02d}:00",
        }
        if isinstance(row.tailnum, str) and row.tailnum:
            body["tailnum"] = row.tailnum
        bodies.append(body)
    return bodies


def send(
    url: str,
    bodies: list[dict[str, Any]],
    *,
    month: str,
    batch_size: int = 250,
    concurrency: int = 2,
    max_retries: int = 5,
    timeout: float = 60.0,
    log: Any = None,
) -> TrafficResult:
    """POST ``bodies`` to ``url``/predict_batch in batches from ``concurrency`` clients; never raises for HTTP errors."""
    import httpx

    result = TrafficResult(month=month)
    versions: Counter[str] = Counter()
    lock = threading.Lock()
    batches = [bodies[i : i + batch_size] for i in range(0, len(bodies), batch_size)]
    started = time.perf_counter()

    def one(batch: list[dict[str, Any]], http: httpx.Client) -> None:
        for attempt in range(max_retries + 1):
            try:
                response = http.post("/predict_batch", json={"flights": batch})
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
        # Interleaved: at any moment the clients send neighbouring departures, as traffic arrives over time.
        list(pool.map(worker, [batches[i::workers] for i in range(workers)]))
    result.sent = len(bodies)
    result.seconds = time.perf_counter() - started
    result.versions = dict(versions)
    result.errors = result.errors[:10]
    if log:
        log(
            f"   traffic {month}: {result.answered}/{result.sent} answered in {result.seconds:.1f} s "
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


def main(argv: list[str] | None = None) -> int:
    from airflow_mlops.serving_process import embedded

    parser = argparse.ArgumentParser(prog="python -m airflow_mlops.traffic", description=__doc__.split("\n")[0])
    parser.add_argument("month", help="YYYY-MM of 2013")
    parser.add_argument("--url", default=None, help="serving URL (default: the embedded server of MLOPS_HOME)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=250)
    args = parser.parse_args(argv)
    month = parse_month(args.month)
    url = args.url or embedded().url
    result = send(
        url, month_requests(month), month=month, batch_size=args.batch_size, concurrency=args.concurrency, log=print
    )
    print(json.dumps(result.to_dict(), indent=2))
    return 0 if result.failed == 0 and result.refused == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
