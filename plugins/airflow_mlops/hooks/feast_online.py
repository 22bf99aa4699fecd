"""Feast's online store through its public API, and one version-checked adapter for the SQLite store.

The public path works with any online store and any Feast version: :func:`materialize_latest` calls
``FeatureStore.materialize`` and :class:`OnlineFeatureReader` calls ``FeatureStore.get_online_features``.

:class:`SqliteOnlineAdapter` is used instead only where it was measured to pay (``benchmarks/RESULTS.md``, "Feast
through its public API"): Feast 0.67.x (:data:`ADAPTER_FEAST_SERIES`) with its SQLite online store. It keeps Feast's
storage format (entity keys from ``serialize_entity_key``, ``Value`` protos, the SQLite store's own table and upsert,
``online_read`` for reads) and drops Feast's per-value Python work: it reads the latest row per entity with one
DuckDB query per view, encodes each distinct value once and writes a view in one ``executemany`` transaction; it
reads with one ``online_read`` per view and caches slow-moving views until the store reports a commit
(``PRAGMA data_version``). Every access to Feast's private members is in that class. ``tests/test_feast_online.py``
checks both paths give the same online values; ``MLOPS_FEAST_ADAPTER=off`` forces the public API.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa
    from feast import FeatureStore, FeatureView

log = logging.getLogger(__name__)

#: Feast release series (``major.minor``) the adapter was written and tested for; any other uses the public API.
ADAPTER_FEAST_SERIES = ("0.67",)
#: Feast value types the adapter encodes (the ``Value`` proto field of each); a view with another type goes through
#: ``FeatureStore.materialize``.
_PROTO_FIELDS = {
    "DOUBLE": "double_val",
    "FLOAT": "float_val",
    "INT64": "int64_val",
    "INT32": "int32_val",
    "STRING": "string_val",
    "BOOL": "bool_val",
}
_SCALAR_KINDS = frozenset(_PROTO_FIELDS.values())


def adapter_supports(version: str, series: Sequence[str] = ADAPTER_FEAST_SERIES) -> bool:
    """Whether Feast ``version`` (e.g. ``"0.67.0"``) is in a release series the adapter was written for."""
    return ".".join(version.split(".")[:2]) in series


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _duckdb() -> Any:
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    return con


def interval_counts(
    store: FeatureStore, start: datetime, end: datetime, views: Sequence[str] | None = None
) -> dict[str, int]:
    """Per view, how many entities have source rows stamped in ``[start, end]``: what a materialization writes."""
    counts = {}
    with _duckdb() as con:
        for fv in store.list_feature_views():
            if views and fv.name not in views:
                continue
            keys = ", ".join(_quote(c.name) for c in fv.entity_columns)
            ts, path = _quote(fv.batch_source.timestamp_field), fv.batch_source.path.replace("'", "''")
            query = (
                f"SELECT count(*) FROM (SELECT DISTINCT {keys} FROM read_parquet('{path}') "
                f"WHERE {ts} >= ?::TIMESTAMPTZ AND {ts} <= ?::TIMESTAMPTZ)"
            )
            counts[fv.name] = int(con.execute(query, [start.isoformat(), end.isoformat()]).fetchone()[0])
    return counts


def materialize_latest(
    store: FeatureStore,
    start: datetime,
    end: datetime,
    views: Sequence[str] | None = None,
    adapter: SqliteOnlineAdapter | None = None,
) -> dict[str, int]:
    """Write, per entity, its latest row stamped in ``[start, end]`` to the online store; entities per view.

    ``FeatureStore.materialize(start, end, views)``, or the same online state through ``adapter`` when given.
    Idempotent.

    :raises ValueError: ``start`` is after ``end``, or a view in ``views`` is not an online feature view.
    """
    from feast.utils import make_tzaware

    start, end = make_tzaware(start), make_tzaware(end)
    if start > end:
        raise ValueError(f"start {start} is after end {end}")
    wanted = [fv.name for fv in store.list_feature_views() if fv.online and (not views or fv.name in views)]
    missing = set(views or ()) - set(wanted)
    if missing:
        raise ValueError(f"no online feature view named {sorted(missing)}")
    if adapter is not None:
        return adapter.materialize(start, end, wanted)
    store.materialize(start_date=start, end_date=end, feature_views=wanted)
    return interval_counts(store, start, end, wanted)


# -- the adapter -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ViewPlan:
    view: FeatureView
    join_keys: list[str]
    key_types: list[str]
    timestamp: str
    features: list[tuple[str, str]]  # (name, Value field)


def _proto_field(dtype: Any) -> str | None:
    try:
        return _PROTO_FIELDS.get(dtype.to_value_type().name)
    except AttributeError:
        return None


def _plan(view: FeatureView) -> _ViewPlan | None:
    """How the adapter writes ``view``; None when it needs ``FeatureStore.materialize``."""
    source = view.batch_source
    if getattr(source, "field_mapping", None) or getattr(source, "created_timestamp_column", None):
        return None
    if not getattr(source, "path", None) or not view.entity_columns:
        return None
    features = [(f.name, _proto_field(f.dtype)) for f in view.features]
    key_types = [_proto_field(c.dtype) for c in view.entity_columns]
    if any(kind is None for _, kind in features) or any(kind not in ("string_val", "int64_val") for kind in key_types):
        return None
    return _ViewPlan(view, [c.name for c in view.entity_columns], key_types, source.timestamp_field, features)  # type: ignore[arg-type]


def latest_rows(con: Any, plan: _ViewPlan, start: datetime, end: datetime) -> pa.Table:
    """The latest source row per entity with a timestamp in ``[start, end]`` (Feast's materialization semantics)."""
    keys = ", ".join(_quote(k) for k in plan.join_keys)
    ts = _quote(plan.timestamp)
    columns = ", ".join([keys, ts, *(_quote(name) for name, _ in plan.features)])
    path = plan.view.batch_source.path.replace("'", "''")
    query = (
        f"SELECT {columns} FROM read_parquet('{path}') "
        f"WHERE {ts} >= ?::TIMESTAMPTZ AND {ts} <= ?::TIMESTAMPTZ "
        f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {ts} DESC) = 1"
    )
    return con.sql(query, params=[start.isoformat(), end.isoformat()]).to_arrow_table()


