"""The flight-delay prediction service (BentoML 1.4): the registry's champion, enriched with Feast online features.

    bentoml serve include/serving/service.py:FlightDelayService --host 127.0.0.1 --port 3000

``POST /predict`` one flight → probability of a late arrival, the decision at the threshold, model version,
request id and the entities that fell back to defaults; ``POST /predict_batch`` ``{"flights": [...]}``;
``POST /info`` what is served; ``POST /admin/reload`` (header ``X-MLOPS-Token``) loads a version (default: the
alias's current one), answers the canned requests with it, and only then swaps it in. ``/readyz``, ``/livez``
and ``/metrics`` are BentoML's. Bad input is a 400 naming the field (typed pydantic inputs).

Configuration: ``include/config/serving.yaml`` and the environment —
``MLOPS_SERVING_MODEL_NAME`` / ``MLOPS_SERVING_ALIAS`` / ``MLOPS_SERVING_MODEL_VERSION`` (a pinned version
never follows the alias: infrastructure validation), ``MLOPS_SERVING_TOKEN`` (or the file
``MLOPS_SERVING_TOKEN_FILE``; none: no admin API), ``MLOPS_INFERENCE_LOG=off`` (no inference log), MLflow
through ``MlflowHook``'s environment rules, Feast through ``FeastHook``'s, the lake through ``MLOPS_LAKE``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException, ServiceUnavailable

from airflow_mlops.core import serving_schemas as S
from airflow_mlops.core.serving_schemas import (
    BatchPrediction,
    BatchRequest,
    FlightRequest,
    ModelInfo,
    Prediction,
    ReloadRequest,
    ReloadResult,
)

log = logging.getLogger("airflow_mlops.serving")
CONFIG = S.load_config()
SERVER = CONFIG["server"]


class Forbidden(BentoMLException):
    from http import HTTPStatus

    error_code = HTTPStatus.FORBIDDEN


class SwapRejected(BentoMLException):
    from http import HTTPStatus

    error_code = HTTPStatus.CONFLICT


def _token() -> str | None:
    token = os.environ.get("MLOPS_SERVING_TOKEN")
    path = os.environ.get("MLOPS_SERVING_TOKEN_FILE")
    if not token and path and Path(path).is_file():
        token = Path(path).read_text().strip()
    return token or None


@bentoml.service(
    name="flight_delay",
    workers=int(SERVER.get("workers", 1)),
    threads=int(SERVER.get("threads", 2)),
    traffic={"timeout": int(SERVER.get("timeout_s", 30))},
)
class FlightDelayService:
    def __init__(self) -> None:
        from threadpoolctl import threadpool_limits

        from airflow_mlops.core.features import load_spec
        from airflow_mlops.hooks.mlflow_registry import MlflowHook

        # One OpenMP thread per scoring call: requests run in parallel threads already, and on a small shared CPU
        # OpenMP's spinning threads multiplied single-row latency (training.yaml's `threads: 1` note, likewise).
        threadpool_limits(1)

        model_cfg = CONFIG.get("model") or {}
        self.alias = os.environ.get("MLOPS_SERVING_ALIAS") or model_cfg.get("alias") or "champion"
        self.pinned = os.environ.get("MLOPS_SERVING_MODEL_VERSION") or None
        self.name = os.environ.get("MLOPS_SERVING_MODEL_NAME") or model_cfg.get("name") or _training_model_name()
        threshold = CONFIG.get("threshold")
        self.threshold = None if threshold is None else float(threshold)
        self.mlflow = MlflowHook()
        self.client = self.mlflow.client
        self.spec = load_spec()
        self._features: Any = None  # the online reader, opened on first use (see ``features``)
        self.canned = [FlightRequest(**r) for r in _canned()["single"]]
        self.slot: Any = None
        self.load_error: str | None = None
        self._lock = threading.Lock()
        self.log_buffer = self._inference_log()
        version = self.pinned or self.mlflow.alias_version(self.name, self.alias)
        if version is None:
            self.load_error = f"{self.name}@{self.alias} does not exist yet: waiting for a reload"
            log.warning("%s", self.load_error)
        else:
            self._load_first(version)
        self._stop = threading.Event()
        interval = float(model_cfg.get("watch_interval_s") or 0)
        if interval > 0 and not self.pinned:
            threading.Thread(target=self._watch, args=(interval,), name="alias-watch", daemon=True).start()

    @property
    def features(self) -> Any:
        """The Feast online reader, opened when a model is first loaded: a server started before the first
        ``feast apply`` (a fresh home, no champion yet) comes up and waits instead of failing."""
        if self._features is None:
            from airflow_mlops.hooks.feast_store import FeastHook

            with self._lock:
                if self._features is None:
                    self._features = FeastHook().online_reader
        return self._features

    # -- lifecycle -------------------------------------------------------------------------------------------
    def _inference_log(self) -> Any:
        cfg = CONFIG.get("inference_log") or {}
        if not cfg.get("enabled", True) or os.environ.get("MLOPS_INFERENCE_LOG", "").lower() in ("off", "0", "false"):
            return None
        from airflow_mlops.core.inference_log import InferenceLogBuffer, LakePartWriter
        from airflow_mlops.hooks.lake import LakeHook

        writer = LakePartWriter(LakeHook(), zone=cfg.get("zone", "inference_log"))
        return InferenceLogBuffer(writer, int(cfg.get("flush_rows", 500)), float(cfg.get("flush_interval_s", 10)))

    def _load_first(self, version: str) -> None:
        from airflow_mlops.core.serving_model import ModelSlot

        try:
            loaded = self._load(version)
            problems = self._check(loaded)
            if problems:
                raise ValueError("; ".join(problems))
        except Exception as err:  # noqa: BLE001 - not ready, and /info says why (infra validation reads it)
            self.load_error = f"cannot serve {self.name} v{version}: {type(err).__name__}: {err}"
            log.exception("%s", self.load_error)
            return
        self.slot = ModelSlot(loaded)
        self.load_error = None
        log.info("serving %s v%s (threshold %.3f)", loaded.name, loaded.version, loaded.threshold)

    def _load(self, version: str) -> Any:
        from airflow_mlops.core.serving_model import load_version

        return load_version(self.client, self.name, str(version), self.threshold)

    def _check(self, loaded: Any) -> list[str]:
        """Answer the canned requests with ``loaded``: every answer must be a probability."""
        from airflow_mlops.core.serving_model import check_answers, lookup_features

        rows, _ = lookup_features(self.features, self.spec, self.canned)
        try:
            answers = loaded.score(rows)
        except Exception as err:  # noqa: BLE001 - a model that cannot score is a failed check
            return [f"scoring the canned requests failed: {type(err).__name__}: {err}"]
        return check_answers(answers, len(self.canned))

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                version = self.mlflow.alias_version(self.name, self.alias)
                current = self.slot.current.version if self.slot else None
                if version and version != current:
                    self.reload_to(version)
            except Exception:  # noqa: BLE001 - the watch retries; the served model is untouched
                log.exception("alias watch failed")

    @bentoml.on_shutdown
    def flush_log(self) -> None:
        self._stop.set()
        if self.log_buffer is not None:
            left = self.log_buffer.close()
            log.info("inference log closed: %s, %d rows left", self.log_buffer.stats(), left)

    def __is_ready__(self) -> bool:
        return self.slot is not None

    # -- admin -----------------------------------------------------------------------------------------------
    def reload_to(self, version: str | None) -> ReloadResult:
        from airflow_mlops.core.serving_model import ModelSlot

        target = version or self.mlflow.alias_version(self.name, self.alias)
        if target is None:
            raise SwapRejected(f"{self.name}@{self.alias} does not exist")
        if self.slot is None:
            self._load_first(str(target))
            if self.slot is None:
                raise SwapRejected(self.load_error or "load failed")
            return ReloadResult(
                swapped=True, from_version="", to_version=self.slot.current.version, checks=[], load_seconds=0.0
            )
        slot: ModelSlot = self.slot
        if slot.current.version == str(target):
            return ReloadResult(
                swapped=False,
                from_version=str(target),
                to_version=str(target),
                checks=["already serving"],
                load_seconds=0.0,
            )
        try:
            old, new, problems, seconds = slot.swap(lambda: self._load(str(target)), self._check)
        except Exception as err:  # noqa: BLE001 - the old model keeps serving
            raise SwapRejected(f"cannot load {self.name} v{target}: {type(err).__name__}: {err}") from err
        if problems:
            raise SwapRejected(
                f"{self.name} v{target} failed its checks, still serving v{old.version}: {'; '.join(problems)}"
            )
        log.info("swapped %s v%s -> v%s (loaded and checked in %.2f s)", self.name, old.version, new.version, seconds)
        return ReloadResult(
            swapped=True,
            from_version=old.version,
            to_version=new.version,
            checks=["canned requests answered"],
            load_seconds=seconds,
        )

    @staticmethod
    def _require_token(ctx: bentoml.Context) -> None:
        expected = _token()
        given = ctx.request.headers.get("x-mlops-token", "")
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            raise Forbidden("a valid X-MLOPS-Token header is required")

    @bentoml.api(route="/admin/reload")
    def reload(self, request: ReloadRequest, /, ctx: bentoml.Context) -> ReloadResult:
        self._require_token(ctx)
        if self.pinned:
            raise SwapRejected(f"this server is pinned to v{self.pinned}")
        return self.reload_to(request.version)

    @bentoml.api(route="/admin/flush_log")
    def commit_log(self, ctx: bentoml.Context) -> dict:
        """Commit the buffered predictions to the inference log now (not at the next interval); its stats."""
        self._require_token(ctx)
        if self.log_buffer is None:
            return {"enabled": False}
        self.log_buffer.flush()
        return self.log_buffer.stats()

    @bentoml.api(route="/info")
    def info(self) -> dict:
        current = self.slot.current if self.slot else None
        state = {
            "ready": current is not None,
            "load_error": self.load_error,
            "inference_log": self.log_buffer.stats() if self.log_buffer else {"enabled": False},
        }
        if current is None:
            return {**state, "model_name": self.name, "alias": self.alias, "pinned": bool(self.pinned)}
        info = ModelInfo(
            model_name=current.name,
            model_version=current.version,
            alias=None if self.pinned else self.alias,
            pinned=bool(self.pinned),
            threshold=current.threshold,
            loaded_at=current.loaded_at,
            features=current.config.features,
            swaps=self.slot.swaps,
            inference_log=state["inference_log"],
        )
        return {**state, **info.model_dump()}

    # -- predictions -----------------------------------------------------------------------------------------
    def _answer(self, flights: list[FlightRequest], batch_id: str | None) -> list[Prediction]:
        from airflow_mlops.core.serving_model import lookup_features

        started = time.perf_counter()
        if self.slot is None:
            raise ServiceUnavailable(self.load_error or "no model loaded yet")
        model = self.slot.current  # read once: a swap during this request does not change its model
        rows, defaulted = lookup_features(self.features, self.spec, flights)
        probabilities = model.score(rows)
        ids = (
            [uuid.uuid4().hex for _ in flights]
            if batch_id is None
            else [f"{batch_id}-{i}" for i in range(len(flights))]
        )
        answers = [
            Prediction(
                request_id=rid,
                flight_id=row["flight_id"],
                probability_late=p,
                late=p >= model.threshold,
                threshold=model.threshold,
                model_name=model.name,
                model_version=model.version,
                defaults_used=unknown,
            )
            for rid, row, p, unknown in zip(ids, rows, probabilities, defaulted, strict=True)
        ]
        if self.log_buffer is not None:
            latency_ms = (time.perf_counter() - started) * 1000.0
            self.log_buffer.append(_log_rows(flights, rows, answers, model.config.features, batch_id, latency_ms))
        return answers

    @bentoml.api(route="/predict")
    def predict(self, flight: FlightRequest, /) -> Prediction:
        return self._answer([flight], None)[0]

    @bentoml.api(route="/predict_batch")
    def predict_batch(self, flights: BatchRequest, /) -> BatchPrediction:
        batch_id = uuid.uuid4().hex
        answers = self._answer(flights.flights, batch_id)
        return BatchPrediction(
            request_id=batch_id,
            model_name=answers[0].model_name,
            model_version=answers[0].model_version,
            predictions=answers,
        )


def _log_rows(
    flights: list[FlightRequest],
    rows: list[dict[str, Any]],
    answers: list[Prediction],
    features: list[str],
    batch_id: str | None,
    latency_ms: float,
) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    out = []
    for flight, row, answer in zip(flights, rows, answers, strict=True):
        record = {
            "request_id": answer.request_id,
            "batch_id": batch_id or answer.request_id,
            "timestamp": now,
            "input_carrier": flight.carrier,
            "input_flight": flight.flight,
            "input_origin": flight.origin,
            "input_dest": flight.dest,
            "input_scheduled_departure": flight.departure_utc(),
            "input_tailnum": flight.tailnum,
            "flight_id": answer.flight_id,
        }
        record.update({name: row.get(name) for name in features})
        record.update(
            {
                "defaults_used": ",".join(answer.defaults_used),
                "probability_late": answer.probability_late,
                "late": answer.late,
                "threshold": answer.threshold,
                "model_name": answer.model_name,
                "model_version": answer.model_version,
                "latency_ms": latency_ms,
            }
        )
        out.append(record)
    return out


def _canned() -> dict[str, Any]:
    path = S.include_file((CONFIG.get("swap") or {}).get("canned_requests_file", "serving/canned_requests.json"))
    return json.loads(path.read_text())


def _training_model_name() -> str:
    from airflow_mlops.core.training import load_config

    return load_config(
        os.environ.get("MLOPS_TRAINING_CONFIG") or S.include_file("config/training.yaml")
    ).registered_model_name
