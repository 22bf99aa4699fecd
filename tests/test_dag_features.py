"""The features stage with ``dag.test()``: validated month → feature partition → Feast online store → training set.

The operators run inside a DAG defined here for the flight_delay example, wired as the use-case factory wires its
``<name>_features`` DAG (the use case's folder and its own lake ``<MLOPS_LAKE>/<name>`` on every task, the build's
XCom templating the interval and the window's end), so the test does not depend on ``dags/``.
"""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import task_states
from features_fixtures import (
    FLIGHTS,
    context,
    frames_of,
    load_spec,
    load_usecase,
    seed_validated,
    usecase_module,
    validated_frames,
)

pytestmark = pytest.mark.slow
SPEC = load_spec(FLIGHTS)
TASKS = ("build_features", "apply_feature_repo", "materialize_features", "training_set")


def features_dag():
    """The features DAG of the flight_delay example (a fresh object per run: ``dag.test`` keeps the conf)."""
    from datetime import timedelta

    from airflow.sdk import DAG, Param

    from airflow_mlops.assets import assets_for
    from airflow_mlops.operators.feature_store import (
        FeastApplyOperator,
        FeastMaterializeOperator,
        FeastTrainingSetOperator,
    )
    from airflow_mlops.operators.features import BuildFeaturesOperator
    from airflow_mlops.usecase.config import lake_url

    usecase = load_usecase(FLIGHTS)
    folder = str(usecase.folder)
    assets = assets_for(usecase.name, lake_url(usecase))
    with DAG(
        dag_id=f"test_{usecase.dag_id('features')}",
        schedule=None,
        render_template_as_native_obj=True,
        params={
            "period": Param(None, type=["null", "string"], pattern=r"^\d{4}-\d{2}$"),
            "window": Param(None, type=["null", "integer"], minimum=1),
        },
        default_args={"retries": 0, "retry_delay": timedelta(seconds=1)},
    ) as dag:
        build = BuildFeaturesOperator(
            task_id="build_features", usecase=folder, period="{{ params.period }}", multiple_outputs=True
        )
        apply = FeastApplyOperator(task_id="apply_feature_repo", usecase=folder)
        materialize = FeastMaterializeOperator(
            task_id="materialize_features",
            usecase=folder,
            interval_start=build.output["interval_start"],
            interval_end=build.output["interval_end"],
            periods=build.output["periods"],
            outlets=[assets.features],
        )
        training_set = FeastTrainingSetOperator(
            task_id="training_set",
            usecase=folder,
            end_period=build.output["period"],
            window="{{ params.window }}",
            outlets=[assets.training_set],
        )
        [build, apply] >> materialize >> training_set
    return dag


@pytest.fixture
def feast_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_FEAST_HOME", str(tmp_path / "feast"))
    return tmp_path / "feast"


@pytest.fixture
def usecase_lake(lake_root):
    """The example's own lake, ``<MLOPS_LAKE>/flight_delay`` (where the factory points its tasks)."""
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.usecase.config import lake_url

    hook = LakeHook(root_url=lake_url(load_usecase(FLIGHTS)))
    hook.ensure_zones()
    return hook


def _run(conf):
    """``dag.test()`` of a fresh :func:`features_dag`, written to the metadata DB first (``dag.test`` serializes only
    the DAGs of the configured bundles, and this one lives in a test module)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    dag = features_dag()
    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    bag = DagBag(collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, next(iter(manager.get_all_dag_bundles())).name, None)
    run = dag.test(run_conf=conf)
    return run, task_states(run)


def _xcom(run, task_id):
    (ti,) = [ti for ti in run.get_task_instances() if ti.task_id == task_id]
    return ti.xcom_pull(task_ids=task_id)


def _asset_extras(run, name: str) -> list[dict]:
    """The extras of the events of the asset ``name`` that this run emitted."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == name, AssetEvent.source_run_id == run.run_id)
        ).all()
        return [dict(e.extra) for e in rows]


def _wired(value):
    """An argument as wired: an XComArg by the task and key it reads, anything else as is."""
    from airflow.sdk.definitions.xcom_arg import PlainXComArg

    return (value.operator.task_id, value.key) if isinstance(value, PlainXComArg) else value


def test_the_dag_here_is_wired_as_the_factory_wires_it():
    """What this file runs is what the use-case factory builds (same tasks, dependencies, templates, outlets)."""
    from airflow_mlops.usecase.factory import features_dag as factory_dag

    ours, theirs = features_dag(), factory_dag(load_usecase(FLIGHTS))
    assert theirs.dag_id == "flight_delay_features" and set(ours.task_dict) == set(theirs.task_dict) == set(TASKS)
    for task_id in TASKS:
        mine, built = ours.task_dict[task_id], theirs.task_dict[task_id]
        assert type(mine) is type(built), task_id
        assert mine.upstream_task_ids == built.upstream_task_ids, task_id
        assert [a.name for a in mine.outlets] == [a.name for a in built.outlets], task_id
        for name in (*type(mine).template_fields, "usecase", "lake_root", "multiple_outputs"):
            assert _wired(getattr(mine, name)) == _wired(getattr(built, name)), (task_id, name)


