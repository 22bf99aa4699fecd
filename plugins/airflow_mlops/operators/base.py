"""The base of every operator of the suite: the use case, the connections and the hooks, owned once.

``MlopsBaseOperator`` is to this suite what ``AwsBaseOperator`` is to Amazon's provider: it takes the arguments
every step shares (the use-case folder, the lake and the connection ids) and owns the hooks as cached properties,
built on first use inside ``execute`` (so nothing heavy is imported while a DAG file is parsed). A subclass wires
core functions to those hooks and returns a small, JSON-able result.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from airflow.sdk import Context

    from airflow_mlops.hooks.bentoml_serving import BentoServingHook
    from airflow_mlops.hooks.evidently_workspace import EvidentlyHook
    from airflow_mlops.hooks.feast_store import FeastHook
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.usecase.config import UseCase

MLFLOW_DEFAULT_CONN = "mlflow_default"
BENTOML_DEFAULT_CONN = "bentoml_default"


class MlopsBaseOperator(BaseOperator):
    """Arguments and hooks every operator of the suite shares.

    :param usecase: the use-case folder (holding ``mlops.yaml``); its typed config is ``usecase_config``, loaded
        once per task. Optional for the operators that also take their settings as arguments.
    :param lake_root: the lake root URL (``file://`` or ``s3://``; templated where a subclass says so); default
        ``MLOPS_LAKE`` under the use case's name (``airflow_mlops.usecase.config.lake_url``), else ``MLOPS_LAKE``.
    :param lake_conn_id: connection with the lake's credentials (default ``MLOPS_LAKE_CONN_ID``; none for file://).
    :param mlflow_conn_id: the MLflow connection (tracking and registry URIs).
    :param feast_conn_id: connection of Feast's online store (production: Redis); default the embedded SQLite.
    :param bentoml_conn_id: the serving endpoint's connection (its host, port and admin token).
    :param evidently_workspace: Evidently workspace folder; default ``MLOPS_EVIDENTLY_WORKSPACE`` or
        ``$MLOPS_HOME/evidently``.
    """

    def __init__(
        self,
        *,
        usecase: str | None = None,
        lake_root: str | None = None,
        lake_conn_id: str | None = None,
        mlflow_conn_id: str = MLFLOW_DEFAULT_CONN,
        feast_conn_id: str | None = None,
        bentoml_conn_id: str = BENTOML_DEFAULT_CONN,
        evidently_workspace: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.usecase = usecase
        self.lake_root = lake_root
        self.lake_conn_id = lake_conn_id
        self.mlflow_conn_id = mlflow_conn_id
        self.feast_conn_id = feast_conn_id
        self.bentoml_conn_id = bentoml_conn_id
        self.evidently_workspace = evidently_workspace

    # -- the use case -----------------------------------------------------------------------------------------
    @cached_property
    def usecase_config(self) -> UseCase | None:
        """The use case's typed config (loaded once per task), or None without ``usecase``; a broken config fails
        the task without retries."""
        from airflow_mlops.usecase import config

        return self.checked(config.load, self.usecase) if self.usecase else None

    def require_usecase(self) -> UseCase:
        """``usecase_config``, failing without retries when the operator was given no use case."""
        if self.usecase_config is None:
            self.fail(f"{type(self).__name__} needs usecase=<use-case folder holding mlops.yaml>")
        return self.usecase_config

    @property
    def lake_url(self) -> str | None:
        """``lake_root``, else the use case's lake (``MLOPS_LAKE/<name>``), else None (the hooks' default)."""
        if self.lake_root:
            return self.lake_root
        if self.usecase_config is not None:
            from airflow_mlops.usecase import config

            return config.lake_url(self.usecase_config)
        return None

    # -- the hooks, one per external system -------------------------------------------------------------------
    @cached_property
    def lake(self) -> LakeHook:
        from airflow_mlops.hooks.lake import LakeHook

        return LakeHook(root_url=self.lake_url, lake_conn_id=self.lake_conn_id)

    @cached_property
    def mlflow_hook(self) -> MlflowHook:
        from airflow_mlops.hooks.mlflow_registry import MlflowHook

        return MlflowHook(mlflow_conn_id=self.mlflow_conn_id)

    @cached_property
    def feast(self) -> FeastHook:
        from airflow_mlops.hooks.feast_store import FeastHook

        return FeastHook(self.require_usecase().folder, feast_conn_id=self.feast_conn_id, lake_root=self.lake_url)

    @cached_property
    def serving_hook(self) -> BentoServingHook:
        from airflow_mlops.hooks.bentoml_serving import BentoServingHook

        return BentoServingHook(self.require_usecase().folder, bentoml_conn_id=self.bentoml_conn_id)

    @cached_property
    def evidently(self) -> EvidentlyHook:
        from airflow_mlops.hooks.evidently_workspace import EvidentlyHook

        return EvidentlyHook(workspace=self.evidently_workspace)

    # -- telling people ---------------------------------------------------------------------------------------
    def notify(
        self,
        context: Context,
        event: str,
        *,
        what: str,
        why: str | Iterable[str] | None = None,
        links: Mapping[str, str | None] | None = None,
    ) -> list[str]:
        """Notify the use case's channels of ``event`` (``airflow_mlops.notifications.notify_event``); without a
        use case, or one without ``notifications``, nothing. Never raises: a failed delivery is a logged warning.

        :param event: one of ``airflow_mlops.notifications.EVENTS``.
        :param what: what happened; ``why``: the reasons; ``links``: label → URL of the report or page to look at.
        :return: the channels that delivered.
        """
        if self.usecase_config is None:
            return []
        from airflow_mlops.notifications import notify_event

        return notify_event(self.usecase_config, event, context, what=what, why=why, links=links)

    # -- failing well -----------------------------------------------------------------------------------------
    def checked(self, build: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``build(*args, **kwargs)``; its ValueError (a bad config, a broken contract) fails without retries.

        :param build: e.g. a config loader or a settings class's ``from_config``.
        """
        from airflow.sdk.exceptions import AirflowFailException

        try:
            return build(*args, **kwargs)
        except ValueError as err:
            raise AirflowFailException(str(err)) from err

    def fail(self, message: str) -> NoReturn:
        """Fail the task without retries: what is wrong cannot change on a retry (``message`` says what to fix).

        :param message: what is wrong and where.
        """
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(message)
