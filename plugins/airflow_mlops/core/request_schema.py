"""A use case's serving request, generated from ``serving.request`` in its ``mlops.yaml``.

The mapping declares the request's fields, which one is its event time and (optionally) which one is its id::

    request:
      event_time: ordered_at
      id: order_id
      fields:
        order_id: {type: string, pattern: "^[0-9a-f]{8}$", description: the caller's order id}
        shop: {type: string, pattern: "^[A-Z0-9]{2}$", upper: true}
        quantity: {type: int, min: 1, max: 9999}
        country: {type: string, allowed: [FR, DE, IT], upper: true, strip: true}
        product: {type: string, allowed_file: serving/products.json}
        ordered_at: {type: datetime, min: "2020-01-01", max: "2030-12-31", timezone: Europe/Paris}
        weight: {type: float, min: 0, required: false, default: null}
        gift: {type: bool, default: false}

``request_model`` turns it into a pydantic v2 model (compiled validators, built once per spec and ``base_dir``):
extra fields are refused, and every error names its field (``loc``) and says what is allowed, so a BentoML API
typed with the model answers a bad request HTTP 400 naming the field. ``batch_model`` wraps it in
``{"rows": [...]}`` of 1..max_size rows; ``request_frame`` turns validated requests into the frame handed to the
use case's ``entity_keys`` (every field plus ``event_timestamp``, UTC); ``event_timestamp(request)`` gives one
request's. A generated model carries its parsed spec as ``__request_spec__``.

With BentoML, bind the model to a module-level name of the service module (``Request = request_model(...)``) so
the API's annotation resolves under ``from __future__ import annotations``.

Types and their constraints:

=========  ===========================================================================================
string     ``allowed`` (list), ``allowed_file`` (a JSON list, or an object holding one list, in a file
           relative to ``base_dir``), ``pattern`` (``re.search`` on the value after ``strip``/``upper``),
           ``strip``, ``upper`` (both false by default; ``allowed`` values get the same treatment)
int        ``min``, ``max`` (inclusive), ``allowed``, ``allowed_file``
float      ``min``, ``max`` (inclusive); NaN and infinities are refused
bool       (none)
datetime   ``timezone`` (a naive value is local time there, else UTC; every value becomes UTC-aware),
           ``min``/``max`` as ISO strings: a date (``"2030-12-31"``) bounds the local calendar date, inclusive;
           a date-time bounds the instant (naive: in the field's timezone). In a DST gap a naive local time is
           read with the offset before the change; in an overlap, as its first occurrence (``fold=0``).
date       ``min``/``max`` as ISO dates (inclusive)
=========  ===========================================================================================

Every field also takes ``description``, ``required`` (default true; false when a ``default`` is given) and
``default`` (validated once, at build time). ``required: false`` without a default means ``default: null``; only
a field whose default is null accepts an explicit null. Numbers refuse booleans.

A bad spec raises ``ValueError`` naming the key to fix: ``serving.request.fields.<name>.<key>``,
``serving.request.event_time`` (not a required datetime/date field), ``serving.request.id``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    create_model,
)
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    import pandas as pd

PREFIX = "serving.request"
TYPES = ("string", "int", "float", "bool", "datetime", "date")
EVENT_TIMESTAMP = "event_timestamp"
TS = "datetime64[us, UTC]"
#: How many allowed values an error message lists before it says how many there are in all.
SHOWN_VALUES = 10

_COMMON_KEYS = frozenset({"type", "description", "required", "default"})
_KEYS_BY_TYPE: dict[str, frozenset[str]] = {
    "string": _COMMON_KEYS | {"allowed", "allowed_file", "pattern", "upper", "strip"},
    "int": _COMMON_KEYS | {"allowed", "allowed_file", "min", "max"},
    "float": _COMMON_KEYS | {"min", "max"},
    "bool": _COMMON_KEYS,
    "datetime": _COMMON_KEYS | {"min", "max", "timezone"},
    "date": _COMMON_KEYS | {"min", "max"},
}
_ALL_KEYS = frozenset().union(*_KEYS_BY_TYPE.values())
_REQUEST_KEYS = frozenset({"event_time", "id", "fields"})
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_MISSING: Any = object()


# -- the parsed spec (no files read, no pydantic) ---------------------------------------------------------------
@dataclass(frozen=True)
class Bound:
    """A datetime bound: the UTC instant, whether it is exclusive, and the text to show in messages."""

    at: datetime
    exclusive: bool
    shown: str


@dataclass(frozen=True)
class FieldSpec:
    """One request field as declared (bounds parsed, nothing read from files)."""

    name: str
    type: str
    required: bool
    default: Any  # _MISSING when required
    description: str | None = None
    allowed: tuple[Any, ...] | None = None
    allowed_file: str | None = None
    pattern: str | None = None
    upper: bool = False
    strip: bool = False
    low: Any = None  # number, date, or Bound (datetime)
    high: Any = None
    timezone: str | None = None

    @property
    def key(self) -> str:
        return f"{PREFIX}.fields.{self.name}"

    @property
    def nullable(self) -> bool:
        """Whether the field accepts (and may hold) null: an optional field whose default is null."""
        return not self.required and self.default is None


@dataclass(frozen=True)
class RequestSpec:
    """The parsed ``serving.request`` mapping."""

    fields: tuple[FieldSpec, ...]
    event_time: str
    id: str | None = None

    def field(self, name: str) -> FieldSpec:
        return next(f for f in self.fields if f.name == name)


def _fail(key: str, message: str) -> ValueError:
    return ValueError(f"{key}: {message}")


def _reserved_names() -> frozenset[str]:
    return frozenset(dir(BaseModel)) | {EVENT_TIMESTAMP}


def _flag(raw: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise _fail(f"{where}.{key}", f"must be true or false, got {value!r}")
    return value


def _iso_date(value: Any, key: str) -> date:
    if isinstance(value, datetime):
        raise _fail(key, f"must be an ISO date (YYYY-MM-DD), got the date-time {value.isoformat()}")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise _fail(key, f"must be an ISO date (YYYY-MM-DD), got {value!r}")


def _datetime_bound(value: Any, key: str, zone: tzinfo, upper: bool) -> Bound:
    """A date bounds the local calendar date (inclusive); a date-time bounds the instant (inclusive)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
        except ValueError:
            raise _fail(key, f"must be an ISO date or date-time, got {text!r}") from None
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=zone)
        return Bound(moment.astimezone(UTC), False, value.isoformat())
    if isinstance(value, date):
        day = value + timedelta(days=1) if upper else value
        midnight = datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)
        return Bound(midnight, upper, value.isoformat())
    raise _fail(key, f"must be an ISO date or date-time, got {value!r}")