def test_month_to_online_store_and_training_set(airflow_db, usecase_lake, feast_home):
    from airflow_mlops.hooks.feast_store import FeastHook

    lake = usecase_lake
    for month in ("2013-01", "2013-02"):
        seed_validated(lake, month)
    february = validated_frames("2013-02")["flights"]
    labelled = int(february["arr_delay"].notna().sum())

    run, states = _run({"period": "2013-02"})
    assert states == {(task, -1): "success" for task in TASKS}, states

    built = _xcom(run, "build_features")
    assert built["periods"] == ["2013-02"] and built["interval_start"] == "2013-02-01T00:00:00+00:00"
    assert built["partitions"]["2013-02"]["rows"]["labels"] == labelled
    assert not lake.path("features", "2013-01").exists()  # an explicitly requested period is built alone
    # the interval to materialize: the month, widened to the last view row the partition holds (February's last
    # evening departs on March 1 UTC)
    frames = frames_of(lake, ["2013-02"])
    last = max(frames[view.name][view.timestamp].max() for view in SPEC.views)
    assert last > pd.Timestamp("2013-03-01", tz="UTC")
    assert built["interval_end"] == (last + pd.Timedelta(microseconds=1)).isoformat()
    materialized = _xcom(run, "materialize_features")
    assert materialized["interval_end"] == built["interval_end"] and materialized["periods"] == ["2013-02"]
    # every view row of the partition is online: each flight of February, one row per key of the other views
    assert materialized["rows"] == {view.name: int(frames[view.name][view.key].nunique()) for view in SPEC.views}
    assert materialized["rows"]["flight_features"] == len(february)
    (features_event,) = _asset_extras(run, "flight_delay.features")
    assert features_event["periods"] == ["2013-02"] and features_event["rows"] == materialized["rows"]

    # the training-set contract, committed content-addressed in the use case's lake
    result = _xcom(run, "training_set")
    assert result["periods"] == ["2013-02"] and result["rows"] == labelled
    assert result["uri"].endswith(f"flight_delay/training_sets/{result['sha256'][:12]}/training_set.parquet")
    manifest = lake.read_manifest(lake.path("training_sets", result["sha256"][:12]))
    assert manifest["sha256"] == result["sha256"] and manifest["periods"] == ["2013-02"]
    assert manifest["validation"]["success"] is True  # the example's training_set.json suite ran
    assert result["manifest_uri"].endswith("_manifest.json")
    (set_event,) = _asset_extras(run, "flight_delay.training_set")
    assert set_event["sha256"] == result["sha256"]
    frame = pd.read_parquet(result["uri"].removeprefix("file://"))
    assert list(frame.columns) == SPEC.training_columns and len(frame) == result["rows"]
    assert frame["flight_id"].is_monotonic_increasing
    assert int(frame["is_late"].sum()) == int((february["arr_delay"] > SPEC.params["threshold_minutes"]).sum())
    # history came from January (read from validated/ for the lookback), not only from February itself
    early = frame[frame["event_timestamp"] < pd.Timestamp("2013-02-01T15:00", tz="UTC")]
    assert (
        len(early) > 200 and early["carrier_flights_30d"].gt(0).all() and early["carrier_flights_30d"].median() > 1000
    )

    # the online store answers the month's flights with their training values (the keys of their own departures,
    # from the use case's entity_keys as the service computes them), the first and the last of the month included
    module, ctx = usecase_module(FLIGHTS), context(load_usecase(FLIGHTS), "2013-02")
    flights = module.prepare_flights(february).loc[:, ["flight_id", "flight"]]  # (dest: a feature of the set)
    ordered = frame.merge(flights, on="flight_id", validate="one_to_one").sort_values("event_timestamp")
    request = ["carrier", "flight", "origin", "dest", "event_timestamp"]
    asked = pd.concat([ordered.iloc[[0, -1]], ordered.sample(50, random_state=2)], ignore_index=True)
    keys = module.entity_keys(asked.loc[:, request], ctx)
    unknown_request = pd.DataFrame([{**asked.loc[0, request].to_dict(), "carrier": "ZZ", "flight": 1}])
    hook = FeastHook(FLIGHTS, lake_root=lake.root_url)
    *online, unknown = hook.online_features(pd.concat([keys, module.entity_keys(unknown_request, ctx)]))
    online = pd.DataFrame(online)
    features = list(SPEC.feature_columns)
    pd.testing.assert_frame_equal(online[features].astype(object), asked[features].astype(object))
    assert online["weather_known"].eq(1).all() and online["carrier_flights_30d"].gt(0).all()
    # an unknown flight: the flight view's defaults, and what the request itself tells (its local hour)
    assert unknown["plane_known"] == 0 and unknown["distance"] != unknown["distance"]
    assert unknown["sched_hour"] == asked.loc[0, "sched_hour"] and unknown["carrier"] == "ZZ"

    # a second run of the same month: partitions not rebuilt, same training set (same bytes, same address)
    again, states = _run({"period": "2013-02"})
    assert set(states.values()) == {"success"}
    assert _xcom(again, "build_features")["partitions"]["2013-02"]["rebuilt"] is False
    assert _xcom(again, "training_set")["sha256"] == result["sha256"]


def test_a_month_that_was_never_validated_fails_the_run(airflow_db, usecase_lake, feast_home):
    run, states = _run({"period": "2013-05"})
    assert states[("build_features", -1)] == "failed"
    assert states[("materialize_features", -1)] in ("upstream_failed", "skipped")
    assert states[("training_set", -1)] in ("upstream_failed", "skipped")
    assert not usecase_lake.path("features", "2013-05").exists()
