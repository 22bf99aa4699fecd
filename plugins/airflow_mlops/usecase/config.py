"""The typed config of a use case (``mlops.yaml``), loaded once per process and checked with errors that name the
file and the key. Light: PyYAML only (no pandas, no ML library), so DAG files may call it while parsing."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FILE = "mlops.yaml"
NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
PERIODS = ("month", "day")
TASKS = ("classification", "regression")
FIELD_TYPES = ("string", "int64", "float64")
#: The top-level sections of ``mlops.yaml``; anything else is an error.
SECTIONS = (
    "name",
    "description",
    "module",
    "source",
    "label",
    "features",
    "model",
    "gate",
    "approval",
    "monitoring",
    "serving",
    "notifications",
)
#: The events a use case may be notified of (``notifications.events``; ``airflow_mlops.notifications``).
NOTIFICATION_EVENTS = (
    "quarantine",
    "gate_rejected",
    "retrain_requested",
    "approval_waiting",
    "promoted",
    "rolled_back",
    "task_failed",
)


class UseCaseConfigError(ValueError):
    """A use case's config is invalid; the message names the file and the key (``mlops.yaml: features.views.x``)."""


@dataclass(frozen=True)
class SourceConfig:
    """What one batch is and when batches come (``source``)."""

    files: tuple[str, ...]
    primary: str
    period: str
    schedule_first: str | None
    schedule_last: str | None
    event_time_file: str
    event_time_column: str
    event_time_format: str | None
    suites: dict[str, str]  # batch file name -> absolute suite path

    @property
    def stems(self) -> tuple[str, ...]:
        return tuple(stem(f) for f in self.files)


@dataclass(frozen=True)
class ViewConfig:
    """One Feast feature view, declared (``features.views.<name>``)."""

    name: str
    key: str
    timestamp: str
    ttl_hours: float
    fields: dict[str, str]  # name -> string | int64 | float64
    defaults: dict[str, Any] = field(default_factory=dict)
    #: Every label row must find a row of this view (a missing one is an error, not a default).
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class UseCase:
    """A use case: its folder, its typed sections, and the raw mapping (hashed into lineage)."""

    name: str
    folder: Path
    description: str
    module_file: Path
    source: SourceConfig
    label: str
    forbidden: tuple[str, ...]
    id_column: str
    period_column: str
    views: tuple[ViewConfig, ...]
    features: dict[str, Any]
    model: dict[str, Any]
    gate: dict[str, Any]
    monitoring: dict[str, Any]
    serving: dict[str, Any]
    raw: dict[str, Any] = field(compare=False, repr=False, default_factory=dict)
    #: The ``approval`` section as written (None: ``auto``); typed by :meth:`approval_policy`.
    approval: Any = None
    #: ``notifications``, checked: ``email`` (conn_id, to, from_email), ``webhook`` (conn_id), ``events``; empty: none.
    notifications: dict[str, Any] = field(default_factory=dict)

    @property
    def config_file(self) -> Path:
        return self.folder / CONFIG_FILE

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()

    @property
    def task(self) -> str:
        return str(self.model.get("task") or "classification")

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple((self.model.get("features") or {}).get("categorical") or ())

    @property
    def numeric(self) -> tuple[str, ...]:
        return tuple((self.model.get("features") or {}).get("numeric") or ())

    @property
    def model_features(self) -> tuple[str, ...]:
        return (*self.categorical, *self.numeric)

    @property
    def registered_model_name(self) -> str:
        return str(self.model.get("registered_model_name") or self.name)

    @property
    def experiment_name(self) -> str:
        return str(self.model.get("experiment_name") or f"mlops-{self.name}")

    def view(self, name: str) -> ViewConfig:
        for view in self.views:
            if view.name == name:
                return view
        raise KeyError(name)

    def view_fields(self) -> dict[str, ViewConfig]:
        """Every field served by a view → that view."""
        return {name: view for view in self.views for name in view.fields}

    def dag_id(self, stage: str) -> str:
        """The id of one of the use case's DAGs: ``<name>_<stage>`` (ingest_validate, features, ...)."""
        return f"{self.name}_{stage}"

    def training_config(self) -> Any:
        """The ``model`` section as ``core.training.TrainingConfig`` (ValueError names what is wrong)."""
        from airflow_mlops.core.training import TrainingConfig

        try:
            return TrainingConfig.from_dict(self.training_config_dict())
        except ValueError as err:
            raise UseCaseConfigError(f"{self.config_file}: model: {err}") from err

    def gate_policy(self) -> Any:
        """The ``gate`` section as ``core.gate.GatePolicy``; None when the section is empty (the gate then rejects)."""
        from airflow_mlops.core.gate import GatePolicy

        if not self.gate:
            return None
        try:
            return GatePolicy.from_dict(self.gate)
        except ValueError as err:
            raise UseCaseConfigError(f"{self.config_file}: gate: {err}") from err

    def approval_policy(self) -> Any:
        """The ``approval`` section as ``core.approval.ApprovalPolicy`` (default ``auto``: no human)."""
        from airflow_mlops.core.approval import ApprovalPolicy

        try:
            return ApprovalPolicy.from_config(self.approval)
        except ValueError as err:
            raise UseCaseConfigError(f"{self.config_file}: approval: {err}") from err

    def training_config_dict(self) -> dict[str, Any]:
        """The ``model`` section as the mapping ``core.training.TrainingConfig.from_dict`` reads."""
        model = self.model
        evaluation = {
            "threshold": model.get("threshold", 0.5),
            "slices": list(model.get("slices") or []),
        }
        if "mlflow_slice_metrics" in model:
            evaluation["mlflow_slice_metrics"] = model["mlflow_slice_metrics"]
        estimator = model.get("estimator") or "hist_gradient_boosting"
        out: dict[str, Any] = {
            "experiment_name": self.experiment_name,
            "registered_model_name": self.registered_model_name,
            "id_column": self.id_column,
            "timestamp_column": "event_timestamp",
            "label": self.label,
            "month_column": self.period_column,
            "features": {"categorical": list(self.categorical), "numeric": list(self.numeric)},
            "model": {
                "type": estimator,
                "task": self.task,
                "seed": model.get("seed", 0),
                "threads": model.get("threads", 1),
                "params": dict(model.get("params") or {}),
                "serialization_format": model.get("serialization_format", "cloudpickle"),
            },
            "holdout": {"months": int(model.get("holdout_periods", 1))},
            "evaluation": evaluation,
        }
        if ":" in str(estimator):
            out["model"]["module_file"] = str(self.module_file)
        return out


