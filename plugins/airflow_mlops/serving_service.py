"""The prediction service of a use case (BentoML 1.4): the registry's champion, its requests enriched with the
use case's Feast online features. One service per use case, named by it (``MLOPS_USECASE``: its folder)::

    MLOPS_USECASE=examples/<name> bentoml serve airflow_mlops.serving_service:MlopsService --port 3000

``POST /predict`` one request (the model generated from ``serving.request`` of ``mlops.yaml``) → ``request_id``,
``id`` (the use case's id column, from its ``entity_keys``), ``prediction`` (a classification: the probability
of the positive class; a regression: the value), ``label`` (a classification: ``prediction >= threshold``; a
regression: null), ``threshold``, ``model_name``, ``model_version`` and ``defaults_used`` (the feature views
that did not know the request's entity). ``POST /predict_batch`` ``{"rows": [...]}``; ``POST /info`` what is
served; ``POST /admin/reload`` (header ``X-MLOPS-Token``) loads a version (default: the alias's current one),
answers the canned requests with it, and only then swaps it in; ``POST /admin/flush_log`` commits the inference
log now. ``/readyz``, ``/livez`` and ``/metrics`` are BentoML's. Bad input is a 400 naming the field.

Configuration: the use case's ``serving`` section (``ServingSettings``) and the environment —
``MLOPS_USECASE`` (required), ``MLOPS_SERVING_LAKE_ROOT`` (the use case's lake root, where the inference log
goes; default ``<MLOPS_LAKE>/<name>``), ``MLOPS_SERVING_MODEL_NAME`` / ``MLOPS_SERVING_ALIAS`` /
``MLOPS_SERVING_MODEL_VERSION`` (a pinned version never follows the alias: infrastructure validation),
``MLOPS_SERVING_TOKEN`` (or the file ``MLOPS_SERVING_TOKEN_FILE``; none: no admin API), ``MLOPS_INFERENCE_LOG=off``
(no inference log), ``MLOPS_INFERENCE_SPOOL`` (the local folder where answered rows wait until committed, so a killed
server loses none: the next one commits them; default ``<MLOPS_HOME>/spool/<name>/<hash of the log's location>``),
``MLOPS_SERVING_WATCH_INTERVAL_S`` (overrides ``serving.model.watch_interval_s``: every that many
seconds the alias is looked up and a new version swapped in, so a server run apart from Airflow — the compose
stack's — serves the first champion and the next ones on its own; 0: only ``/admin/reload`` swaps), MLflow through
``MlflowHook``'s environment rules, Feast through ``FeastHook``'s.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import BentoMLException, ServiceUnavailable
from bentoml.validators import ContentType

from airflow_mlops.core.request_schema import batch_model, request_list, request_model
from airflow_mlops.core.serving_schemas import (
    BatchPrediction,
    ModelInfo,
    Prediction,
    ReloadRequest,
    ReloadResult,
    ServingSettings,
)
from airflow_mlops.usecase import config as usecase_config

log = logging.getLogger("airflow_mlops.serving")


def _usecase() -> usecase_config.UseCase:
    folder = os.environ.get("MLOPS_USECASE")
    if not folder:
        raise RuntimeError("MLOPS_USECASE is not set: it names the use-case folder (holding mlops.yaml) to serve")
    return usecase_config.load(folder)


USECASE = _usecase()
SETTINGS = ServingSettings.from_usecase(USECASE)
#: The generated request models, bound to module-level names: BentoML resolves the APIs' string annotations here.
Request = request_model(SETTINGS.request, base_dir=USECASE.folder)
Requests = request_list(Request, SETTINGS.batch_max_size)
RequestBatch = batch_model(Request, SETTINGS.batch_max_size)
# /predict's answer is a list (each call gets its own part of the batch's); its content type stated, BentoML does not
# derive it from the list's JSON schema on every response.


class Forbidden(BentoMLException):
    error_code = HTTPStatus.FORBIDDEN


class SwapRejected(BentoMLException):
    error_code = HTTPStatus.CONFLICT


def _settle_heap() -> None:
    """Collect, then freeze what is alive (the model, the feature store, the libraries) out of the garbage collector's
    reach (``gc.freeze``): its full collections then scan only what requests allocate. Measured at 32 clients on the
    reference example: p99 350 ms -> 90-105 ms (the full collections of a heap this size were the tail). After a swap the
    heap is unfrozen first, so the old model is freed."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _token() -> str | None:
    token = os.environ.get("MLOPS_SERVING_TOKEN")
    path = os.environ.get("MLOPS_SERVING_TOKEN_FILE")
    if not token and path and Path(path).is_file():
        token = Path(path).read_text().strip()
    return token or None


