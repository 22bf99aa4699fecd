"""The ingest/validate DAG run with ``dag.test()`` on a real lake, real GX and a real (SQLite) Airflow DB."""

from __future__ import annotations

import json

import pytest

from airflow_mlops import replay

from conftest import load_dag, task_states

pytestmark = pytest.mark.slow
DAG_ID = "mlops_ingest_validate"


@pytest.fixture
def dag(airflow_db):
    # Parsed afresh for every test: dag.test(run_conf=...) leaves the conf in the DAG object's params.
    return load_dag(DAG_ID)


def _run(dag, conf=None):
    run = dag.test(run_conf=conf or {})
    return run, task_states(run)


def _validated_events(month: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == "validated_batch")
        ).all()
        return [e.extra for e in rows if e.extra.get("month") == month]


def _files(folder) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_good_month_is_ingested_validated_and_announced(dag, lake):
    marker = replay.land("2013-01", ring=False)
    run, states = _run(dag, {"month": "2013-01"})
    assert str(run.state) in ("success", "DagRunState.SUCCESS")
    assert states == {("ingest_batch", -1): "success", ("validate_batch", 0): "success"}

    assert not lake.path("landing", "2013-01").exists()  # moved, not copied
    (raw_dir,) = list(lake.path("raw", "2013-01").iterdir())
    raw = lake.read_manifest(raw_dir)
    assert {n: r["sha256"] for n, r in raw["files"].items()} == {n: r["sha256"] for n, r in marker["files"].items()}

    validated = lake.read_manifest(lake.path("validated", "2013-01"))
    assert validated["batch_sha256"] == raw["sha256"]
    assert validated["files"]["flights.parquet"]["rows"] == 27004
    assert validated["validation"]["success"] is True

    import pandas as pd

    flights = pd.read_parquet(validated["files"]["flights.parquet"]["uri"].removeprefix("file://"))
    assert len(flights) == 27004 and str(flights["time_hour"].dtype) == "datetime64[us, UTC]"
    assert not [c for c in flights.columns if c.startswith("_")]

    (event,) = _validated_events("2013-01")[-1:]
    assert event["rows"] == 27004 and event["sha256"] == validated["files"]["flights.parquet"]["sha256"]
    assert event["interval_start"].startswith("2013-01-01") and event["interval_end"].startswith("2013-02-01")
    docs = [s["docs_page"] for s in validated["validation"]["suites"]]
    assert all(lake.path("reports", "data_docs", page).exists() for page in docs)


def test_reingesting_the_same_bytes_is_a_no_op(dag, lake):
    replay.land("2013-02", ring=False)
    _run(dag, {"month": "2013-02"})
    first = lake.read_manifest(lake.path("validated", "2013-02"))
    replay.land("2013-02", ring=False)  # the upstream sends the same month again
    run, states = _run(dag, {"month": "2013-02"})
    assert states[("validate_batch", 0)] == "success"
    assert len(list(lake.path("raw", "2013-02").iterdir())) == 1
    assert lake.read_manifest(lake.path("validated", "2013-02")) == first  # not rewritten
    assert not lake.path("landing", "2013-02").exists()


def test_a_run_takes_every_pending_batch(dag, lake):
    replay.land("2013-05", ring=False)
    replay.land("2013-06", ring=False)
    run, states = _run(dag)  # a manual run without a month, like a landing event
    assert states == {
        ("ingest_batch", -1): "success",
        ("validate_batch", 0): "success",
        ("validate_batch", 1): "success",
    }
    assert lake.read_manifest(lake.path("validated", "2013-05")) and lake.read_manifest(
        lake.path("validated", "2013-06")
    )


def test_nothing_landed_skips_the_run(dag, lake):
    run, states = _run(dag)
    assert states[("ingest_batch", -1)] == "skipped"
    assert _files(lake.path("validated")) == set()


def test_a_named_month_that_never_landed_fails_clearly(dag, lake):
    run, states = _run(dag, {"month": "2013-09"})
    assert states[("ingest_batch", -1)] == "failed"
    assert _files(lake.path("raw")) == set()


# The expectation each kind of broken batch must name.
EXPECTED_FAILURE = {
    "renamed_column": "expect_table_columns_to_match_set",
    "null_column": "expect_column_values_to_not_be_null",
    "out_of_range": "expect_column_values_to_be_between",
    "duplicate_keys": "expect_compound_columns_to_be_unique",
    "empty_file": "expect_table_row_count_to_be_between",
    "truncated_file": "expect_table_row_count_to_be_between",
    "stale_weather": "expect_column_values_to_be_in_set",
}


@pytest.fixture(scope="module")
def march_validated(airflow_db, tmp_path_factory):
    """One lake for all corruption cases: March 2013 validated once, then re-delivered broken in each case."""
    from airflow_mlops.hooks.lake import LakeHook

    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("lake").as_uri()
        patch.setenv("MLOPS_LAKE", root)
        replay.land("2013-03", ring=False)
        _, states = _run(load_dag(DAG_ID), {"month": "2013-03"})
        assert states[("validate_batch", 0)] == "success"
        lake = LakeHook(root_url=root)
        yield lake, lake.read_manifest(lake.path("validated", "2013-03"))


@pytest.mark.parametrize("kind", sorted(EXPECTED_FAILURE), ids=str)
def test_corrupted_month_is_quarantined_and_stops_the_line(dag, march_validated, monkeypatch, kind):
    lake, before = march_validated
    monkeypatch.setenv("MLOPS_LAKE", lake.root_url)
    announced = len(_validated_events("2013-03"))
    marker = replay.land("2013-03", corrupt=kind, ring=False)  # a broken re-delivery of a validated month
    run, states = _run(dag, {"month": "2013-03"})
    assert states[("ingest_batch", -1)] == "success"
    assert states[("validate_batch", 0)] == "failed"
    assert "failed" in str(run.state)

    assert lake.read_manifest(lake.path("validated", "2013-03")) == before  # validated/ untouched
    assert _files(lake.path("validated", "2013-03")) == {
        "_manifest.json",
        "flights.parquet",
        "weather.parquet",
        "planes.parquet",
    }
    from airflow_mlops.core.batches import batch_hash

    digest = batch_hash({name: rec["sha256"] for name, rec in marker["files"].items()})
    quarantined = lake.path("quarantine", "2013-03", digest[:12])
    assert _files(quarantined) == {
        "_manifest.json",
        "flights.csv",
        "weather.csv",
        "planes.csv",
        "validation_result.json",
        "data_docs.html",
    }
    manifest = lake.read_manifest(quarantined)
    failed = [f["expectation"] for s in manifest["validation"]["suites"] for f in s["failed"]]
    assert EXPECTED_FAILURE[kind] in failed
    result = json.loads((quarantined / "validation_result.json").read_bytes())
    assert result["success"] is False and set(result["results"]) == {"flights_batch", "weather_batch", "planes_batch"}
    # each GX result names the batch by the lake's content hash (GX's own frame hash is skipped)
    assert {r["meta"]["batch_markers"]["batch_sha256"] for r in result["results"].values()} == {digest}
    html = (quarantined / "data_docs.html").read_text()
    assert "<base href=" in html and "Great Expectations" in html
    assert len(_validated_events("2013-03")) == announced  # the broken delivery was not announced