def stem(file_name: str) -> str:
    """``sales.csv`` → ``sales``: the key a file's frame has in a :class:`FeatureContext`."""
    return file_name.rsplit(".", 1)[0]


# -- loading -----------------------------------------------------------------------------------------------
_LOCK = threading.Lock()
_CACHE: dict[tuple[str, int], UseCase] = {}


def load(folder: str | Path) -> UseCase:
    """The use case in ``folder`` (its ``mlops.yaml``), cached until the file changes.

    :raises UseCaseConfigError: the file is missing, not YAML, or fails a check (message: ``<file>: <key>: why``).
    """
    path = Path(folder).resolve()
    config_file = path / CONFIG_FILE if path.is_dir() or not path.suffix else path
    if not config_file.is_file():
        raise UseCaseConfigError(f"{config_file}: no such file (a use case folder holds {CONFIG_FILE})")
    key = (str(config_file), config_file.stat().st_mtime_ns)
    with _LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    from airflow_mlops.core.yaml_files import read_mapping

    try:
        raw = read_mapping(config_file, "a mapping (name, source, features, model, ...)")
    except ValueError as err:
        raise UseCaseConfigError(str(err)) from err
    usecase = parse(raw, config_file)
    with _LOCK:
        _CACHE[key] = usecase
    return usecase


