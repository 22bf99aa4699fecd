"""Every registered version has a model card, attached to the version, that says what its run, its data and its gate
recorded: driven through the real training pipeline (train → evaluate → gate → register → promote) against a real
MLflow store and a real lake; the expected figures are read from MLflow and the lake, not copied.
"""

from __future__ import annotations

import html
import json
import re
import shutil

import pytest

from conftest import ROOT
from training_fixtures import (
    REGRESSION_CONFIG_YAML,
    REGRESSION_POLICY_YAML,
    TEST_CONFIG_YAML,
    build_frame,
    regression_frame,
    run_pipeline,
    task_context,
    write_configs,
    write_snapshot,
)

TINY_USECASE = ROOT / "tests" / "usecases" / "tiny"


def _card(name: str, version: str, tag: str = "mlops.model_card") -> str:
    """The card the version's tag points at, downloaded from MLflow."""
    import mlflow

    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    hook = MlflowHook()
    hook.activate()
    uri = hook.client.get_model_version(name, version).tags[tag]
    assert uri.startswith("runs:/") and f"/model_card/v{version}/" in uri, uri
    return mlflow.artifacts.load_text(uri)


def _section(markdown: str, title: str) -> str:
    """The text of one ``## title`` section of a Markdown card."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


def _metric_row(section: str, metric: str) -> list[str]:
    (row,) = [line for line in section.splitlines() if line.startswith(f"| {metric} |")]
    return [cell.strip() for cell in row.strip("|").split("|")]


def _write_validated(lake, months: list[str]) -> dict[str, str]:
    """A validated batch per month, committed as the validation step commits it; returns month → batch sha256."""
    from airflow_mlops.core.batches import sha256_bytes

    hashes = {}
    for month in months:
        data = f"validated rows of {month}".encode()
        folder = lake.path("validated", month)
        record = lake.write_file(folder / "rows.parquet", data, rows=1)
        lake.write_manifest(folder, [record], batch_sha256=sha256_bytes(data), validation={"success": True})
        hashes[month] = sha256_bytes(data)
    return hashes


@pytest.mark.slow
def test_every_registered_version_has_a_card_of_its_run_data_and_gate(lake, mlflow_store, tmp_path):
    from airflow_mlops.core.evaluation import metrics_for
    from airflow_mlops.core.model_card import AUTO_APPROVAL, NOT_MEASURED, SECTIONS
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.operators.registry import MlflowRegisterModelOperator

    name = "card_test"
    config = TEST_CONFIG_YAML.replace("registered_model_name: flight_delay_test", f"registered_model_name: {name}")
    paths = write_configs(tmp_path / "config", config=config)
    first_set = write_snapshot(lake, build_frame((1, 2, 3), sample=0.3, seed=0))
    batches = _write_validated(lake, first_set["months"])
    first = run_pipeline(first_set, paths, "manual__card_first")
    assert first["registered"]["version"] == "1" and first["promoted"]["to_version"] == "1"
    hook = MlflowHook()

    markdown = _card(name, "1")
    assert first["registered"]["model_card"] == hook.client.get_model_version(name, "1").tags["mlops.model_card"]
    assert [line[3:] for line in markdown.splitlines() if line.startswith("## ")] == list(SECTIONS)
    run = hook.client.get_run(first["registered"]["run_id"]).data
    metrics = _section(markdown, "Metrics")
    for metric in metrics_for("classification"):
        assert _metric_row(metrics, metric) == [metric, f"{run.metrics[f'holdout_{metric}']:.4f}", "–"]
    # Per slice: each slice's size as the evaluation counted it.
    evaluation = json.loads(hook.run_artifact_text(first["registered"]["run_id"], "evaluation/evaluation.json"))
    for column, values in evaluation["candidate"]["slices"].items():
        for value, figures in values.items():
            auc = "–" if figures["roc_auc"] is None else f"{figures['roc_auc']:.4f}"
            assert f"| {column}={value} | {figures['n']} | {figures['positive_rate']:.4f} | {auc} |" in metrics
    gate = json.loads(hook.client.get_model_version(name, "1").tags["mlops.gate.decision"])
    decided = _section(markdown, "Gate decision")
    assert gate["approved"] and decided.lstrip().startswith(f"APPROVED under policy sha256 {gate['policy_hash']}")
    assert all(f"- {html.escape(reason, quote=False)}" in decided for reason in gate["reasons"])
    data = _section(markdown, "Training data")
    assert f"Training set sha256: {first_set['sha256']} ({first_set['rows']} rows)" in data
    assert run.tags["mlops.training_set.sha256"] == first_set["sha256"]
    for month, sha in batches.items():
        assert f"| {month} | – | {sha} | yes |" in data
    months = ", ".join(run.tags["mlops.train.months"].split(","))
    assert f"Training window: {months} ({run.params['train_rows']} rows)" in data
    assert AUTO_APPROVAL in _section(markdown, "Approval")
    assert NOT_MEASURED in _section(markdown, "Drift at training time")
    assert f"hold-out of {evaluation['candidate']['overall']['n']} rows" in _section(markdown, "Known limits")
    principles = _section(markdown, SECTIONS[-1])
    assert f"code git {run.tags['mlops.git.commit']}" in principles and first_set["sha256"] in principles
    # Refreshed on promotion: the card says the version is champion.
    assert "- Aliases now: challenger, champion" in markdown
    page = _card(name, "1", "mlops.model_card_html")
    assert page.startswith("<!doctype html>") and "<script" not in page and "http" not in page.split("<body>")[0]
    assert html.escape(gate["reasons"][0]) in page

    # A retry of the registration: the same version, the same card.
    again = MlflowRegisterModelOperator(task_id="register_model", gate=first["gate"]).execute(
        task_context("register_model", "manual__card_first", try_number=2)
    )
    assert (again["version"], again["created"]) == ("1", False)
    assert _card(name, "1") == markdown
    assert [str(v.version) for v in hook.client.search_model_versions(f"name = '{name}'")] == ["1"]

    # A second version: compared with the champion (v1) on its own hold-out.
    second_set = write_snapshot(lake, build_frame((1, 2, 3), sample=0.3, seed=1))
    second = run_pipeline(second_set, paths, "manual__card_second", force_bless=True, force_bless_reason="card test")
    assert second["registered"]["version"] == "2"
    markdown = _card(name, "2")
    run = hook.client.get_run(second["registered"]["run_id"]).data
    metrics = _section(markdown, "Metrics")
    assert "(champion v1)" in metrics
    for metric in metrics_for("classification"):
        expected = [
            metric,
            f"{run.metrics[f'holdout_{metric}']:.4f}",
            f"{run.metrics[f'champion_holdout_{metric}']:.4f}",
        ]
        assert _metric_row(metrics, metric) == expected
    evaluation = json.loads(hook.run_artifact_text(second["registered"]["run_id"], "evaluation/evaluation.json"))
    column, values = sorted(evaluation["candidate"]["slices"].items())[0]
    value, figures = sorted(values.items())[0]
    champion = evaluation["champion"]["slices"][column][value]
    pairs = [f"{figures[m]:.4f} / {champion[m]:.4f}" for m in evaluation["candidate"]["overall"] if m != "n"]
    assert f"| {column}={value} | {figures['n']} | {' | '.join(pairs)} |" in metrics
    assert "FORCE-BLESSED" in _section(markdown, "Gate decision")
    assert "overridden by hand (force-blessed: card test)" in _section(markdown, "Known limits")
    for version in hook.client.search_model_versions(f"name = '{name}'"):
        assert version.tags.get("mlops.model_card") and version.tags.get("mlops.model_card_html"), version.version


@pytest.mark.slow
def test_a_card_takes_the_use_case_and_escapes_what_it_says(lake, mlflow_store, tmp_path, monkeypatch):
    from airflow_mlops.hooks.mlflow_model_card import read_model_card
    from airflow_mlops.hooks.mlflow_registry import MlflowHook
    from airflow_mlops.usecase import config

    projects = tmp_path / "projects"
    shutil.copytree(TINY_USECASE, projects / "tiny", ignore=shutil.ignore_patterns("__pycache__"))
    config_file = projects / "tiny" / "mlops.yaml"
    text = config_file.read_text()
    description = 'Readings <script>alert("card")</script> & "values"'
    old = config.load(TINY_USECASE).description
    assert f"description: {old}\n" in text
    text = text.replace(f"description: {old}\n", f"description: '{description}'\n")
    limit = "Only <b>indoor</b> sensors"
    text = text.replace("model:\n  task: regression\n", f"model:\n  task: regression\n  known_limits: ['{limit}']\n")
    config_file.write_text(text)
    monkeypatch.setenv("MLOPS_PROJECTS", str(projects))
    usecase = config.load(projects / "tiny")
    assert usecase.description == description and usecase.model["known_limits"] == [limit]

    name = usecase.registered_model_name
    training = REGRESSION_CONFIG_YAML.replace(
        "registered_model_name: regression_test", f"registered_model_name: {name}"
    )
    paths = write_configs(tmp_path / "config", training, REGRESSION_POLICY_YAML)
    made = run_pipeline(write_snapshot(lake, regression_frame(900, seed=3)), paths, "manual__card_tiny")
    version = made["registered"]["version"]

    markdown = _card(name, version)
    # Markdown keeps the words and makes HTML's characters entities (a renderer passing HTML through shows them).
    assert html.escape(description, quote=False) in _section(markdown, "Intended use")
    assert f"Predicts: {usecase.label}" in markdown and "<script" not in markdown
    assert f"- {html.escape(limit, quote=False)}" in _section(markdown, "Known limits")
    page = read_model_card(MlflowHook(), name, version, "html")
    assert page == _card(name, version, "mlops.model_card_html")
    assert "<script" not in page and "<b>" not in page
    assert html.escape(description) in page and html.escape(limit) in page


def test_a_card_without_facts_says_what_is_missing_and_escapes_every_value():
    from airflow_mlops.core.model_card import AUTO_APPROVAL, MISSING, NOT_MEASURED, SECTIONS, build_card

    bad = '<img src=x onerror="x()">'
    card = build_card({"model": {"name": bad, "version": "3"}, "gate": {"approved": True, "reasons": [bad]}})
    assert card.sections == SECTIONS
    for title in SECTIONS:
        assert f"## {title}" in card.markdown and f"<h2>{html.escape(title)}</h2>" in card.html
    assert MISSING in card.markdown and NOT_MEASURED in card.markdown and AUTO_APPROVAL in card.markdown
    assert "<img" not in card.html and card.html.count(html.escape(bad)) >= 3
