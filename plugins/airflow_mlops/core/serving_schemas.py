"""What the prediction service accepts and answers: typed requests with their domain, and the answers.

Pydantic models (no Airflow, no BentoML): the BentoML service uses them as its API types, so a malformed or
out-of-domain request is answered HTTP 400 with the failing field named, before any feature lookup. The domain
(origins, known airports, departure range, batch size) comes from ``include/config/serving.yaml``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator

from airflow_mlops import settings

#: The entities whose features may be unknown; an answer lists those that fell back to their defaults.
ENTITIES = ("flight", "weather", "carrier_history", "route_history", "origin_history")


def serving_config_path() -> Path:
    import os

    return Path(os.environ.get("MLOPS_SERVING_CONFIG") or settings.include_dir() / "config" / "serving.yaml")


@cache
def _read_config(path: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping (model, request, server, inference_log, ...)")
    return data


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """``serving.yaml`` as a dict (cached per path)."""
    return _read_config(str(path or serving_config_path()))


def include_file(relative: str) -> Path:
    """A file named in ``serving.yaml`` relative to ``include/`` (absolute paths are kept)."""
    path = Path(relative)
    return path if path.is_absolute() else settings.include_dir() / path


@dataclass(frozen=True)
class RequestDomain:
    """What a request may name: the origins the model knows, known airports, departure range, batch size."""

    origins: frozenset[str]
    airports: frozenset[str]
    local_timezone: str
    earliest: date
    latest: date
    batch_max_size: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RequestDomain:
        request = config["request"]
        airports = json.loads(include_file(request["airports_file"]).read_text())["airports"]
        return cls(
            origins=frozenset(str(o).upper() for o in request["origins"]),
            airports=frozenset(str(a).upper() for a in airports),
            local_timezone=str(request.get("local_timezone", "UTC")),
            earliest=date.fromisoformat(str(request["earliest_departure"])),
            latest=date.fromisoformat(str(request["latest_departure"])),
            batch_max_size=int(request["batch_max_size"]),
        )


@cache
def domain() -> RequestDomain:
    return RequestDomain.from_config(load_config())


Code = Annotated[str, Field(min_length=2, max_length=4, pattern=r"^[A-Za-z0-9]+$")]


class FlightRequest(BaseModel):
    """One scheduled flight. ``scheduled_departure`` without a UTC offset is local time at the origin."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    carrier: Annotated[str, Field(pattern=r"^[A-Za-z0-9]{2}$", description="IATA carrier code, e.g. UA")]
    flight: Annotated[int, Field(ge=1, le=9999, description="flight number")]
    origin: Annotated[Code, Field(description="departure airport (FAA code): one the model knows")]
    dest: Annotated[Code, Field(description="destination airport (FAA code)")]
    scheduled_departure: Annotated[datetime, Field(description="ISO 8601; without offset: local at origin")]
    tailnum: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9]{1,8}$", description="tail number, if known")] = None

    @field_validator("carrier", "tailnum")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.upper() if value else value

    @field_validator("origin")
    @classmethod
    def _known_origin(cls, value: str) -> str:
        value, known = value.upper(), domain().origins
        if value not in known:
            raise ValueError(f"unknown origin {value!r}: the model serves departures from {', '.join(sorted(known))}")
        return value

    @field_validator("dest")
    @classmethod
    def _known_dest(cls, value: str) -> str:
        value = value.upper()
        if value not in domain().airports:
            raise ValueError(f"unknown airport {value!r}")
        return value

    @field_validator("scheduled_departure")
    @classmethod
    def _in_range(cls, value: datetime) -> datetime:
        dom = domain()
        if value.tzinfo is None:
            value = value.replace(tzinfo=ZoneInfo(dom.local_timezone))
        if not dom.earliest <= value.date() <= dom.latest:
            raise ValueError(f"scheduled departure {value.date()} is outside {dom.earliest}..{dom.latest}")
        return value

    # -- derived ---------------------------------------------------------------------------------------------
    def departure_utc(self) -> datetime:
        return self.scheduled_departure.astimezone(UTC)

    def departure_local(self) -> datetime:
        return self.scheduled_departure.astimezone(ZoneInfo(domain().local_timezone))

    def flight_id(self) -> str:
        """The feature stage's key: ``<UTC scheduled hour %Y%m%dT%H>-<carrier>-<flight>``."""
        return f"{self.departure_utc():%Y%m%dT%H}-{self.carrier}-{self.flight}"


class BatchRequest(BaseModel):
    """Many flights at once (1 .. ``request.batch_max_size``)."""

    model_config = ConfigDict(extra="forbid")

    flights: Annotated[list[FlightRequest], Field(min_length=1)]

    @field_validator("flights", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        # Before parsing the items: an oversized batch is refused without validating every flight in it.
        limit = domain().batch_max_size
        if isinstance(value, list) and len(value) > limit:
            raise ValueError(f"a batch holds at most {limit} flights, got {len(value)}")
        return value


class Prediction(BaseModel):
    """The answer for one flight."""

    request_id: str
    flight_id: str
    probability_late: float
    late: bool
    threshold: float
    model_name: str
    model_version: str
    defaults_used: list[str] = Field(
        default_factory=list,
        description=f"entities unknown to the feature store whose features fell back to defaults: {', '.join(ENTITIES)}",
    )


class BatchPrediction(BaseModel):
    request_id: str
    model_name: str
    model_version: str
    predictions: list[Prediction]


class ModelInfo(BaseModel):
    """What the service is serving (``/info``)."""

    model_name: str
    model_version: str
    alias: str | None
    pinned: bool
    threshold: float
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
