"""The main job in CI: a 3-month replay of the whole loop through the real scheduler and the real services.

``python -m airflow_mlops.demo --months 2013-01:2013-03 --corrupt 2013-02:null_column`` in a fresh MLOPS_HOME:
the embedded Airflow (API server, scheduler, DAG processor, triggerer) and the serving process run as real
processes; the driver only lands files, sends traffic over loopback HTTP and posts the outcomes Asset event
through the REST API. January and February have no champion (February bootstraps the first model), March is
answered by it and monitored.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

from airflow_mlops.serving_process import free_port

from conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MONTHS = ["2013-01", "2013-02", "2013-03"]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    from airflow_mlops import demo
    from airflow_mlops.devstack import Stack
    from airflow_mlops.serving_process import embedded

    home = tmp_path_factory.mktemp("replay-home")
    # One scheduled month keeps the ingest catch-up short; everything else is the shipped configuration.
    config = yaml.safe_load((ROOT / "include" / "config" / "pipeline.yaml").read_text())
    config["ingest"].update(schedule_first_month="2013-01", schedule_last_month="2013-01")
    (home / "pipeline.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as patch:
        for name in [k for k in os.environ if k.startswith(("AIRFLOW", "MLFLOW"))]:
            patch.delenv(name)
        patch.setenv("MLOPS_CONFIG", str(home / "pipeline.yaml"))
        patch.setenv("MLOPS_HOME", str(home))
        patch.setenv("MLOPS_LAKE", (home / "lake").as_uri())
        patch.setenv("MLOPS_AIRFLOW_PORT", str(free_port()))
        patch.setenv("MLOPS_SERVING_PORT", str(free_port()))
        stack = Stack.from_env()
        try:
            status = demo.main(["--months", "2013-01:2013-03", "--corrupt", "2013-02:null_column", "--timeout", "900"])
            summary = json.loads((home / "lake" / "reports" / "replay" / "summary.json").read_text())
            yield {"status": status, "summary": summary, "home": home, "stack": stack}
        finally:
            embedded().stop()
            stack.down()
            assert stack.pids() == {} and embedded().pid() is None


def _months(replayed) -> dict[str, dict]:
    return {m["month"]: m for m in replayed["summary"]["months"]}


def test_the_replay_finishes_and_every_month_is_validated(replayed):
    assert replayed["status"] == 0
    months = _months(replayed)
    assert list(months) == MONTHS
    assert [months[m]["rows"] for m in MONTHS] == [27004, 24951, 28834]
    assert all(months[m]["validation"].startswith("validated") for m in MONTHS), months
    broken = months["2013-02"]["quarantined"]
    assert len(broken) == 1 and broken[0]["kind"] == "null_column"
    assert any("carrier" in f for f in broken[0]["failed"]), broken
    report = replayed["home"] / "lake" / broken[0]["report"]
    assert report.is_file() and "carrier" in report.read_text()


def test_the_first_model_is_bootstrapped_and_serves_march(replayed):
    months = _months(replayed)
    assert months["2013-01"]["retrain"] is False and "needs 2" in " ".join(months["2013-01"]["policy_reasons"])
    assert months["2013-01"]["traffic"] is None and months["2013-02"]["traffic"] is None  # nothing served yet
    feb = months["2013-02"]
    assert feb["retrain"] is True and feb["policy_reasons"][0].startswith("bootstrap"), feb
    assert feb["gate"] == "approved" and feb["promoted"] == "1" and feb["champion_version"] == "1", feb
    march = months["2013-03"]["traffic"]
    assert march["answered"] == march["sent"] == 28834 and march["failed"] == march["refused"] == 0
    assert march["versions"] == {"1": 28834}


def test_march_traffic_is_logged_monitored_and_decided(replayed):
    from airflow_mlops.core.inference_log import read_inference_log
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.operators.monitoring import POLICY_ZONE

    lake = LakeHook(root_url=(replayed["home"] / "lake").as_uri())
    log = read_inference_log(lake)
    march = log[log["flight_id"].str.startswith("201303") | log["flight_id"].str.startswith("20130401")]
    assert len(log) == 28834 and len(march) == 28834  # exactly the answered requests
    row = _months(replayed)["2013-03"]
    assert row["drift_share"] is not None and 0.0 <= row["drift_share"] <= 1.0
    # Online features are the training join's (slot keys), so the live figure is of the hold-out's order.
    assert row["live_roc_auc"] is not None and row["live_rows"] > 25000
    assert row["live_roc_auc"] > row["holdout_roc_auc"] - 0.05, row
    assert (replayed["home"] / "lake" / row["reports"]["drift"]).is_file()
    assert (replayed["home"] / "lake" / row["reports"]["performance"]).is_file()
    assert row["retrain"] is not None and row["policy_reasons"]
    decisions = sorted(p.name for p in lake.path(POLICY_ZONE, "flight_delay").iterdir() if p.name.endswith(".json"))
    assert len(decisions) == 3, decisions


def test_the_champion_is_never_worse_than_the_gate_allows(replayed):
    from airflow_mlops.core import training
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(replayed["home"]))
        patch.setenv("MLOPS_LAKE", (replayed["home"] / "lake").as_uri())
        for name in [k for k in os.environ if k.startswith("MLFLOW")]:
            patch.delenv(name)
        name = training.load_config(str(ROOT / "include" / "config" / "training.yaml")).registered_model_name
        hook = MlflowHook()
        ledger = hook.read_ledger(name)
        floors = yaml.safe_load((ROOT / "include" / "config" / "gate_policy.yaml").read_text())["absolute"]
        assert ledger, "no promotion recorded"
        for entry in ledger:
            assert entry.action == "promote" and entry.gate and entry.gate["approved"], entry
            assert not entry.gate.get("forced"), entry
            version = hook.client.get_model_version(name, entry.to_version)
            metrics = hook.client.get_run(version.run_id).data.metrics
            assert metrics["holdout_roc_auc"] >= floors["roc_auc"]["min"], metrics["holdout_roc_auc"]
            assert metrics["holdout_brier"] <= floors["brier"]["max"], metrics["holdout_brier"]
        assert hook.alias_version(name, "champion") == ledger[-1].to_version


def test_outputs_show_the_loop(replayed):
    reports = replayed["home"] / "lake" / "reports" / "replay"
    assert (reports / "replay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (reports / "index.html").read_text()
    assert "2013-03" in page and 'href="../../reports/monitoring/drift/2013-03/' in page
    assert 'src="replay.png"' in page
    meta = replayed["summary"]["meta"]
    assert meta["wall_seconds"] > 0 and meta["peak_rss_gib"] > 0.1
    assert set(meta["stage_seconds"]) == {"validate", "features", "traffic", "monitoring", "training"}
