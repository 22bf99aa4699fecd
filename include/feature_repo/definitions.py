"""Feast definitions of airflow-mlops: entities, Parquet sources in the lake, feature views with their TTLs.

Everything here mirrors ``airflow_mlops.core.features`` and ``include/config/features.yaml``:

==================  ============  ======================  ==========================================  ============
view                entity (key)  timestamp               features                                    TTL
==================  ============  ======================  ==========================================  ============
flight_features     flight_id     event_timestamp (sched) dest, sched_hour, weekday, distance, plane   flight.ttl
origin_weather      weather_slot  available_at (slot+lag) temp, dewp, ..., visib, weather_obs         weather.ttl
carrier_history     carrier_slot  snapshot_at (hourly)    carrier_late_rate/flights 7d, 30d           history.ttl
route_history       route_slot    snapshot_at (hourly)    route_late_rate/flights 30d                 history.ttl
origin_history      origin_slot   snapshot_at (hourly)    origin_late_rate/flights 7d                 history.ttl
==================  ============  ======================  ==========================================  ============

Weather and history are keyed by entity and time slot (``"JFK@20130315T0900"``, see ``core.features``): the
online store holds one row per slot, and a request reads the slot of its own scheduled departure.

The sources' paths come from the environment at run time, never from this file: ``MLOPS_FEATURES_ROOT`` (set by
``FeastHook``; a local folder or ``s3://...``), else the lake's ``features/`` folder (``MLOPS_LAKE``).
Use :func:`build_objects` for a given root; the module-level objects are what the ``feast`` CLI finds.
"""

from __future__ import annotations

import os
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

from airflow_mlops import settings
from airflow_mlops.core import features as F

_TYPES = {"float64": Float64, "int64": Int64, "string": String}
_FLIGHT_TYPES = {
    "dest": String,
    "sched_hour": Int64,
    "weekday": Int64,
    "distance": Float64,
    "plane_age": Float64,
    "plane_seats": Float64,
    "plane_known": Int64,
}


def default_features_root() -> str:
    root = os.environ.get("MLOPS_FEATURES_ROOT")
    if root:
        return root.rstrip("/")
    lake = settings.lake_url()
    return f"{lake.removeprefix('file://')}/features" if lake.startswith("file://") else f"{lake}/features"


def build_objects(features_root: str, spec: F.FeatureSpec | None = None) -> dict[str, object]:
    """Every Feast object of the repository, by name, reading partitions under ``features_root``."""
    spec = spec or F.load_spec()
    root = features_root.rstrip("/")
    tags = {"feature_version": str(spec.feature_version), "owner": "airflow-mlops"}

    def source(view: str) -> FileSource:
        return FileSource(
            name=f"{view}_source",
            path=f"{root}/*/{view}.parquet",
            timestamp_field=F.TIMESTAMP_FIELDS[view],
            description=f"features/<YYYY-MM>/{view}.parquet partitions of the lake",
        )

    flight = Entity(
        name="flight",
        join_keys=["flight_id"],
        value_type=ValueType.STRING,
        description="One scheduled departure: f'{time_hour:%Y%m%dT%H}-{carrier}-{flight}'",
    )
    weather_slot = Entity(
        name=F.WEATHER_SLOT,
        join_keys=[F.WEATHER_SLOT],
        value_type=ValueType.STRING,
        description="NYC origin airport and hourly weather slot: f'{origin}@{floor(t - lag, 1 h):%Y%m%dT%H%M}'",
    )
    entities = {
        entity.name: Entity(
            name=entity.slot_key,
            join_keys=[entity.slot_key],
            value_type=ValueType.STRING,
            description=f"{entity.key} and snapshot slot: f'{{{entity.key}}}@{{floor(t, snapshot period):%Y%m%dT%H%M}}'",
        )
        for entity in spec.history
    }

    views = [
        FeatureView(
            name=F.FLIGHT_VIEW,
            entities=[flight],
            ttl=timedelta(hours=spec.flight_ttl_hours),
            schema=[Field(name=name, dtype=_FLIGHT_TYPES[name]) for name in F.FLIGHT_FEATURES],
            source=source(F.FLIGHT_VIEW),
            online=True,
            tags=tags,
            description="Schedule and fleet features, known at scheduling time",
        ),
        FeatureView(
            name=F.WEATHER_VIEW,
            entities=[weather_slot],
            ttl=timedelta(hours=spec.weather_ttl_hours),
            schema=[Field(name=name, dtype=Float64) for name in spec.weather_columns]
            + [Field(name=F.WEATHER_PRESENT, dtype=Int64)],
            source=source(F.WEATHER_VIEW),
            online=True,
            tags=tags,
            description="Latest hourly observation at the origin usable in the slot (time_hour + publication lag)",
        ),
    ]
    for entity in spec.history:
        views.append(
            FeatureView(
                name=entity.view,
                entities=[entities[entity.name]],
                ttl=timedelta(hours=spec.history_ttl_hours),
                schema=[
                    Field(name=name, dtype=Int64 if "_flights_" in name else Float64) for name in entity.features()
                ],
                source=source(entity.view),
                online=True,
                tags=tags,
                description=f"Trailing late rates and volumes per {entity.name}, from outcomes known before the snapshot",
            )
        )
    objects: dict[str, object] = {e.name: e for e in (flight, weather_slot, *entities.values())}
    objects.update({v.name: v for v in views})
    return objects


# What `feast plan/apply` finds when run on this folder by hand.
globals().update(build_objects(default_features_root()))