def _encoded(kind: str, values: pa.ChunkedArray) -> list[tuple[bytes, str | None]]:
    """Per row, the serialized ``Value`` and its ``value_text`` as Feast's SQLite store writes them; each distinct
    value encoded once (Arrow dictionary encoding); null and NaN give an empty ``Value``."""
    from feast.protos.feast.types.Value_pb2 import Value

    def encode(value: Any) -> tuple[bytes, str | None]:
        if value is None or value != value:  # noqa: PLR0124 - NaN
            return b"", None
        proto = Value(**{kind: value})
        stored = getattr(proto, kind)
        return proto.SerializeToString(), stored if kind == "string_val" else str(stored)

    codes = values.combine_chunks().dictionary_encode()
    distinct = [encode(v) for v in codes.dictionary.to_pylist()]
    return [(b"", None) if i is None else distinct[i] for i in codes.indices.to_pylist()] if len(codes) else []


def _python(value: Any) -> Any:
    kind = value.WhichOneof("val")
    if kind is None:
        return None
    if kind in _SCALAR_KINDS:
        return getattr(value, kind)
    from feast.type_map import feast_value_type_to_python_type

    return feast_value_type_to_python_type(value)


def _key_caster(dtype: Any) -> Any:
    """How a join-key value becomes the entity's type (as ``get_online_features`` converts it): str or int."""
    kind = _proto_field(dtype)
    if kind == "string_val":
        return str
    if kind in ("int64_val", "int32_val"):
        return int
    raise TypeError(f"entity key type {dtype}: expected a string or integer key")


