"""Task links to lake reports: a task's report key is relative to its own lake, the use case's, which the link finds
through the operator even when the DAG passes only the use-case folder (as the factory does)."""

from __future__ import annotations

import pytest

from airflow_mlops.links import lake_root_of, report_url
from airflow_mlops.usecase import config

from conftest import FLIGHTS


@pytest.fixture
def lake(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_LAKE", (tmp_path / "lake").as_uri())
    return (tmp_path / "lake").as_uri()


def test_a_factory_task_links_its_report_under_its_use_case_s_lake(lake):
    from airflow_mlops.operators.drift_check import DriftCheckOperator
    from airflow_mlops.operators.validation import ValidateBatchOperator

    for operator in (
        ValidateBatchOperator(task_id="validate_batch", usecase=str(FLIGHTS), batch={}),
        DriftCheckOperator(task_id="drift_check", usecase=str(FLIGHTS)),
    ):
        assert operator.lake_root is None
        assert lake_root_of(operator) == config.lake_url(config.load(FLIGHTS)) == f"{lake}/flight_delay"
        url = report_url("reports/data_docs/x.html", lake_root_of(operator))
        assert url == "/mlops/lake/flight_delay/reports/data_docs/x.html"


def test_an_explicit_lake_root_wins_and_no_root_is_the_lake_itself(lake):
    from airflow_mlops.operators.validation import ValidateBatchOperator

    other = ValidateBatchOperator(task_id="v", usecase=str(FLIGHTS), batch={}, lake_root=f"{lake}/elsewhere")
    assert report_url("r.html", lake_root_of(other)) == "/mlops/lake/elsewhere/r.html"
    assert report_url("r.html", lake_root_of(object())) == "/mlops/lake/r.html"
