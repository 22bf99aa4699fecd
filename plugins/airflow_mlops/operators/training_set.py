"""Stage 5, training set: find a committed training-set snapshot in the lake and verify its bytes.

``TrainingStepOperator`` is the base of the training steps (resolve, train, evaluate): it reads a snapshot and
proves its bytes are the ones its manifest recorded, and loads the training config once per task.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.tracking import TRAINING_SET_FILE, TRAINING_SETS_ZONE
from airflow_mlops.exceptions import TrainingSetError
from airflow_mlops.operators.base import MlopsBaseOperator

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from airflow.sdk import Context

    from airflow_mlops.core.training import TrainingConfig


class TrainingStepOperator(MlopsBaseOperator):
    """The base of the training steps: a verified training-set snapshot and the training config.

    :param config_path: a ``training.yaml``-style config instead of the use case's ``model`` section (the
        subclasses that take it template it).
    Other arguments: those of ``MlopsBaseOperator``.
    """

    config_path: str | None = None

    @cached_property
    def training_config(self) -> TrainingConfig:
        """The use case's ``model`` section, else the ``config_path`` file, as ``core.training.TrainingConfig``.

        :raises AirflowFailException: neither is given, or the config is invalid (retrying cannot help).
        """
        if self.usecase:
            return self.checked(self.require_usecase().training_config)
        if self.config_path:
            from airflow_mlops.core.training import load_config

            return self.checked(load_config, self.config_path)
        self.fail(f"{type(self).__name__} has no training config: pass usecase=<use-case folder> (or config_path=)")

    def verified_training_set(self, reference: dict | str) -> tuple[dict[str, Any], bytes]:
        """The snapshot's XCom contract (uri, sha256, rows, months, manifest_uri, feature_views) and its bytes,
        verified against the manifest of its folder.

        :param reference: a URI of ``training_set.parquet`` (or its folder), or a dict with ``uri`` (and
            ``sha256``, then checked too).
        :raises TrainingSetError: no URI, no manifest (uncommitted), file not listed, or bytes/hash mismatch.
        """
        from airflow.sdk import ObjectStoragePath

        from airflow_mlops.core import tracking

        uri = reference.get("uri") if isinstance(reference, dict) else reference
        if not uri:
            raise TrainingSetError(f"no training-set URI in {reference!r}")
        path = ObjectStoragePath(str(uri), conn_id=self.lake_conn_id)
        if path.name != TRAINING_SET_FILE and (path / TRAINING_SET_FILE).exists():
            path = path / TRAINING_SET_FILE
        manifest = self.lake.read_manifest(path.parent)
        try:
            record = tracking.snapshot_record(reference, path.name, manifest, str(path.parent))
            data = self.lake.read_verified({**record, "uri": str(path)})
        except ValueError as err:
            raise TrainingSetError(str(err)) from err
        info = tracking.snapshot_info(reference, str(path), record, manifest, str(path.parent / "_manifest.json"))
        return info, data

    def resolve_training_set(self, reference: dict | str) -> dict[str, Any]:
        """``verified_training_set``'s contract alone."""
        return self.verified_training_set(reference)[0]

    def read_training_set(self, reference: dict | str) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The verified snapshot as a DataFrame, and its contract."""
        from airflow_mlops.core.training import read_parquet_bytes

        info, data = self.verified_training_set(reference)
        return read_parquet_bytes(data), info

    def read_training_table(self, reference: dict | str) -> tuple[pa.Table, dict[str, Any]]:
        """As ``read_training_set``, decoded but not converted to pandas (``split_holdout`` of a table converts
        only the rows asked for)."""
        from airflow_mlops.core.training import read_parquet_table

        info, data = self.verified_training_set(reference)
        return read_parquet_table(data), info


class ResolveTrainingSetOperator(TrainingStepOperator):
    """Find a committed training-set snapshot in the lake, verify it, and hand its reference on.

    Which snapshot: ``training_set`` if given (a URI or the feature stage's XCom); else the
    ``training_set_uri`` in the extra of the Asset event that triggered the run; else the newest committed
    snapshot under ``training_sets/``.

    :param training_set: URI of ``training_set.parquet`` (or its folder), or the feature stage's dict
        (templated); ``None`` or ``""``: from the triggering event, else the newest snapshot.
    :param lake_root: lake root URL; default the use case's lake, else ``MLOPS_LAKE``.
    :param lake_conn_id: connection with the lake's credentials.
    Other arguments: those of ``MlopsBaseOperator``.
    :return: (XCom) uri, sha256, rows, months, manifest_uri, feature_views.
    :raises TrainingSetError: nothing to train on, or the snapshot fails verification.
    """

    template_fields = ("training_set",)
    ui_color = "#fdf5e6"

    def __init__(self, *, training_set: dict | str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.training_set = training_set

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core.tracking import snapshot_reference

        reference = self.training_set
        if not reference:
            reference = snapshot_reference(context.get("triggering_asset_events"))
            if reference:
                self.log.info("training set from the triggering asset event: %s", reference)
        info = self.resolve_training_set(reference or self._newest())
        self.log.info("training set %s (sha256 %s, %d rows) verified", info["uri"], info["sha256"][:12], info["rows"])
        return info

    def _newest(self) -> str:
        """The newest committed snapshot under ``training_sets/`` (by its manifest's commit time,
        ``core.batches.newest_committed``)."""
        from airflow_mlops.core.batches import newest_committed

        zone = self.lake.path(TRAINING_SETS_ZONE)
        candidates = {}
        if zone.exists():
            for folder in zone.iterdir():
                manifest = self.lake.read_manifest(folder) if folder.is_dir() else None
                if manifest and TRAINING_SET_FILE in (manifest.get("files") or {}):
                    candidates[str(folder / TRAINING_SET_FILE)] = manifest
        newest = newest_committed(candidates)
        if newest is None:
            raise TrainingSetError(
                f"no committed training set under {self.lake.url(zone)}: run the feature stage, or trigger "
                'with {"training_set_uri": "..."}'
            )
        self.log.info("no training set named: using the newest committed snapshot %s", newest)
        return newest