class SqliteOnlineAdapter:
    """Bulk writes to and prepared reads from Feast 0.67's SQLite online store (see the module's docstring).

    Build it with :meth:`for_store`, which returns None (use the public API) for any other Feast version or store.

    :param store: an open ``feast.FeatureStore`` whose online store is Feast's SQLite store.
    """

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self.config = store.config
        from feast.infra.online_stores.sqlite import SqliteOnlineStore

        self.online = store._get_provider().online_store  # private: the adapter's reason to exist
        if type(self.online) is not SqliteOnlineStore:
            raise TypeError(f"SqliteOnlineAdapter needs Feast's SqliteOnlineStore, not {type(self.online).__name__}")

    @classmethod
    def for_store(
        cls, store: FeatureStore, version: str | None = None, enabled: bool = True
    ) -> SqliteOnlineAdapter | None:
        """The adapter for ``store``, or None where the public API must be used (logged either way).

        :param version: the Feast version to check; default the installed ``feast.__version__``.
        :param enabled: False forces the public API (``MLOPS_FEAST_ADAPTER=off``).
        """
        import feast
        from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

        version = version or feast.__version__
        cfg = store.config.online_store
        reason = None
        if not enabled:
            reason = "adapter disabled (MLOPS_FEAST_ADAPTER=off)"
        elif not adapter_supports(version):
            reason = f"feast {version} is outside the adapter's series {', '.join(ADAPTER_FEAST_SERIES)}"
        elif type(cfg) is not SqliteOnlineStoreConfig or cfg.vector_enabled or cfg.enable_openai_compatible_store:
            reason = f"online store {getattr(cfg, 'type', type(cfg).__name__)} is not plain SQLite"
        if reason:
            log.info("feast online store %s: public API (%s)", store.project, reason)
            return None
        log.info("feast online store %s: SqliteOnlineAdapter (feast %s, SQLite)", store.project, version)
        return cls(store)

    # -- writes ----------------------------------------------------------------------------------------------
    def materialize(self, start: datetime, end: datetime, views: Sequence[str]) -> dict[str, int]:
        """``materialize_latest`` through the adapter; a view it cannot encode goes through Feast's own path."""
        written: dict[str, int] = {}
        with _duckdb() as con:
            for name in views:
                fv = self.store.get_feature_view(name)
                plan = _plan(fv)
                if plan is None:
                    self.store.materialize(start_date=start, end_date=end, feature_views=[name])
                    written.update(interval_counts(self.store, start, end, [name]))
                    continue
                table = latest_rows(con, plan, start, end)
                if table.num_rows:
                    self.write(plan, table)
                self.store.registry.apply_materialization(fv, self.store.project, start, end)
                written[name] = table.num_rows
        return written

    def _keys(self, plan: _ViewPlan, table: pa.Table) -> list[bytes]:
        """Serialized entity keys, one per row, as Feast's ``serialize_entity_key`` writes them.

        One string join key: Feast's encoding is a fixed prefix for the key name, then the value's length and UTF-8
        bytes; the prefix is taken from Feast's own function and the result checked against it on the first row.
        Any other shape calls Feast per row.
        """
        import struct

        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        version = self.config.entity_key_serialization_version

        def feast_key(row: tuple) -> bytes:
            values = [Value(**{t: v}) for t, v in zip(plan.key_types, row, strict=True)]
            return serialize_entity_key(
                EntityKey(join_keys=plan.join_keys, entity_values=values), entity_key_serialization_version=version
            )

        rows = list(zip(*(table.column(k).to_pylist() for k in plan.join_keys), strict=True))
        if len(plan.join_keys) != 1 or plan.key_types[0] != "string_val" or version < 3 or not rows:
            return [feast_key(row) for row in rows]
        empty, pack = feast_key(("",)), struct.Struct("<I").pack
        keys = [empty[:-4] + pack(len(raw)) + raw for raw in (v.encode("utf8") for (v,) in rows)]
        return keys if empty[-4:] == pack(0) and keys[0] == feast_key(rows[0]) else [feast_key(r) for r in rows]

    def _times(self, table: pa.Table, column: str) -> list[Any]:
        """Per row, the event time as Feast's SQLite store stores it (epoch seconds), once per distinct time."""
        from datetime import UTC, timedelta

        import pyarrow as pa
        from feast.infra.online_stores.sqlite import adapt_datetime_epoch
        from feast.utils import to_naive_utc

        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        micros = table.column(column).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).combine_chunks()
        codes = micros.dictionary_encode()
        distinct = [
            adapt_datetime_epoch(to_naive_utc(epoch + timedelta(microseconds=us)))
            for us in codes.dictionary.to_pylist()
        ]
        return [distinct[i] for i in codes.indices.to_pylist()]

    def write(self, plan: _ViewPlan, table: pa.Table) -> None:
        """One transaction per view with the SQLite store's own upsert (``online_write_batch``), by ``executemany``."""
        from feast.infra.online_stores.helpers import compute_table_id

        keys, times = self._keys(plan, table), self._times(table, plan.timestamp)
        name = compute_table_id(
            self.config.project, plan.view, self.config.registry.enable_online_feature_view_versioning
        )
        upsert = (
            f"INSERT INTO {_quote(name)} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
            "value = excluded.value, value_text = excluded.value_text, event_ts = excluded.event_ts, "
            "created_ts = excluded.created_ts;"
        )
        columns = [(name, _encoded(kind, table.column(name))) for name, kind in sorted(plan.features)]

        def rows() -> Iterable[tuple]:
            # In primary-key order: upserts walk the table's index sequentially instead of jumping around it.
            for i in sorted(range(len(keys)), key=keys.__getitem__):
                for feature, encoded in columns:
                    yield keys[i], feature, *encoded[i], times[i], None

        conn = self.online._get_conn(self.config)
        with conn:
            conn.executemany(upsert, rows())

    # -- reads -----------------------------------------------------------------------------------------------
    def changes(self) -> tuple[int, int]:
        """A token that moves on every commit: ``data_version`` (other connections), ``total_changes`` (this one)."""
        conn = self.online._get_conn(self.config)
        return conn.execute("PRAGMA data_version").fetchone()[0], conn.total_changes

    def read(self, view: FeatureView, keys: list[tuple], names: list[str]) -> list[dict[str, Any]]:
        """Per entity key (a tuple of join-key values of the entities' types), ``{feature: value}`` the store holds."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        join_keys = [c.name for c in view.entity_columns]
        kinds = [_proto_field(c.dtype) for c in view.entity_columns]
        protos = [
            EntityKey(join_keys=join_keys, entity_values=[Value(**{k: v}) for k, v in zip(kinds, key, strict=True)])
            for key in keys
        ]
        rows = self.online.online_read(config=self.config, table=view, entity_keys=protos, requested_features=names)
        return [{n: _python(values[n]) for n in names if n in values} if values else {} for _, values in rows]


class OnlineFeatureReader:
    """Online reads of ``view:feature`` references: the values of ``get_online_features(...).to_dict()``.

    Through ``adapter`` when given: one ``online_read`` per view over the distinct keys asked, and views in
    ``cache_views`` (slow-moving, e.g. time-slot keyed) kept in process until the store reports a commit. Without
    it, every read is ``FeatureStore.get_online_features`` (nothing cached).

    :param store: an open ``feast.FeatureStore``.
    :param refs: feature references, ``view:feature``.
    :param cache_views: views whose rows may be cached (at most ``cache_size`` keys each; adapter only).
    :param adapter: a :class:`SqliteOnlineAdapter` of ``store``, or None for the public API.
    """

    def __init__(
        self,
        store: FeatureStore,
        refs: Sequence[str],
        cache_views: Iterable[str] = (),
        cache_size: int = 4096,
        adapter: SqliteOnlineAdapter | None = None,
    ) -> None:
        grouped: dict[str, list[str]] = {}
        for ref in refs:
            view, name = ref.split(":", 1)
            grouped.setdefault(view, []).append(name)
        self.store, self.refs, self.adapter = store, list(refs), adapter
        self.views = [(store.get_feature_view(view), names) for view, names in grouped.items()]
        self.join_keys = list(dict.fromkeys(c.name for fv, _ in self.views for c in fv.entity_columns))
        self._casts = {c.name: _key_caster(c.dtype) for fv, _ in self.views for c in fv.entity_columns}
        self.cache_size = cache_size
        self._cached = frozenset(cache_views) if adapter is not None else frozenset()
        self._generation: tuple[Any, dict[str, dict[tuple, Any]]] = (None, {})
        #: Keys of cached views served from the cache, and read from the store.
        self.hits = self.misses = 0

    @property
    def caching(self) -> bool:
        return bool(self._cached)

    def _cache(self) -> dict[str, dict[tuple, Any]] | None:
        if not self._cached or self.adapter is None:
            return None
        token = self.adapter.changes()
        generation = self._generation
        if generation[0] != token:
            # A request that started under the previous token keeps writing into the old dict, never this one.
            generation = self._generation = (token, {})
        return generation[1]

    def read(self, entity_rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
        """Columns of join keys and features, one value per row; None where the store has no value."""
        if self.adapter is None:
            rows = [{key: row[key] for key in self.join_keys} for row in entity_rows]
            return self.store.get_online_features(features=self.refs, entity_rows=rows).to_dict()
        out: dict[str, list[Any]] = {k: [self._casts[k](row[k]) for row in entity_rows] for k in self.join_keys}
        cache = self._cache()
        for fv, names in self.views:
            keys = [c.name for c in fv.entity_columns]
            per_row = [tuple(out[k][i] for k in keys) for i in range(len(entity_rows))]
            view_cache = cache.setdefault(fv.name, {}) if cache is not None and fv.name in self._cached else None
            known = (
                {key: view_cache[key] for key in set(per_row) if key in view_cache} if view_cache is not None else {}
            )
            self.hits += len(known)
            todo = [key for key in dict.fromkeys(per_row) if key not in known]
            if todo:
                found = self.adapter.read(fv, todo, names)
                known.update(zip(todo, found, strict=True))
                if view_cache is not None:
                    self.misses += len(todo)
                    if len(view_cache) + len(todo) > self.cache_size:
                        view_cache.clear()
                    view_cache.update(zip(todo, found, strict=True))
            for name in names:
                out[name] = [known[key].get(name) for key in per_row]
        return out
