"""The Feast feature store of a use case: its configuration and repository, derived from the use case's declared
feature views (no hand-written Feast definitions), and what tasks do with it.

Named ``feast_store`` (not ``feast``): the plugin loader registers plugin files under their bare names, and a
``feast.py`` would shadow the library.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_mlops import settings

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore, RepoConfig

    from airflow_mlops.core.features import FeatureSpec
    from airflow_mlops.hooks.feast_online import OnlineFeatureReader
    from airflow_mlops.hooks.lake import LakeHook


def feast_home() -> Path:
    return Path(os.environ.get("MLOPS_FEAST_HOME") or settings.mlops_home() / "feast").resolve()


def features_root(lake_url: str) -> str:
    """Where Feast (DuckDB) reads the lake's feature partitions: a local folder for ``file://``, else the URL."""
    base = lake_url.rstrip("/")
    return f"{base.removeprefix('file://')}/features" if base.startswith("file://") else f"{base}/features"


class FeastHook(BaseHook):
    """Open the Feast store of a use case (project = the use case's name) with this deployment's configuration.

    The repository is derived from the use case's ``features.views``: one entity per join key, one feature view
    per declared view reading ``features/*/<view>.parquet`` of the lake. The registry and the SQLite online store
    live under ``MLOPS_FEAST_HOME/<project>/`` (default ``$MLOPS_HOME/feast``); the offline store is DuckDB. The
    online store is SQLite unless the configuration says otherwise, in this order: the Airflow Connection
    ``feast_conn_id`` (conn type ``feast``: Redis host, port, password, extra ``db``; or extra ``{"online_store":
    {...}}``), then ``MLOPS_FEAST_ONLINE_STORE=redis`` with ``MLOPS_FEAST_REDIS``. Online writes and reads go
    through Feast's public API (``feast_online``).

    :param usecase: the use-case folder, or a :class:`FeatureSpec` already built from it.
    :param feast_conn_id: Airflow Connection with the online store; default ``MLOPS_FEAST_CONN_ID`` (none: env).
    :param lake_root: lake root URL whose ``features/`` partitions are the offline sources; default ``MLOPS_LAKE``.
    """

    conn_name_attr = "feast_conn_id"
    default_conn_name = "feast_default"
    conn_type = "feast"
    hook_name = "MLOps Feast store"

    def __init__(
        self,
        usecase: str | Path | FeatureSpec,
        feast_conn_id: str | None = None,
        lake_root: str | None = None,
    ) -> None:
        super().__init__()
        self.usecase = usecase
        self.feast_conn_id = feast_conn_id or os.environ.get("MLOPS_FEAST_CONN_ID") or None
        self.lake_root = (lake_root or settings.lake_url()).rstrip("/")

    @cached_property
    def spec(self) -> FeatureSpec:
        from airflow_mlops.core.features import FeatureSpec
        from airflow_mlops.usecase import config

        if isinstance(self.usecase, FeatureSpec):
            return self.usecase
        return FeatureSpec.from_usecase(config.load(self.usecase))

    # -- configuration -------------------------------------------------------------------------------------
    @property
    def project(self) -> str:
        return self.spec.name

    @property
    def repo_path(self) -> Path:
        return feast_home() / self.project

    @property
    def features_root(self) -> str:
        return features_root(self.lake_root)

    def online_store_config(self) -> dict[str, Any] | None:
        """The online store override from the Connection or the environment; None keeps the SQLite default."""
        if self.feast_conn_id:
            conn = self.get_connection(self.feast_conn_id)
            extra = conn.extra_dejson
            if isinstance(extra.get("online_store"), dict):
                return dict(extra["online_store"])
            parts = [f"{conn.host}:{conn.port or 6379}"]
            if extra.get("db") is not None:
                parts.append(f"db={extra['db']}")
            if conn.password:
                parts.append(f"password={conn.password}")
            return {"type": "redis", "connection_string": ",".join(parts)}
        kind = os.environ.get("MLOPS_FEAST_ONLINE_STORE", "").strip().lower()
        if kind == "redis":
            target = os.environ.get("MLOPS_FEAST_REDIS")
            if not target:
                raise ValueError("MLOPS_FEAST_ONLINE_STORE=redis needs MLOPS_FEAST_REDIS (e.g. redis:6379,db=1)")
            return {"type": "redis", "connection_string": target}
        if kind not in ("", "sqlite"):
            raise ValueError(f"MLOPS_FEAST_ONLINE_STORE={kind!r}: expected sqlite or redis")
        return None

    def render_config(self) -> dict[str, Any]:
        """The store's configuration as ``feature_store.yaml`` would hold it (no Feast import)."""
        home = self.repo_path
        raw: dict[str, Any] = {
            "project": self.project,
            "provider": "local",
            "registry": {"registry_type": "file", "path": str(home / "registry.db"), "cache_ttl_seconds": 60},
            # DuckDB over the lake's Parquet partitions. The default dask `file` store joins every entity row to
            # every feature row of its key: it ran out of memory on a month of the reference use case.
            "offline_store": {"type": "duckdb"},
            "online_store": {"type": "sqlite", "path": str(home / "online_store.db")},
            "entity_key_serialization_version": 3,
        }
        override = self.online_store_config()
        if override is not None:
            raw["online_store"] = override
        return raw

    @cached_property
    def config(self) -> RepoConfig:
        from feast import RepoConfig

        raw = self.render_config()
        self.repo_path.mkdir(parents=True, exist_ok=True)
        config = RepoConfig(**raw)
        config.repo_path = self.repo_path
        return config

    @cached_property
    def store(self) -> FeatureStore:
        from feast import FeatureStore

        os.environ.setdefault("FEAST_USAGE", "False")
        return FeatureStore(repo_path=str(self.repo_path), config=self.config)

    # -- apply ---------------------------------------------------------------------------------------------
    def definitions(self) -> dict[str, object]:
        """The use case's Feast objects, by name: an entity per join key and a feature view per declared view."""
        from feast import Entity, FeatureView, Field, FileSource, ValueType
        from feast.types import Float64, Int64, String

        types = {"float64": Float64, "int64": Int64, "string": String}
        spec, root = self.spec, self.features_root.rstrip("/")
        tags = {"feature_version": str(spec.feature_version), "owner": "airflow-mlops", "usecase": spec.name}
        entities = {
            key: Entity(name=key, join_keys=[key], value_type=ValueType.STRING, description=f"join key {key}")
            for key in spec.join_keys()
        }
        objects: dict[str, object] = dict(entities)
        for view in spec.views:
            objects[view.name] = FeatureView(
                name=view.name,
                entities=[entities[view.key]],
                ttl=timedelta(hours=view.ttl_hours),
                schema=[Field(name=name, dtype=types[dtype]) for name, dtype in view.fields.items()],
                source=FileSource(
                    name=f"{view.name}_source",
                    path=f"{root}/*/{view.name}.parquet",
                    timestamp_field=view.timestamp,
                    description=f"features/<period>/{view.name}.parquet partitions of the lake",
                ),
                online=True,
                tags=tags,
                description=view.description,
            )
        return objects

    def apply(self) -> dict[str, Any]:
        """``feast apply`` of the repository: registers what changed, deletes what was removed, creates tables.

        Idempotent: a second apply of the same definitions changes nothing. Returns what changed.
        """
        from feast import Entity, FeatureView, Project
        from feast.repo_contents import RepoContents
        from feast.repo_operations import apply_total_with_repo_instance

        objects = list(self.definitions().values())
        views = [o for o in objects if isinstance(o, FeatureView)]
        repo = RepoContents(
            projects=[Project(name=self.store.project, description="airflow-mlops features")],
            data_sources=[v.batch_source for v in views],
            feature_views=views,
            on_demand_feature_views=[],
            stream_feature_views=[],
            label_views=[],
            entities=[o for o in objects if isinstance(o, Entity)],
            feature_services=[],
            permissions=[],
        )
        registry_diff, _, _ = self.store.plan(repo)
        changes = sorted(
            f"{d.feast_object_type}:{d.name}:{d.transition_type.name}"
            for d in registry_diff.feast_object_diffs
            if d.transition_type.name != "UNCHANGED"
        )
        apply_total_with_repo_instance(
            self.store, self.store.project, self.store.registry, repo, skip_source_validation=True
        )
        self.store.refresh_registry()
        self.log.info("feast apply: %s", ", ".join(changes) or "no changes")
        return {
            "project": self.store.project,
            "views": sorted(v.name for v in views),
            "entities": sorted(o.name for o in objects if isinstance(o, Entity)),
            "changes": changes,
            "online_store": self.config.online_store.type,
        }

    # -- materialize ---------------------------------------------------------------------------------------
    def interval_rows(self, start: datetime, end: datetime, views: list[str] | None = None) -> dict[str, int]:
        """Per view, how many entities have rows in ``[start, end]``: what a materialization writes online."""
        from airflow_mlops.hooks.feast_online import interval_counts

        return interval_counts(self.store, start, end, views)

    def materialize(self, start: datetime, end: datetime, views: list[str] | None = None) -> dict[str, int]:
        """Write the latest row per entity with a timestamp in ``[start, end]`` to the online store
        (``FeatureStore.materialize``). Returns the entities written per view.

        :raises ValueError: ``start`` after ``end``, or an unknown view.
        """
        from airflow_mlops.hooks.feast_online import materialize_latest

        return materialize_latest(self.store, start, end, views)

    # -- reads ---------------------------------------------------------------------------------------------
    def historical_features(
        self,
        entity_df: pd.DataFrame,
        refs: list[str] | None = None,
        *,
        chunk_rows: int | None = None,
        drop: list[str] | tuple[str, ...] = (),
        sort_by: str | None = None,
    ) -> pd.DataFrame:
        """Point-in-time join of ``entity_df`` (join keys + ``event_timestamp``) with the offline store.

        :param chunk_rows: join at most this many entity rows at a time, in event-time order. Each chunk is
            one Feast retrieval kept as Arrow; the chunks are concatenated and converted to pandas once, so
            the join's working memory is that of a chunk. ``None``: one retrieval.
        :param drop: columns to leave out of the result (e.g. join keys the caller no longer needs).
        :param sort_by: column to sort the result by (Feast's row order is unspecified).
        """
        import pyarrow as pa

        refs = refs or self.spec.feature_refs()
        if chunk_rows is None or len(entity_df) <= chunk_rows:
            chunks = [entity_df]
        else:
            ordered = entity_df.sort_values("event_timestamp", kind="stable")
            chunks = [ordered.iloc[i : i + chunk_rows] for i in range(0, len(ordered), chunk_rows)]
        tables = []
        for chunk in chunks:
            table = self.store.get_historical_features(entity_df=chunk, features=refs).to_arrow()
            tables.append(table.drop_columns([c for c in drop if c in table.column_names]))
        table = pa.concat_tables(tables)
        del tables, chunks
        if sort_by:
            table = table.sort_by(sort_by)
        # One block per column, Arrow buffers released as they are converted: no consolidation copy.
        return table.to_pandas(split_blocks=True, self_destruct=True)

    @cached_property
    def online_reader(self) -> OnlineFeatureReader:
        """Reads of every model feature a view serves (``get_online_features``)."""
        from airflow_mlops.hooks.feast_online import OnlineFeatureReader

        return OnlineFeatureReader(self.store, self.spec.feature_refs())

    def online_features(self, keys: pd.DataFrame) -> list[dict[str, Any]]:
        """Online feature rows for request rows' entity keys (``entity_keys``' output): defaults where a key is
        unknown, and what the request itself determines where a view did not know the entity."""
        from airflow_mlops.core.serving_model import lookup_features

        rows, _ = lookup_features(self.online_reader, self.spec, keys)
        return rows

    # -- lake ----------------------------------------------------------------------------------------------
    @cached_property
    def lake(self) -> LakeHook:
        from airflow_mlops.hooks.lake import LakeHook

        return LakeHook(root_url=self.lake_root)
