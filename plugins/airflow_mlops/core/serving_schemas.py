"""What the prediction service of a use case answers, and its settings. No Airflow, no BentoML.

The request itself is generated from the use case's ``serving.request`` (``core.request_schema``); this module holds
what is the same for every use case: the answers (``Prediction``, ``BatchPrediction``), ``/info``, the admin
models (``ReloadRequest``, ``ReloadResult``) and ``ServingSettings``, the ``serving`` section of ``mlops.yaml``
with its defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from airflow_mlops.usecase.config import UseCase

#: ``serving`` keys of ``mlops.yaml`` (anything else is an error naming it).
SECTIONS = (
    "port",
    "model",
    "threshold",
    "batch_max_size",
    "batching",
    "batch_scoring",
    "request",
    "server",
    "inference_log",
    "swap",
    "infra_validation",
)
DEFAULT_CANNED = "serving/canned_requests.json"


@dataclass(frozen=True)
class ServingSettings:
    """The ``serving`` section of a use case, with its defaults (see ``docs/usecase.md``). Where the service listens
    is ``airflow_mlops.usecase.config.serving_url``.

    :param request: the ``serving.request`` mapping (the generated request model's spec).
    :param threshold: a classification's decision threshold; None: the one the model was evaluated at.
    :param adaptive_max_batch_size: ``serving.batching.max_batch_size``: the most requests BentoML's adaptive
        batching merges into one call of ``/predict``'s scoring.
    :param adaptive_max_latency_ms: ``serving.batching.max_latency_ms``: BentoML's ``max_latency_ms``, the
        longest a request may wait for its batch and its scoring (estimated) before it is shed with a 503. The
        batching window itself adapts to the traffic; this bound is high so a swap's load never sheds requests.
    :param batch_scoring_cron: ``serving.batch_scoring.schedule_cron``: the batch-scoring DAG's clock (cron, UTC)
        besides the ``features`` Asset; a scheduled run scores the newest period with features. None: Asset only.
    :param access_log: ``serving.server.access_log``: BentoML's line per request (off: every answered request is in
        the inference log and counted in ``/metrics``; the line cost ~15% of the throughput at 32 clients).
    :param canned_file: the swap check's canned requests (``serving.swap.canned_requests_file``), absolute.
    :param infra_canned_file: infrastructure validation's (``serving.infra_validation.canned_requests_file``;
        default the swap check's).
    """

    usecase: str
    folder: Path
    task: str
    model_name: str
    request: dict[str, Any]
    alias: str = "champion"
    watch_interval_s: float = 0.0
    threshold: float | None = None
    batch_max_size: int = 500
    adaptive_max_batch_size: int = 64
    adaptive_max_latency_ms: int = 10000
    workers: int = 1
    threads: int = 2
    timeout_s: int = 30
    access_log: bool = False
    batch_scoring_cron: str | None = None
    readiness_timeout_s: float = 120.0
    log_enabled: bool = True
    log_zone: str = "inference_log"
    log_flush_rows: int = 500
    log_flush_interval_s: float = 10.0
    canned_file: Path = field(default_factory=lambda: Path(DEFAULT_CANNED))
    infra_canned_file: Path = field(default_factory=lambda: Path(DEFAULT_CANNED))
    infra_readiness_timeout_s: float = 240.0
    latency_budget_ms: float = 500.0
    latency_requests: int = 50

    @classmethod
    def from_usecase(cls, usecase: UseCase) -> ServingSettings:
        """The settings of ``usecase``.

        :param usecase: a loaded use case (``airflow_mlops.usecase.config.load``).
        :raises ValueError: a bad ``serving`` section, the message naming the file and the key.
        """
        where = f"{usecase.config_file}: serving"
        raw = usecase.serving or {}
        unknown = sorted(set(raw) - set(SECTIONS))
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown key (expected one of {', '.join(SECTIONS)})")
        request = raw.get("request")
        if not isinstance(request, dict) or not request.get("fields"):
            raise ValueError(f"{where}.request: the request schema (event_time, fields) is required to serve")
        model = _section(raw, "model", where)
        server = _section(raw, "server", where)
        log = _section(raw, "inference_log", where)
        swap = _section(raw, "swap", where)
        infra = _section(raw, "infra_validation", where)
        batching = _section(raw, "batching", where)
        batch_scoring = _section(raw, "batch_scoring", where)
        cron = batch_scoring.get("schedule_cron")
        if cron is not None and (not isinstance(cron, str) or len(cron.split()) != 5):
            raise ValueError(f"{where}.batch_scoring.schedule_cron: {cron!r} is not a five-field cron expression")
        threshold = raw.get("threshold")
        canned = usecase.folder / str(swap.get("canned_requests_file") or DEFAULT_CANNED)
        try:
            settings = cls(
                usecase=usecase.name,
                folder=usecase.folder,
                task=usecase.task,
                model_name=str(model.get("name") or usecase.registered_model_name),
                request=dict(request),
                alias=str(model.get("alias") or "champion"),
                watch_interval_s=float(model.get("watch_interval_s") or 0),
                threshold=None if threshold is None else float(threshold),
                batch_max_size=int(raw.get("batch_max_size", 500)),
                adaptive_max_batch_size=int(batching.get("max_batch_size", 64)),
                adaptive_max_latency_ms=int(batching.get("max_latency_ms", 10000)),
                workers=int(server.get("workers", 1)),
                threads=int(server.get("threads", 2)),
                timeout_s=int(server.get("timeout_s", 30)),
                access_log=bool(server.get("access_log", False)),
                batch_scoring_cron=cron,
                readiness_timeout_s=float(server.get("readiness_timeout_s", 120)),
                log_enabled=bool(log.get("enabled", True)),
                log_zone=str(log.get("zone") or "inference_log"),
                log_flush_rows=int(log.get("flush_rows", 500)),
                log_flush_interval_s=float(log.get("flush_interval_s", 10)),
                canned_file=canned,
                infra_canned_file=(
                    usecase.folder / str(infra["canned_requests_file"]) if infra.get("canned_requests_file") else canned
                ),
                infra_readiness_timeout_s=float(infra.get("readiness_timeout_s", 240)),
                latency_budget_ms=float(infra.get("latency_budget_ms", 500)),
                latency_requests=int(infra.get("latency_requests", 50)),
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from err
        if settings.threshold is not None and not 0.0 < settings.threshold < 1.0:
            raise ValueError(f"{where}.threshold: {settings.threshold} must be in (0, 1) (or null: the model's)")
        if settings.batch_max_size < 1:
            raise ValueError(f"{where}.batch_max_size: must be >= 1")
        if settings.adaptive_max_batch_size < 1 or settings.adaptive_max_latency_ms < 1:
            raise ValueError(f"{where}.batching: max_batch_size and max_latency_ms must be >= 1")
        return settings

    @property
    def service_name(self) -> str:
        """The BentoML service name (lower-case letters, digits, ``_``; starts and ends alphanumeric)."""
        return f"mlops_{self.usecase}".rstrip("_")

    def canned(self, infra: bool = False) -> dict[str, Any]:
        """The canned requests: ``{"single": [request, ...], "batch": {"rows": [...]}, "bad": [...]}`` (only
        ``single`` is required; infrastructure validation also uses the others).

        :param infra: infrastructure validation's file rather than the swap check's.
        :raises ValueError: the file is missing, not JSON, or has no ``single`` list (the message names it).
        """
        path = self.infra_canned_file if infra else self.canned_file
        key = "infra_validation" if infra else "swap"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"serving.{key}.canned_requests_file: {path} does not exist") from None
        except (OSError, ValueError) as err:
            raise ValueError(f"serving.{key}.canned_requests_file: cannot read {path} as JSON: {err}") from None
        single = data.get("single") if isinstance(data, dict) else None
        if not isinstance(single, list) or not single:
            raise ValueError(f'serving.{key}.canned_requests_file: {path} must hold {{"single": [request, ...]}}')
        return data


def _section(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}.{key}: must be a mapping")
    return value


class Prediction(BaseModel):
    """The answer for one request."""

    request_id: str
    id: Annotated[str | int | None, Field(description="the use case's id of the request (entity_keys)")]
    prediction: Annotated[
        float, Field(description="classification: the probability of the positive class; regression: the value")
    ]
    label: Annotated[bool | None, Field(description="classification: prediction >= threshold; regression: null")] = None
    threshold: float | None = None
    model_name: str
    model_version: str
    defaults_used: list[str] = Field(
        default_factory=list,
        description="feature views that did not know the request's entity: their features fell back to defaults",
    )


class BatchPrediction(BaseModel):
    request_id: str
    model_name: str
    model_version: str
    predictions: list[Prediction]


class ModelInfo(BaseModel):
    """What the service is serving (``/info``)."""

    usecase: str
    task: str
    model_name: str
    model_version: str
    alias: str | None
    pinned: bool
    threshold: float | None
    loaded_at: str
    features: list[str]
    swaps: int
    inference_log: dict[str, Any]


class ReloadRequest(BaseModel):
    """Admin (header ``X-MLOPS-Token``): load a version (or the alias's current one), check it, then swap."""

    model_config = ConfigDict(extra="forbid")

    version: Annotated[str | None, Field(pattern=r"^[0-9]+$")] = None


class ReloadResult(BaseModel):
    swapped: bool
    from_version: str
    to_version: str
    checks: list[str]
    load_seconds: float
