"""MLflow tracking and model registry: where runs, models, aliases and the promotion ledger live.

Named ``mlflow_registry`` on purpose: the plugin loader registers plugin files under their bare name, and a
module called ``mlflow`` would shadow the library.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseHook

from airflow_mlops import settings
from airflow_mlops.core import ledger as ledger_core

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

#: Experiments named ``<LEDGER_PREFIX>/<model>/<seq>`` are the promotion ledger's entries (see ``append_entry``).
LEDGER_PREFIX = "mlops-ledger"
LEDGER_ENTRY_TAG = "mlops.ledger.entry"
#: Registered-model tag mirroring each ledger entry, so the model's page in the MLflow UI shows its history.
LEDGER_MODEL_TAG = "mlops.ledger.{seq:06d}"
SOURCE_RUN_TAG = "mlops.source_run_id"


class MlflowHook(BaseHook):
    """Talk to MLflow tracking and the model registry.

    Where MLflow is, in order: the Airflow connection ``mlflow_conn_id`` (extra ``tracking_uri``,
    ``registry_uri``, ``artifact_location``, ``ui_url``; or host/port/schema of a tracking server), the
    environment (``MLFLOW_TRACKING_URI``, ``MLFLOW_REGISTRY_URI``), else an embedded SQLite store in
    ``$MLOPS_HOME/mlflow/mlflow.db`` whose experiments keep their artifacts in the lake (``mlflow-artifacts/``).

    :param mlflow_conn_id: the Airflow connection of the MLflow server; default ``mlflow_default``.
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "mlflow"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.mlflow_conn_id = mlflow_conn_id

    # -- where MLflow is -----------------------------------------------------------------------------------
    @cached_property
    def _conn_settings(self) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = self.get_connection(self.mlflow_conn_id)
        except AirflowNotFoundException:
            return {}
        extra = conn.extra_dejson or {}
        found = {k: extra[k] for k in ("tracking_uri", "registry_uri", "artifact_location", "ui_url") if extra.get(k)}
        if "tracking_uri" not in found and conn.host:
            scheme = conn.schema or "http"
            found["tracking_uri"] = f"{scheme}://{conn.host}" + (f":{conn.port}" if conn.port else "")
        return found

    @cached_property
    def tracking_uri(self) -> str:
        uri = self._conn_settings.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return uri
        db = settings.mlops_home() / "mlflow" / "mlflow.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db}"

    @cached_property
    def registry_uri(self) -> str:
        # Taken from the same place as the tracking URI: mlflow.set_registry_uri() writes MLFLOW_REGISTRY_URI
        # into the environment, so a stale value may linger there when the tracking URI comes from elsewhere.
        if self._conn_settings.get("tracking_uri"):
            return self._conn_settings.get("registry_uri") or self.tracking_uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ.get("MLFLOW_REGISTRY_URI") or self.tracking_uri
        return self.tracking_uri

    @property
    def is_embedded(self) -> bool:
        return not self.tracking_uri.startswith(("http://", "https://", "databricks"))

    @cached_property
    def artifact_root(self) -> str | None:
        """Where new experiments keep artifacts: explicit for the embedded store, the server's choice otherwise."""
        configured = self._conn_settings.get("artifact_location") or os.environ.get("MLOPS_MLFLOW_ARTIFACTS")
        if configured:
            return configured.rstrip("/")
        return f"{settings.lake_url()}/mlflow-artifacts" if self.is_embedded else None

    @cached_property
    def ui_url(self) -> str | None:
        url = self._conn_settings.get("ui_url") or os.environ.get("MLFLOW_UI_URL")
        if not url and not self.is_embedded:
            url = self.tracking_uri
        return url.rstrip("/") if url else None

    @cached_property
    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    def activate(self) -> None:
        """Point MLflow's fluent API (``mlflow.start_run``, ``log_model``) at this hook's store."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)

    def get_or_create_experiment(self, name: str) -> str:
        """The experiment's id, creating it with an explicit artifact location (else artifacts land in ./mlruns)."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return found.experiment_id
        location = f"{self.artifact_root}/{_safe(name)}" if self.artifact_root else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException as err:  # created by a concurrent task since the lookup
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.client.get_experiment_by_name(name).experiment_id

    def log_sklearn_model(
        self,
        run_id: str,
        model: Any,
        *,
        name: str = "model",
        experiment_id: str | None = None,
        params: dict[str, Any] | None = None,
        **save_kwargs: Any,
    ) -> Any:
        """Log a fitted scikit-learn model to the run ``run_id`` with MLflow's sklearn flavor; returns ``ModelInfo``.

        ``save_kwargs`` are those of ``mlflow.sklearn.save_model`` (signature, input example, pip requirements,
        serialization format, ``pyfunc_predict_fn`` ...). The model is MLflow 3's logged model of the run (see
        ``create_logged_model``), ``READY`` once its artifacts are uploaded (``FAILED`` if that fails). The
        run's status is left as it was.

        The steps of ``mlflow.sklearn.log_model``, through MLflow's public API, less what they cost here for
        nothing: this needs no active run (it can run on any thread), and it reads nothing back from the store
        that it already knows (given ``experiment_id`` and ``params``, the run's, it fetches no run; the logged
        model's artifact location comes from creating it). MLflow's post-log self-check is left out: it
        reloads the saved model through pyfunc and predicts the serving input example, a third of
        ``log_model``'s time, and only warns when that fails. The training operator scores every training row
        (the example's among them) for its training metrics, the serving stage's infra validation serves the
        model for real, and ``tests/test_registry.py`` loads logged models through pyfunc and scores their
        input example.
        """
        logged = self.create_logged_model(run_id, name=name, experiment_id=experiment_id, params=params)
        return self.save_sklearn_model(logged, model, **save_kwargs)

    def create_logged_model(
        self,
        run_id: str,
        *,
        name: str = "model",
        experiment_id: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """Create the run's logged model, ``PENDING`` until ``save_sklearn_model`` fills it: in the run's
        experiment and artifact store, with the run's parameters and the usual context tags, linked to the run
        as its output. ``experiment_id`` and ``params`` are the run's (read from the store if not given)."""
        from mlflow.entities import LoggedModelOutput
        from mlflow.tracking.context.registry import resolve_tags

        if experiment_id is None or params is None:
            run = self.client.get_run(run_id)
            experiment_id = experiment_id or run.info.experiment_id
            params = run.data.params if params is None else params
        logged = self.client.create_logged_model(
            experiment_id,
            name=name,
            source_run_id=run_id,
            params={k: str(v) for k, v in params.items()},
            tags=resolve_tags(),
        )
        try:
            self.client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        except BaseException:
            self.fail_logged_model(logged.model_id)
            raise
        return logged

    def save_sklearn_model(self, logged: Any, model: Any, **save_kwargs: Any) -> Any:
        """Save the fitted ``model`` into the logged model ``logged`` (``create_logged_model``) with
        ``mlflow.sklearn.save_model(**save_kwargs)``, upload it to the logged model's artifact location and
        mark it ``READY`` (``FAILED`` if any of that fails); returns MLflow's ``ModelInfo``."""
        import tempfile

        import mlflow.sklearn
        from mlflow.entities import LoggedModelStatus
        from mlflow.models import Model

        try:
            mlflow_model = Model(
                artifact_path=logged.artifact_location,
                model_uuid=logged.model_id,
                run_id=logged.source_run_id,
                model_id=logged.model_id,
            )
            with tempfile.TemporaryDirectory(prefix="mlflow-model-") as tmp:
                path = os.path.join(tmp, logged.name)
                mlflow.sklearn.save_model(model, path, mlflow_model=mlflow_model, **save_kwargs)
                self.upload_artifacts(logged.artifact_location, path)
            logged = self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        except BaseException:
            self.fail_logged_model(logged.model_id)
            raise
        return mlflow_model.get_model_info(logged)

    def fail_logged_model(self, model_id: str) -> None:
        """Mark a logged model ``FAILED`` (best effort: the error that led here is the one to report)."""
        import contextlib

        from mlflow.entities import LoggedModelStatus

        with contextlib.suppress(Exception):
            self.client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)

    def upload_artifacts(self, artifact_uri: str, local_dir: str, artifact_path: str | None = None) -> None:
        """Upload the files under ``local_dir`` to ``artifact_uri`` (a run's or a logged model's artifact root,
        as known from creating it), under ``artifact_path``: ``MlflowClient.log_artifacts`` less its store
        lookup of where that run's artifacts go."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        get_artifact_repository(artifact_uri, tracking_uri=self.tracking_uri).log_artifacts(local_dir, artifact_path)

    def run_artifact_text(self, run_id: str, path: str) -> str | None:
        """The text of the run's artifact ``path``, or None (logged) when it cannot be read."""
        import mlflow

        self.activate()
        try:
            return mlflow.artifacts.load_text(f"runs:/{run_id}/{path}")
        except Exception as err:  # noqa: BLE001 - the caller decides what a missing artifact means
            self.log.warning("cannot read %s of run %s: %s", path, run_id, err)
            return None

    # -- links ---------------------------------------------------------------------------------------------
    def run_url(self, run_id: str, experiment_id: str | None = None) -> str | None:
        if not self.ui_url:
            return None
        experiment_id = experiment_id or self.client.get_run(run_id).info.experiment_id
        return f"{self.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_version_url(self, name: str, version: str | int) -> str | None:
        return f"{self.ui_url}/#/models/{quote(name)}/versions/{version}" if self.ui_url else None

    # -- registry ------------------------------------------------------------------------------------------
    def alias_version(self, name: str, alias: str) -> str | None:
        """The version ``alias`` points at, or ``None`` (no such alias, or no such model)."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise

    def versions_of_run(self, name: str, run_id: str) -> list[ModelVersion]:
        found = self.client.search_model_versions(f"name = '{_quote(name)}' and run_id = '{_quote(run_id)}'")
        return sorted(found, key=lambda v: int(v.version))

    def register(self, name: str, model_uri: str, run_id: str, tags: dict[str, str] | None = None) -> tuple[str, bool]:
        """Register the run's model as a version of ``name``, once: a version of the same run is reused.

        :return: (version, created) — ``created`` is False when an earlier attempt had registered it.
        """
        from mlflow.exceptions import MlflowException

        existing = self.versions_of_run(name, run_id)
        if existing:
            version = existing[0]
            if len(existing) > 1:
                self.log.warning("run %s has %d versions of %s; using the first", run_id, len(existing), name)
            return str(version.version), False
        try:
            self.client.create_registered_model(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        import mlflow

        self.activate()
        created = mlflow.register_model(model_uri, name, tags={SOURCE_RUN_TAG: run_id, **(tags or {})})
        return str(created.version), True

    # -- promotion ledger ----------------------------------------------------------------------------------
    def read_ledger(self, name: str) -> list[ledger_core.LedgerEntry]:
        """Every ledger entry of registered model ``name``, oldest first."""
        from mlflow.entities import ViewType

        prefix = f"{LEDGER_PREFIX}/{name}/"
        entries, token = [], None
        while True:
            page = self.client.search_experiments(
                view_type=ViewType.ALL,
                max_results=1000,
                filter_string=f"name LIKE '{_like(prefix)}%'",
                page_token=token,
            )
            for experiment in page:
                if experiment.name.startswith(prefix) and LEDGER_ENTRY_TAG in experiment.tags:
                    entries.append(ledger_core.LedgerEntry.from_dict(json.loads(experiment.tags[LEDGER_ENTRY_TAG])))
            token = page.token
            if not token:
                break
        return sorted(entries, key=lambda e: e.seq)

    def append_entry(self, entry: ledger_core.LedgerEntry) -> bool:
        """Append ``entry`` iff no entry with its ``seq`` exists; atomic across processes. False: seq was taken.

        The entry is an experiment named ``mlops-ledger/<model>/<seq>`` created with the entry as a tag, in one
        call. Experiment names are unique in every MLflow backend (a database constraint behind the SQLite
        store and the tracking server alike), so of two promoters that read the same ledger head exactly one
        can append the next entry: this is the compare-and-set MLflow itself does not offer.
        """
        from mlflow.exceptions import MlflowException

        name = f"{LEDGER_PREFIX}/{entry.model}/{entry.seq:06d}"
        location = f"{self.artifact_root}/{_safe(name)}" if self.artifact_root else None
        tags = {
            LEDGER_ENTRY_TAG: entry.to_json(),
            "mlops.ledger.model": entry.model,
            "mlops.ledger.seq": str(entry.seq),
        }
        try:
            self.client.create_experiment(name, artifact_location=location, tags=tags)
        except MlflowException as err:
            if err.error_code == "RESOURCE_ALREADY_EXISTS":
                return False
            raise
        return True

    def settle_alias(self, name: str, alias: str, attempts: int = 20) -> str | None:
        """Make ``alias`` point where the ledger's newest entry says, and keep it there.

        Called by every writer after its own append (and before reading the state): whoever moves the alias
        re-reads the ledger afterwards and corrects a stale write, so the alias converges on the newest entry
        even when a slow promoter writes after a newer one.
        """
        target = None
        for _ in range(attempts):
            last = ledger_core.head(self.read_ledger(name))
            if last is None:
                return self.alias_version(name, alias)
            target = last.to_version
            if self.alias_version(name, alias) == target:
                # Stable only if no newer entry appeared meanwhile.
                newest = ledger_core.head(self.read_ledger(name))
                if newest is not None and newest.seq == last.seq:
                    return target
                continue
            self.client.set_registered_model_alias(name, alias, target)
        raise RuntimeError(f"alias {name}@{alias} did not settle on the ledger's head after {attempts} attempts")

    def transition(
        self,
        name: str,
        alias: str,
        *,
        to_version: str | None,
        expected_from: str | None,
        action: str,
        triggered_by: dict[str, Any],
        gate: dict[str, Any] | None = None,
        reason: str | None = None,
        check_expected: bool = True,
        approval: dict[str, Any] | None = None,
    ) -> tuple[ledger_core.LedgerEntry, bool]:
        """Move ``alias`` to ``to_version`` iff it still points at ``expected_from``; record it in the ledger.

        ``to_version=None`` with ``action='rollback'`` means "the previous champion". A retry of the same
        Airflow task returns the entry it appended before instead of appending again.

        :return: (entry, appended) — ``appended`` is False for a retry that found its own entry.
        :raises LedgerConflict: the alias moved since ``expected_from`` was read, or a concurrent writer won.
        """
        entries = self.read_ledger(name)
        own = [e for e in entries if ledger_core.same_trigger(e, triggered_by) and e.action == action]
        if own and (to_version is None or own[-1].to_version == str(to_version)):
            self.settle_alias(name, alias)
            return own[-1], False

        current = ledger_core.expected_state(entries, self.alias_version(name, alias))
        if entries:
            self.settle_alias(name, alias)
        if check_expected and (current or None) != (str(expected_from) if expected_from else None):
            raise ledger_core.LedgerConflict(
                f"{name}@{alias} is at version {current or '(none)'}, but this {action} expected it at "
                f"{expected_from or '(none)'} (the version the gate compared against): another promotion or "
                "rollback happened in between. Re-run the evaluation against the new champion."
            )
        if action == ledger_core.ROLLBACK and to_version is None:
            to_version = ledger_core.rollback_target(entries)
        if to_version is None:
            raise ValueError("a promotion needs a version to promote")
        if str(to_version) == current:
            raise ledger_core.LedgerConflict(f"{name}@{alias} already points at version {to_version}")
        self.client.get_model_version(name, str(to_version))  # raises if the version does not exist

        last = ledger_core.head(entries)
        entry = ledger_core.LedgerEntry(
            seq=(last.seq + 1) if last else 1,
            action=action,
            model=name,
            alias=alias,
            from_version=current,
            to_version=str(to_version),
            triggered_by=triggered_by,
            gate=gate,
            reason=reason,
            timestamp=ledger_core.now(),
            approval=approval,
        )
        if not self.append_entry(entry):
            winner = next((e for e in self.read_ledger(name) if e.seq == entry.seq), None)
            raise ledger_core.LedgerConflict(
                f"lost a race for {name}@{alias}: ledger entry #{entry.seq} was taken by a concurrent "
                f"{winner.action if winner else 'writer'} to version {winner.to_version if winner else '?'} "
                f"({json.dumps(winner.triggered_by) if winner else ''}); {alias} was not moved by this task"
            )
        self.settle_alias(name, alias)
        self._mirror(entry)
        return entry, True

    def _mirror(self, entry: ledger_core.LedgerEntry) -> None:
        """Copy the entry onto the registered model and the version it moved to, for people reading the UI."""
        self.client.set_registered_model_tag(entry.model, LEDGER_MODEL_TAG.format(seq=entry.seq), entry.to_json())
        self.client.set_model_version_tag(
            entry.model, entry.to_version, f"mlops.{entry.alias}_since", f"{entry.timestamp} (ledger #{entry.seq})"
        )


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _quote(value: str) -> str:
    return str(value).replace("'", "''")


def _like(value: str) -> str:
    # '_' and '%' are LIKE wildcards; results are re-filtered by exact prefix, so a wider match is harmless.
    return _quote(value)