def parse(raw: Any, config_file: Path) -> UseCase:
    """Check and type a parsed ``mlops.yaml`` (see :func:`load`)."""
    where = _Where(config_file)
    if not isinstance(raw, dict):
        where.fail("", "must be a mapping of sections (name, source, label, features, model, ...)")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        where.fail(unknown[0], f"unknown section (expected one of {', '.join(SECTIONS)})")
    for required in ("name", "source", "label", "features", "model"):
        if required not in raw:
            where.fail(required, "is required")
    name = str(raw["name"])
    if not NAME.match(name):
        where.fail("name", f"{name!r} must match {NAME.pattern} (it prefixes DAG ids, Assets and the lake)")
    folder = config_file.parent
    module_file = folder / str(raw.get("module") or "usecase.py")
    if not module_file.is_file():
        where.fail("module", f"{module_file.name} does not exist in {folder}")

    source = _source(where.child("source"), _mapping(where, raw, "source"), folder)
    label_section = _mapping(where, raw, "label")
    label = _str(where.child("label"), label_section, "column")
    forbidden = tuple(_list(where.child("label"), label_section, "forbidden", default=[]))
    features = _mapping(where, raw, "features")
    views = _views(where.child("features"), features)
    model = _mapping(where, raw, "model")
    usecase = UseCase(
        name=name,
        folder=folder,
        description=str(raw.get("description") or ""),
        module_file=module_file,
        source=source,
        label=label,
        forbidden=forbidden,
        id_column=_str(where.child("features"), features, "id_column"),
        period_column=str(features.get("period_column") or "period"),
        views=views,
        features=features,
        model=model,
        gate=dict(raw.get("gate") or {}),
        monitoring=dict(raw.get("monitoring") or {}),
        serving=dict(raw.get("serving") or {}),
        raw=raw,
        approval=raw.get("approval"),
        notifications=_notifications(where.child("notifications"), raw.get("notifications")),
    )
    _check_model(where.child("model"), usecase)
    usecase.approval_policy()  # a bad approval section fails here, naming the file and the key
    return usecase


class _Where:
    """Builds error messages ``<file>: <dotted key>: <why>``."""

    def __init__(self, file: Path, prefix: str = "") -> None:
        self.file, self.prefix = file, prefix

    def child(self, key: str) -> _Where:
        return _Where(self.file, f"{self.prefix}.{key}" if self.prefix else key)

    def fail(self, key: str, why: str) -> None:
        dotted = f"{self.prefix}.{key}" if self.prefix and key else (key or self.prefix)
        raise UseCaseConfigError(f"{self.file}: {dotted}: {why}" if dotted else f"{self.file}: {why}")


def _mapping(where: _Where, data: dict, key: str) -> dict:
    value = data.get(key)
    if not isinstance(value, dict):
        where.fail(key, "must be a mapping")
    return value