def _number(value: Any, key: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(key, f"must be a finite number, got {value!r}")
    return value


def _zone(name: str | None) -> tzinfo:
    return ZoneInfo(name) if name else UTC


def _parse_field(name: Any, raw: Any, reserved: frozenset[str]) -> FieldSpec:
    where = f"{PREFIX}.fields.{name}"
    if not isinstance(name, str) or not _NAME.match(name) or name.startswith("model_") or name in reserved:
        raise _fail(
            where,
            "a field name must match [A-Za-z][A-Za-z0-9_]*, not start with model_ and not be one of pydantic's "
            f"BaseModel attributes or {EVENT_TIMESTAMP!r}",
        )
    if not isinstance(raw, Mapping):
        raise _fail(where, f"must be a mapping with at least a type ({', '.join(TYPES)}), got {raw!r}")
    kind = raw.get("type")
    if kind not in TYPES:
        raise _fail(f"{where}.type", f"must be one of {', '.join(TYPES)}, got {kind!r}")
    for key in raw:
        if key not in _KEYS_BY_TYPE[kind]:
            if key in _ALL_KEYS:
                raise _fail(f"{where}.{key}", f"does not apply to a {kind} field")
            raise _fail(f"{where}.{key}", f"unknown key; a {kind} field takes {', '.join(sorted(_KEYS_BY_TYPE[kind]))}")

    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise _fail(f"{where}.description", f"must be a string, got {description!r}")
    has_default = "default" in raw
    required = _flag(raw, "required", where, default=not has_default)
    if required and has_default:
        raise _fail(f"{where}.default", "a required field has no default: drop it or set required: false")
    default = _MISSING if required else raw.get("default")
    upper, strip = _flag(raw, "upper", where, False), _flag(raw, "strip", where, False)

    pattern = raw.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            raise _fail(f"{where}.pattern", f"must be a regular expression string, got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as err:
            raise _fail(f"{where}.pattern", f"not a valid regular expression: {err}") from None

    allowed = raw.get("allowed")
    if allowed is not None:
        allowed = _allowed_values(allowed, f"{where}.allowed", kind, upper, strip)
    allowed_file = raw.get("allowed_file")
    if allowed_file is not None and (not isinstance(allowed_file, str) or not allowed_file.strip()):
        raise _fail(f"{where}.allowed_file", f"must be a path relative to the use-case folder, got {allowed_file!r}")

    timezone = raw.get("timezone")
    if timezone is not None:
        if not isinstance(timezone, str):
            raise _fail(f"{where}.timezone", f"must be an IANA time zone name, got {timezone!r}")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise _fail(f"{where}.timezone", f"unknown time zone {timezone!r} (an IANA name: Europe/Paris)") from None

    low, high = raw.get("min"), raw.get("max")
    if kind in ("int", "float"):
        low = None if low is None else _number(low, f"{where}.min")
        high = None if high is None else _number(high, f"{where}.max")
        bad = low is not None and high is not None and low > high
    elif kind == "date":
        low = None if low is None else _iso_date(low, f"{where}.min")
        high = None if high is None else _iso_date(high, f"{where}.max")
        bad = low is not None and high is not None and low > high
    elif kind == "datetime":
        zone = _zone(timezone)
        low = None if low is None else _datetime_bound(low, f"{where}.min", zone, upper=False)
        high = None if high is None else _datetime_bound(high, f"{where}.max", zone, upper=True)
        bad = low is not None and high is not None and (low.at >= high.at if high.exclusive else low.at > high.at)
    else:
        bad = False
    if bad:
        raise _fail(f"{where}.min", f"min {raw.get('min')!r} is after max {raw.get('max')!r}")

    return FieldSpec(
        name=name,
        type=kind,
        required=required,
        default=default,
        description=description,
        allowed=allowed,
        allowed_file=allowed_file,
        pattern=pattern,
        upper=upper,
        strip=strip,
        low=low,
        high=high,
        timezone=timezone,
    )


def _allowed_values(values: Any, key: str, kind: str, upper: bool, strip: bool) -> tuple[Any, ...]:
    """The allowed values, checked against the field type and normalized like the inputs will be."""
    if not isinstance(values, list | tuple) or not values:
        raise _fail(key, f"must be a non-empty list, got {values!r}")
    out = []
    for i, value in enumerate(values):
        if kind == "string":
            if not isinstance(value, str):
                raise _fail(f"{key}[{i}]", f"{value!r} is not a string (quote it in YAML, e.g. 'NO', '007')")
            value = value.strip() if strip else value
            value = value.upper() if upper else value
        elif isinstance(value, bool) or not isinstance(value, int):
            raise _fail(f"{key}[{i}]", f"{value!r} is not an integer")
        out.append(value)
    return tuple(dict.fromkeys(out))


def parse_spec(spec: Mapping[str, Any] | RequestSpec) -> RequestSpec:
    """Check the ``serving.request`` mapping and parse it (reads no file: ``allowed_file`` is read by the model).

    :param spec: the ``serving.request`` mapping of ``mlops.yaml`` (an already parsed ``RequestSpec`` is returned).
    :raises ValueError: naming the key to fix (``serving.request.fields.<name>.<key>``, ...).
    """
    if isinstance(spec, RequestSpec):
        return spec
    if not isinstance(spec, Mapping):
        raise _fail(PREFIX, f"must be a mapping with fields and event_time, got {type(spec).__name__}")
    for key in spec:
        if key not in _REQUEST_KEYS:
            raise _fail(f"{PREFIX}.{key}", f"unknown key; serving.request takes {', '.join(sorted(_REQUEST_KEYS))}")
    raw_fields = spec.get("fields")
    if not isinstance(raw_fields, Mapping) or not raw_fields:
        raise _fail(f"{PREFIX}.fields", "must be a non-empty mapping of field name to {type: ..., ...}")
    reserved = _reserved_names()
    fields = tuple(_parse_field(name, raw, reserved) for name, raw in raw_fields.items())
    by_name = {f.name: f for f in fields}

    event_time = spec.get("event_time")
    target = by_name.get(event_time) if isinstance(event_time, str) else None
    if target is None or target.type not in ("datetime", "date"):
        candidates = [f.name for f in fields if f.type in ("datetime", "date")]
        raise _fail(
            f"{PREFIX}.event_time",
            f"must name a datetime or date field ({', '.join(candidates) or 'none declared'}), got {event_time!r}",
        )
    if not target.required:
        raise _fail(f"{PREFIX}.event_time", f"the event time field {event_time!r} must be required")

    ident = spec.get("id")
    if ident is not None:
        target = by_name.get(ident) if isinstance(ident, str) else None
        if target is None or target.type not in ("string", "int"):
            candidates = [f.name for f in fields if f.type in ("string", "int")]
            raise _fail(f"{PREFIX}.id", f"must name a string or int field ({', '.join(candidates)}), got {ident!r}")
        if not target.required:
            raise _fail(f"{PREFIX}.id", f"the id field {ident!r} must be required")
    return RequestSpec(fields=fields, event_time=event_time, id=ident)


# -- the model ----------------------------------------------------------------------------------------------------
class RequestBase(BaseModel):
    """The base of every generated request model: extra fields refused; the parsed spec as ``__request_spec__``."""

    model_config = ConfigDict(extra="forbid")

    __request_spec__: ClassVar[RequestSpec | None] = None


def _shown(values: Sequence[Any], source: str | None = None) -> str:
    """The allowed values for a message: the first ``SHOWN_VALUES`` in order, then how many and from where."""
    ordered = sorted(values, key=str)
    text = ", ".join(str(v) for v in ordered[:SHOWN_VALUES])
    more = f"{len(ordered)} in all" if len(ordered) > SHOWN_VALUES else ""
    where = f"from {source}" if source else ""
    notes = "; ".join(n for n in (more, where) if n)
    return f"{text}{', ...' if more else ''} ({notes})" if notes else text


def _input(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _read_allowed_file(field: FieldSpec, base_dir: Path | None) -> tuple[Any, ...]:
    key = f"{field.key}.allowed_file"
    path = Path(field.allowed_file or "")
    if not path.is_absolute():
        if base_dir is None:
            raise _fail(key, f"{field.allowed_file} is relative but no base_dir (the use-case folder) was given")
        path = Path(base_dir) / path
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise _fail(key, f"{path} does not exist") from None
    except (OSError, ValueError) as err:
        raise _fail(key, f"cannot read {path} as JSON: {err}") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise _fail(key, f"{path} must hold a JSON list (or an object with exactly one list)")
        data = lists[0]
    return _allowed_values(data, key, field.type, field.upper, field.strip)


def _no_bool(field: FieldSpec) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise PydanticCustomError("not_a_number", "{field} must be a number, not a boolean", {"field": field.name})
        return value

    return check


def _in_set(field: FieldSpec, allowed: frozenset[Any]) -> Callable[[Any], Any]:
    ctx = {"field": field.name, "allowed": _shown(tuple(allowed), field.allowed_file)}

    def check(value: Any) -> Any:
        if value not in allowed:
            raise PydanticCustomError(
                "value_not_allowed", "{field} must be one of {allowed}; got {value}", {**ctx, "value": _input(value)}
            )
        return value

    return check


def _matches(field: FieldSpec) -> Callable[[str], str]:
    search = re.compile(field.pattern or "").search
    ctx = {"field": field.name, "pattern": field.pattern}

    def check(value: str) -> str:
        if search(value) is None:
            raise PydanticCustomError(
                "string_pattern_mismatch",
                "{field} must match the pattern {pattern}; got {value}",
                {**ctx, "value": _input(value)},
            )
        return value

    return check


def _to_utc(field: FieldSpec) -> Callable[[datetime], datetime]:
    zone = _zone(field.timezone)
    low, high = field.low, field.high
    where = f" (in {field.timezone})" if field.timezone else " (UTC)"
    ctx = {
        "field": field.name,
        "range": f"{low.shown if low else '...'} .. {high.shown if high else '...'}{where}",
    }

    def check(value: datetime) -> datetime:
        value = (value if value.tzinfo is not None else value.replace(tzinfo=zone)).astimezone(UTC)
        if (low is not None and value < low.at) or (
            high is not None and (value >= high.at if high.exclusive else value > high.at)
        ):
            raise PydanticCustomError(
                "datetime_out_of_range",
                "{field} must be within {range}; got {value}",
                {**ctx, "value": value.astimezone(zone).isoformat()},
            )
        return value

    return check


def _annotation(field: FieldSpec, base_dir: Path | None) -> tuple[Any, dict[str, Any]]:
    """The field's type with its constraints, as compiled validators (Python ones only where pydantic has none)."""
    extra: dict[str, Any] = {}
    if field.type == "string":
        parts: list[Any] = [str, StringConstraints(strip_whitespace=field.strip or None, to_upper=field.upper or None)]
        if field.pattern is not None:
            parts.append(AfterValidator(_matches(field)))
            if not (field.upper or field.strip):  # the schema's pattern would refuse what is normalized first
                extra["pattern"] = field.pattern
    elif field.type == "int":
        parts = [int, Field(ge=field.low, le=field.high), BeforeValidator(_no_bool(field))]  # the check runs first
    elif field.type == "float":
        parts = [float, Field(ge=field.low, le=field.high, allow_inf_nan=False), BeforeValidator(_no_bool(field))]
    elif field.type == "bool":
        parts = [bool]
    elif field.type == "date":
        parts = [date, Field(ge=field.low, le=field.high)]
    else:  # datetime
        parts = [datetime, AfterValidator(_to_utc(field))]
        extra["x-timezone"] = field.timezone or "UTC"
    if field.allowed is not None or field.allowed_file is not None:
        values = set(field.allowed or ())
        if field.allowed_file is not None:
            values.update(_read_allowed_file(field, base_dir))
        parts.append(AfterValidator(_in_set(field, frozenset(values))))
        if len(values) <= 100 and not (field.upper or field.strip):
            extra["enum"] = sorted(values, key=str)
    annotated: Any = Annotated[tuple(parts)] if len(parts) > 1 else parts[0]  # type: ignore[valid-type]
    if field.nullable:
        annotated = annotated | None
    return annotated, extra


def _build(spec: RequestSpec, base_dir: Path | None, name: str) -> type[RequestBase]:
    definitions: dict[str, Any] = {}
    for field in spec.fields:
        annotated, extra = _annotation(field, base_dir)
        default: Any = ...
        if not field.required:
            default = field.default
            if default is not None:
                try:
                    default = TypeAdapter(annotated).validate_python(default)
                except ValidationError as err:
                    message = "; ".join(e["msg"] for e in err.errors())
                    raise _fail(f"{field.key}.default", f"{field.default!r} is not a valid value: {message}") from None
        definitions[field.name] = (
            annotated,
            Field(default=default, description=field.description, json_schema_extra=extra or None),
        )
    model = create_model(name, __base__=RequestBase, __module__=__name__, **definitions)
    model.__request_spec__ = spec
    return model


def _spec_key(spec: Mapping[str, Any] | RequestSpec) -> str:
    if isinstance(spec, RequestSpec):
        return repr(spec)
    text = json.dumps(spec, default=str)  # field order kept: it is the model's and the frame's column order
    return hashlib.sha256(text.encode()).hexdigest()


_PARSED: dict[str, RequestSpec] = {}


def _parsed(spec: Mapping[str, Any] | RequestSpec) -> RequestSpec:
    """``parse_spec`` once per spec (request_frame runs per request)."""
    if isinstance(spec, RequestSpec):
        return spec
    key = _spec_key(spec)
    parsed = _PARSED.get(key)
    if parsed is None:
        parsed = _PARSED[key] = parse_spec(spec)
    return parsed


_MODELS: dict[tuple[str, str | None, str], type[RequestBase]] = {}
_LOCK = threading.Lock()


def request_model(
    spec: Mapping[str, Any] | RequestSpec, *, name: str = "Request", base_dir: str | Path | None = None
) -> type[RequestBase]:
    """The pydantic model of one request, built once per (spec, ``base_dir``, name) and then reused.

    :param spec: the ``serving.request`` mapping of ``mlops.yaml`` (event_time, id, fields).
    :param name: the model's class name (shown in OpenAPI and in validation errors).
    :param base_dir: the use-case folder, which ``allowed_file`` paths are relative to.
    :raises ValueError: a bad spec, naming the key to fix (``serving.request.fields.<name>.<key>``, ...).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"request_model: the model name must be a Python identifier, got {name!r}")
    folder = None if base_dir is None else str(Path(base_dir).resolve())
    key = (_spec_key(spec), folder, name)
    model = _MODELS.get(key)
    if model is None:
        with _LOCK:
            model = _MODELS.get(key)
            if model is None:
                model = _MODELS[key] = _build(parse_spec(spec), None if folder is None else Path(folder), name)
    return model


def _sized(max_size: int, what: str) -> Any:
    """The pydantic type of a list of 1..``max_size`` items, refused before its items are validated when longer."""
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"{what}: max_size must be an integer >= 1, got {max_size!r}")

    def size(value: Any) -> Any:  # before the rows are validated: a huge batch costs no row validation
        if isinstance(value, list) and len(value) > max_size:
            raise PydanticCustomError(
                "too_long",
                "a batch holds at most {max_size} rows; got {size}",
                {"max_size": max_size, "size": len(value)},
            )
        return value

    return BeforeValidator(size), Field(min_length=1, max_length=max_size)


@lru_cache(maxsize=64)
def request_list(request_model: type[BaseModel], max_size: int) -> Any:
    """The type of ``[request, ...]`` with 1..``max_size`` requests: the ``rows`` of ``/predict`` (BentoML's
    batchable API takes a list and merges the lists of concurrent calls into one batch).

    :param request_model: a model from ``request_model``.
    :param max_size: the most requests one body may hold (at least 1).
    """
    return Annotated[list[request_model], *_sized(max_size, "request_list")]  # type: ignore[valid-type]


@lru_cache(maxsize=64)
def batch_model(request_model: type[BaseModel], max_size: int) -> type[BaseModel]:
    """``{"rows": [request, ...]}`` with 1..``max_size`` rows; an oversized batch is refused before its rows are
    validated. Built once per (model, max_size).

    :param request_model: a model from ``request_model``.
    :param max_size: the most rows a batch may hold (at least 1).
    """
    return create_model(
        f"{request_model.__name__}Batch",
        __config__=ConfigDict(extra="forbid"),
        __module__=__name__,
        rows=(
            Annotated[list[request_model], *_sized(max_size, "batch_model")],  # type: ignore[valid-type]
            Field(description=f"1 to {max_size} requests"),
        ),
    )


# -- requests as a frame ------------------------------------------------------------------------------------------
def event_timestamp(request: BaseModel, spec: Mapping[str, Any] | RequestSpec | None = None) -> datetime:
    """The request's event time as a UTC-aware datetime (a date field: midnight UTC).

    :param request: a validated request.
    :param spec: the request spec (default: the one its model was built from).
    """
    parsed = _parsed(spec) if spec is not None else type(request).__request_spec__
    if parsed is None:
        raise ValueError(f"{type(request).__name__} was not built by request_model: pass its spec")
    value = getattr(request, parsed.event_time)
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


def _column(field: FieldSpec, values: list[Any]) -> pd.Series:
    import pandas as pd

    if field.type == "datetime":
        return pd.Series(pd.DatetimeIndex(values, tz=UTC).as_unit("us"), dtype=TS)
    if field.type == "date":
        return pd.Series(pd.DatetimeIndex(values).as_unit("us"), dtype="datetime64[us]")
    if field.type == "float" or (field.type == "int" and field.nullable):
        return pd.Series([math.nan if v is None else v for v in values], dtype="float64")
    if field.type == "int":
        return pd.Series(values, dtype="int64")
    if field.type == "bool" and not field.nullable:
        return pd.Series(values, dtype="bool")
    return pd.Series(values, dtype="object")


def request_frame(requests: Sequence[BaseModel], spec: Mapping[str, Any] | RequestSpec) -> pd.DataFrame:
    """One row per request: every field in declared order, then ``event_timestamp`` (``datetime64[us, UTC]``).

    Columns: string → object; int → int64 (float64 with NaN when nullable); float → float64 (NaN for null);
    bool → bool (object when nullable); datetime → ``datetime64[us, UTC]``; date → ``datetime64[us]``
    (midnight, naive). ``event_timestamp`` is the event-time field in UTC (a date: midnight UTC).

    :param requests: validated requests (instances of ``request_model(spec)``); may be empty.
    :param spec: the ``serving.request`` mapping (or its parsed ``RequestSpec``).
    """
    import pandas as pd

    parsed = _parsed(spec)
    columns = {f.name: _column(f, [getattr(r, f.name) for r in requests]) for f in parsed.fields}
    event = parsed.field(parsed.event_time)
    stamps = columns[event.name]
    if event.type == "date":
        stamps = stamps.dt.tz_localize(UTC)
    columns[EVENT_TIMESTAMP] = stamps.astype(TS)
    return pd.DataFrame(columns, index=pd.RangeIndex(len(requests)))