def _watch_interval() -> float:
    """Seconds between lookups of the alias: ``MLOPS_SERVING_WATCH_INTERVAL_S``, else ``serving.model.watch_interval_s``."""
    raw = os.environ.get("MLOPS_SERVING_WATCH_INTERVAL_S", "").strip()
    if not raw:
        return SETTINGS.watch_interval_s
    try:
        value = float(raw)
    except ValueError:
        raise RuntimeError(f"MLOPS_SERVING_WATCH_INTERVAL_S={raw!r} is not a number of seconds (0: no watch)") from None
    if value < 0:
        raise RuntimeError(f"MLOPS_SERVING_WATCH_INTERVAL_S={raw!r} must be >= 0 (0: no watch)")
    return value


@bentoml.service(
    name=SETTINGS.service_name,
    workers=SETTINGS.workers,
    threads=SETTINGS.threads,
    traffic={"timeout": SETTINGS.timeout_s},
    # One line per request is off by default: every answered request is in the inference log, /metrics counts them.
    logging={"access": {"enabled": SETTINGS.access_log}},
)
class MlopsService:
    def __init__(self) -> None:
        from threadpoolctl import threadpool_limits

        from airflow_mlops.core.features import FeatureSpec
        from airflow_mlops.hooks.mlflow_registry import MlflowHook
        from airflow_mlops.usecase import FeatureContext, load_function

        # One OpenMP thread per scoring call: requests run in parallel threads already, and on a small shared CPU
        # OpenMP's spinning threads multiplied single-row latency.
        threadpool_limits(1)

        self.usecase = USECASE
        self.settings = SETTINGS
        self.alias = os.environ.get("MLOPS_SERVING_ALIAS") or SETTINGS.alias
        self.pinned = os.environ.get("MLOPS_SERVING_MODEL_VERSION") or None
        self.name = os.environ.get("MLOPS_SERVING_MODEL_NAME") or SETTINGS.model_name
        self.lake_root = os.environ.get("MLOPS_SERVING_LAKE_ROOT") or usecase_config.lake_url(USECASE)
        self.mlflow = MlflowHook()
        self.client = self.mlflow.client
        self.spec = FeatureSpec.from_usecase(USECASE)
        self.request_spec = Request.__request_spec__
        self.entity_keys = load_function(USECASE.module_file, "entity_keys", arity=2)
        self.ctx = FeatureContext(period="", params=self.spec.params, config=USECASE)
        self._features: Any = None  # the online reader, opened on first use (see ``features``)
        self.canned = [Request.model_validate(r) for r in SETTINGS.canned()["single"]]
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
        watch = _watch_interval()
        if watch > 0 and not self.pinned:
            threading.Thread(target=self._watch, args=(watch,), name="alias-watch", daemon=True).start()

    @property
    def features(self) -> Any:
        """The Feast online reader, opened when a model is first loaded: a server started before the first
        ``feast apply`` (a fresh home, no champion yet) comes up and waits instead of failing."""
        if self._features is None:
            from airflow_mlops.hooks.feast_store import FeastHook

            with self._lock:
                if self._features is None:
                    self._features = FeastHook(USECASE.folder, lake_root=self.lake_root).online_reader
        return self._features

    # -- lifecycle -------------------------------------------------------------------------------------------
    def _inference_log(self) -> Any:
        if not SETTINGS.log_enabled or os.environ.get("MLOPS_INFERENCE_LOG", "").lower() in ("off", "0", "false"):
            return None
        import hashlib

        from airflow_mlops import settings
        from airflow_mlops.core.inference_log import InferenceLogBuffer, InferenceLogSpool, LakePartWriter
        from airflow_mlops.hooks.lake import LakeHook

        writer = LakePartWriter(LakeHook(root_url=self.lake_root), zone=SETTINGS.log_zone)
        # Answered rows wait on local disk until committed: a killed server's are committed by the next one, into
        # the same log (one spool folder per log: use case, lake root and zone).
        target = f"{self.lake_root.rstrip('/')}/{SETTINGS.log_zone}"
        spool = os.environ.get("MLOPS_INFERENCE_SPOOL") or (
            settings.mlops_home() / "spool" / USECASE.name / hashlib.sha256(target.encode()).hexdigest()[:16]
        )
        buffer = InferenceLogBuffer(
            writer, SETTINGS.log_flush_rows, SETTINGS.log_flush_interval_s, spool=InferenceLogSpool(spool)
        )
        if buffer.recovered_rows:
            log.warning(
                "inference log: %d answered rows of a killed server committed from %s", buffer.recovered_rows, spool
            )
        return buffer

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
        _settle_heap()
        log.info(
            "serving %s v%s (%s, threshold %s; %s)",
            loaded.name,
            loaded.version,
            loaded.task,
            loaded.threshold,
            "lean scoring" if loaded.scorer.lean else f"scored by the pipeline: {loaded.scorer.reason}",
        )

    def _load(self, version: str) -> Any:
        from airflow_mlops.core.serving_model import load_version

        return load_version(self.client, self.name, str(version), SETTINGS.threshold)

    def _enrich(self, requests: list[Any]) -> Any:
        from airflow_mlops.core.serving_model import enrich_requests

        return enrich_requests(requests, self.request_spec, self.entity_keys, self.ctx, self.features, self.spec)

    def _check(self, loaded: Any) -> list[str]:
        """Answer the canned requests with ``loaded``: one valid answer each (a probability, or a finite value)."""
        from airflow_mlops.core.serving_model import check_answers

        enriched = self._enrich(self.canned)
        try:
            answers = loaded.score(enriched.rows)
        except Exception as err:  # noqa: BLE001 - a model that cannot score is a failed check
            return [f"scoring the canned requests failed: {type(err).__name__}: {err}"]
        return check_answers(answers, len(self.canned), loaded.task)

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
        from_version = old.version
        del old  # the old model is freed by the collection below, not frozen with the heap
        _settle_heap()
        log.info("swapped %s v%s -> v%s (loaded and checked in %.2f s)", self.name, from_version, new.version, seconds)
        return ReloadResult(
            swapped=True,
            from_version=from_version,
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
            return {
                **state,
                "usecase": USECASE.name,
                "task": USECASE.task,
                "model_name": self.name,
                "alias": self.alias,
                "pinned": bool(self.pinned),
            }
        info = ModelInfo(
            usecase=USECASE.name,
            task=current.task,
            model_name=current.name,
            model_version=current.version,
            alias=None if self.pinned else self.alias,
            pinned=bool(self.pinned),
            threshold=current.threshold,
            loaded_at=current.loaded_at,
            features=list(current.config.features),
            swaps=self.slot.swaps,
            inference_log=state["inference_log"],
        )
        return {**state, **info.model_dump()}

    # -- predictions -----------------------------------------------------------------------------------------
    def _answer(self, requests: list[Any], batch_id: str | None) -> list[Prediction]:
        started = time.perf_counter()
        if self.slot is None:
            raise ServiceUnavailable(self.load_error or "no model loaded yet")
        model = self.slot.current  # read once: a swap during this request does not change its model
        enriched = self._enrich(requests)
        values = model.score(enriched.rows)
        ids = (
            [uuid.uuid4().hex for _ in requests]
            if batch_id is None
            else [f"{batch_id}-{i}" for i in range(len(requests))]
        )
        answers = [
            Prediction(
                request_id=rid,
                id=ident,
                prediction=value,
                label=model.decide(value),
                threshold=model.threshold,
                model_name=model.name,
                model_version=model.version,
                defaults_used=unknown,
            )
            for rid, ident, value, unknown in zip(ids, enriched.ids, values, enriched.defaulted, strict=True)
        ]
        if self.log_buffer is not None:
            from airflow_mlops.core.inference_log import log_records

            latency_ms = (time.perf_counter() - started) * 1000.0
            self.log_buffer.append(
                log_records(
                    enriched.frame,
                    enriched.ids,
                    enriched.rows,
                    answers,
                    id_column=self.spec.id_column,
                    features=list(model.config.features),
                    batch_id=batch_id,
                    latency_ms=latency_ms,
                )
            )
        return answers

    @bentoml.api(
        route="/predict",
        batchable=True,
        max_batch_size=SETTINGS.adaptive_max_batch_size,
        max_latency_ms=SETTINGS.adaptive_max_latency_ms,
    )
    def predict(self, rows: Requests) -> Annotated[list[Prediction], ContentType("application/json")]:
        """``{"rows": [request, ...]}``, each row its own request. Adaptive batching: BentoML merges the rows of
        concurrent calls (up to ``serving.batching.max_batch_size``); they are enriched, scored and logged together."""
        return self._answer(rows, None)

    @bentoml.api(route="/predict_batch")
    def predict_batch(self, batch: RequestBatch, /) -> BatchPrediction:
        batch_id = uuid.uuid4().hex
        answers = self._answer(batch.rows, batch_id)
        return BatchPrediction(
            request_id=batch_id,
            model_name=answers[0].model_name,
            model_version=answers[0].model_version,
            predictions=answers,
        )