def _str(where: _Where, data: dict, key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value:
        where.fail(key, "must be a non-empty string")
    return value


def _list(where: _Where, data: dict, key: str, default: list | None = None) -> list:
    value = data.get(key, default)
    if not isinstance(value, list):
        where.fail(key, "must be a list")
    return value


def _source(where: _Where, data: dict, folder: Path) -> SourceConfig:
    allowed = {"files", "primary", "period", "schedule", "event_time", "suites"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        where.fail(unknown[0], f"unknown key (expected {', '.join(sorted(allowed))})")
    files = tuple(str(f) for f in _list(where, data, "files"))
    if not files:
        where.fail("files", "lists no file")
    for name in files:
        if "/" in name or not name.endswith((".csv", ".parquet")):
            where.fail("files", f"{name!r} must be a plain .csv or .parquet file name")
    primary = str(data.get("primary") or files[0])
    if primary not in files:
        where.fail("primary", f"{primary!r} is not one of source.files")
    period = str(data.get("period") or "month")
    if period not in PERIODS:
        where.fail("period", f"{period!r}: expected month or day")
    schedule = data.get("schedule") or {}
    if not isinstance(schedule, dict) or set(schedule) - {"first", "last"}:
        where.fail("schedule", "must be a mapping with first and last (or null for no schedule)")
    first, last = schedule.get("first"), schedule.get("last")
    if schedule:
        from airflow_mlops.core.batches import parse_period, period_kind

        try:
            first, last = parse_period(str(first)), parse_period(str(last))
        except ValueError as err:
            where.fail("schedule", str(err))
        if period_kind(first) != period or period_kind(last) != period:
            where.fail("schedule", f"first and last must be {period}s (the source.period)")
        if last < first:
            where.fail("schedule.last", f"{last} is before schedule.first {first}")
    event = data.get("event_time") or {}
    if not isinstance(event, dict) or "column" not in event:
        where.fail("event_time", "must be a mapping with file and column")
    event_file = str(event.get("file") or primary)
    if event_file not in files:
        where.fail("event_time.file", f"{event_file!r} is not one of source.files")
    suites_raw = data.get("suites") or {}
    if not isinstance(suites_raw, dict):
        where.fail("suites", "must map batch files to suite files in expectations/")
    suites = {}
    for name in files:
        suite = folder / "expectations" / str(suites_raw.get(name) or f"{stem(name)}.json")
        if not suite.is_file():
            where.fail(f"suites.{name}", f"{suite} does not exist")
        suites[name] = str(suite)
    for name in set(suites_raw) - set(files):
        where.fail(f"suites.{name}", "is not one of source.files")
    return SourceConfig(
        files=files,
        primary=primary,
        period=period,
        schedule_first=first,
        schedule_last=last,
        event_time_file=event_file,
        event_time_column=str(event["column"]),
        event_time_format=event.get("format"),
        suites=suites,
    )


def _views(where: _Where, features: dict) -> tuple[ViewConfig, ...]:
    declared = _mapping(where, features, "views")
    if not declared:
        where.fail("views", "declares no feature view")
    views, seen = [], {}
    for name, spec in declared.items():
        at = where.child(f"views.{name}")
        if not NAME.match(str(name)):
            at.fail("", f"view name must match {NAME.pattern}")
        if not isinstance(spec, dict):
            at.fail("", "must be a mapping (key, timestamp, ttl_hours, fields)")
        unknown = sorted(set(spec) - {"key", "timestamp", "ttl_hours", "fields", "defaults", "required", "description"})
        if unknown:
            at.fail(unknown[0], "unknown key")
        fields = spec.get("fields")
        if not isinstance(fields, dict) or not fields:
            at.fail("fields", "must map field names to string | int64 | float64")
        for field_name, dtype in fields.items():
            if dtype not in FIELD_TYPES:
                at.fail(f"fields.{field_name}", f"{dtype!r}: expected one of {', '.join(FIELD_TYPES)}")
            if field_name in seen:
                at.fail(f"fields.{field_name}", f"is already served by view {seen[field_name]}")
            seen[field_name] = name
        defaults = spec.get("defaults") or {}
        for field_name in defaults:
            if field_name not in fields:
                at.fail(f"defaults.{field_name}", "is not one of the view's fields")
        try:
            ttl = float(spec.get("ttl_hours"))
        except (TypeError, ValueError):
            at.fail("ttl_hours", "must be a number of hours")
        if ttl <= 0:
            at.fail("ttl_hours", "must be > 0")
        views.append(
            ViewConfig(
                name=str(name),
                key=_str(at, spec, "key"),
                timestamp=_str(at, spec, "timestamp"),
                ttl_hours=ttl,
                fields={str(k): str(v) for k, v in fields.items()},
                defaults=dict(defaults),
                required=bool(spec.get("required", False)),
                description=str(spec.get("description") or ""),
            )
        )
    return tuple(views)


def _notifications(where: _Where, data: Any) -> dict[str, Any]:
    """The ``notifications`` section checked and completed (``events`` default: every event); absent: ``{}``."""
    if not data:
        return {}
    if not isinstance(data, dict):
        where.fail("", "must be a mapping with email and/or webhook (and events)")
    unknown = sorted(set(data) - {"email", "webhook", "events"})
    if unknown:
        where.fail(unknown[0], "unknown key (expected email, webhook, events)")
    out: dict[str, Any] = {}
    email = data.get("email")
    if email is not None:
        if not isinstance(email, dict) or set(email) - {"conn_id", "to", "from_email"}:
            where.fail("email", "must be a mapping with conn_id (an SMTP connection), to and optionally from_email")
        to = email.get("to")
        to = [to] if isinstance(to, str) else to
        if not isinstance(to, list) or not to or not all(isinstance(a, str) and "@" in a for a in to):
            where.fail("email.to", "must be an address or a list of addresses")
        out["email"] = {
            "conn_id": _str(where.child("email"), email, "conn_id", "smtp_default"),
            "to": list(to),
            "from_email": email.get("from_email"),
        }
    webhook = data.get("webhook")
    if webhook is not None:
        if not isinstance(webhook, dict) or set(webhook) != {"conn_id"}:
            where.fail("webhook", "must be a mapping with conn_id (an HTTP connection holding the webhook's URL)")
        out["webhook"] = {"conn_id": _str(where.child("webhook"), webhook, "conn_id")}
    if not out:
        where.fail("", "names no channel: give email and/or webhook")
    events = data.get("events", list(NOTIFICATION_EVENTS))
    if not isinstance(events, list) or not events:
        where.fail("events", f"must be a list of events among {', '.join(NOTIFICATION_EVENTS)}")
    for event in events:
        if event not in NOTIFICATION_EVENTS:
            where.fail("events", f"{event!r} is not an event (expected one of {', '.join(NOTIFICATION_EVENTS)})")
    out["events"] = list(events)
    return out


def _check_model(where: _Where, usecase: UseCase) -> None:
    model = usecase.model
    task = usecase.task
    if task not in TASKS:
        where.fail("task", f"{task!r}: expected classification or regression")
    features = model.get("features")
    if not isinstance(features, dict) or not (features.get("categorical") or features.get("numeric")):
        where.fail("features", "must list categorical and/or numeric features")
    for kind in ("categorical", "numeric"):
        value = features.get(kind) or []
        if not isinstance(value, list):
            where.fail(f"features.{kind}", "must be a list")
    both = set(usecase.categorical) & set(usecase.numeric)
    if both:
        where.fail("features", f"{sorted(both)[0]} is both categorical and numeric")
    for name in usecase.model_features:
        if name == usecase.label:
            where.fail("features", f"{name} is the label (label.column): it cannot be a feature")
        if name in usecase.forbidden:
            where.fail("features", f"{name} is listed in label.forbidden: it cannot be a feature")
    slices = model.get("slices") or []
    if not isinstance(slices, list):
        where.fail("slices", "must be a list of training-set columns")
    limits = model.get("known_limits") or []
    if not isinstance(limits, list) or not all(isinstance(x, str) for x in limits):
        where.fail("known_limits", "must be a list of sentences (shown in every version's model card)")


def projects_dir() -> Path:
    """The folder whose sub-folders holding an ``mlops.yaml`` are the deployed use cases.

    ``MLOPS_PROJECTS``; else ``<checkout>/examples`` in a source checkout (the example use cases); else, installed
    from a wheel, ``$AIRFLOW_HOME/mlops_projects`` (next to Airflow's ``dags/``; ``~/airflow`` without AIRFLOW_HOME).
    """
    from airflow_mlops import settings

    configured = os.environ.get("MLOPS_PROJECTS")
    if configured:
        return Path(configured).expanduser().resolve()
    root = settings.checkout_root()
    return (root / "examples" if root else settings.airflow_home() / "mlops_projects").resolve()


def discover(root: str | Path | None = None) -> list[Path]:
    """Use-case folders under ``root`` (default :func:`projects_dir`), sorted; folders without mlops.yaml ignored."""
    base = Path(root) if root else projects_dir()
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if (p / CONFIG_FILE).is_file())


def lake_url(usecase: UseCase) -> str:
    """The use case's own lake root: ``<MLOPS_LAKE>/<name>`` (every zone of the use case lives under it)."""
    from airflow_mlops import settings

    return f"{settings.lake_url()}/{usecase.name}"


def serving_url(usecase: UseCase) -> str:
    """The use case's serving endpoint: ``MLOPS_SERVING_URL__<NAME>`` (upper-case name), else
    ``http://127.0.0.1:<port>`` with ``MLOPS_SERVING_PORT__<NAME>`` or ``serving.server.port`` (default 3000)."""
    return serving_endpoint(usecase)[0]


def serving_endpoint(usecase: UseCase) -> tuple[str, bool]:
    """The use case's serving endpoint (``serving_url``) and whether it is the embedded one, which the suite may
    start itself: only the default endpoint on loopback is. An endpoint given explicitly
    (``MLOPS_SERVING_URL__<NAME>``) is run by someone else — the compose stack's ``serving`` container, a server
    of one's own —, whatever its host: the deploy step reaches and reloads it, never starts one."""
    key = usecase.name.upper()
    url = os.environ.get(f"MLOPS_SERVING_URL__{key}")
    if url:
        return url.rstrip("/"), False
    server = usecase.serving.get("server") or {}
    port = os.environ.get(f"MLOPS_SERVING_PORT__{key}") or server.get("port") or 3000
    host = server.get("host") or "127.0.0.1"
    return f"http://{host}:{int(port)}", host in ("127.0.0.1", "localhost")
