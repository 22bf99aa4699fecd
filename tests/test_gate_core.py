"""The gate's rules and the promotion ledger's replay, on plain dicts (no MLflow, no Airflow)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from airflow_mlops.core import gate
from airflow_mlops.core import ledger as lg

POLICY = {
    "absolute": {"roc_auc": {"min": 0.62}, "brier": {"max": 0.20}},
    "max_regression": {"overall": {"roc_auc": 0.005, "log_loss": 0.01}, "per_slice": {"roc_auc": 0.03}},
    "min_slice_size": 300,
    "slice_columns": ["carrier", "origin"],
}


def metrics(roc_auc=0.70, log_loss=0.49, brier=0.16, n=10_000):
    return {"n": n, "roc_auc": roc_auc, "log_loss": log_loss, "brier": brier, "precision": 0.5, "recall": 0.3}


def evaluation(overall=None, **slice_overrides):
    """An evaluation with carriers AA, B6 (big) and HA (small), origins EWR and JFK."""
    slices = {
        "carrier": {"AA": metrics(0.68, n=3000), "B6": metrics(0.69, n=4000), "HA": metrics(0.70, n=40)},
        "origin": {"EWR": metrics(0.70, n=5000), "JFK": metrics(0.71, n=5000)},
    }
    for key, value in slice_overrides.items():
        column, name = key.split("__")
        if value is None:
            slices[column].pop(name)
        else:
            slices[column][name] = value
    return {"overall": overall or metrics(), "slices": slices, "threshold": 0.35}


def policy(**changes):
    data = copy.deepcopy(POLICY)
    data.update(changes)
    return gate.GatePolicy.from_dict(data)


CASES = [
    pytest.param(evaluation(), None, None, True, "first model: no champion", id="first-run-floors-only"),
    pytest.param(
        evaluation(metrics(roc_auc=0.55)),
        None,
        None,
        False,
        "roc_auc 0.5500 is below the floor",
        id="first-run-below-floor",
    ),
    pytest.param(
        evaluation(metrics(brier=0.25)),
        evaluation(),
        "3",
        False,
        "brier 0.2500 is above the ceiling",
        id="above-ceiling",
    ),
    pytest.param(
        evaluation(), evaluation(), "3", True, "checks passed against champion version 3", id="equal-to-champion"
    ),
    pytest.param(
        evaluation(metrics(roc_auc=0.69)),
        evaluation(),
        "3",
        False,
        "overall.roc_auc 0.6900 vs champion 0.7000",
        id="worse-overall",
    ),
    pytest.param(
        evaluation(metrics(roc_auc=0.697)), evaluation(), "3", True, "checks passed", id="worse-within-tolerance"
    ),
    pytest.param(
        evaluation(metrics(log_loss=0.51)),
        evaluation(),
        "3",
        False,
        "overall.log_loss",
        id="worse-log-loss-lower-is-better",
    ),
    pytest.param(
        evaluation(carrier__AA=metrics(0.60, n=3000)),
        evaluation(),
        "3",
        False,
        "slice.carrier.AA.roc_auc 0.6000 vs champion 0.6800",
        id="worse-on-one-slice",
    ),
    pytest.param(
        evaluation(carrier__HA=metrics(0.40, n=40)),
        evaluation(),
        "3",
        True,
        "carrier=HA (n=40)",
        id="small-slice-ignored",
    ),
    pytest.param(
        evaluation({**metrics(), "roc_auc": None}), evaluation(), "3", False, "roc_auc is missing", id="missing-metric"
    ),
    pytest.param(
        evaluation(carrier__B6={**metrics(n=4000), "roc_auc": None}),
        evaluation(),
        "3",
        False,
        "slice.carrier.B6.roc_auc is missing for the candidate",
        id="missing-slice-metric",
    ),
    pytest.param(
        evaluation(),
        evaluation(carrier__B6=None),
        "3",
        False,
        "missing from the champion",
        id="slice-missing-on-champion",
    ),
    pytest.param(evaluation(), None, "3", False, "has no evaluation on this hold-out", id="champion-not-evaluated"),
    pytest.param(
        evaluation(metrics(n=9_000)), evaluation(), "3", False, "different hold-outs", id="different-holdouts"
    ),
]


@pytest.mark.parametrize(("candidate", "champion", "champion_version", "approved", "reason"), CASES)
def test_gate_rules(candidate, champion, champion_version, approved, reason):
    decision = gate.decide(candidate, champion, policy(), champion_version=champion_version)
    assert decision.approved is approved, decision.reasons
    assert any(reason in r for r in decision.reasons), decision.reasons
    assert decision.policy_hash == policy().sha256
    assert decision.champion_version == champion_version


def test_no_policy_rejects():
    decision = gate.decide(evaluation(), None, None)
    assert not decision.approved
    assert "no gate policy" in decision.reasons[0]
    assert decision.policy_hash is None


def test_policy_without_rules_rejects():
    decision = gate.decide(evaluation(), None, gate.GatePolicy.from_dict({"min_slice_size": 10}))
    assert not decision.approved and "no rules" in decision.reasons[0]


def test_no_candidate_evaluation_rejects():
    assert not gate.decide(None, None, policy()).approved


def test_missing_policy_file_is_none_and_malformed_raises(tmp_path: Path):
    assert gate.load_policy(tmp_path / "absent.yaml") is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("absolute:\n  accuracy: {min: 0.9}\n")
    with pytest.raises(ValueError, match="unknown metric 'accuracy'"):
        gate.load_policy(bad)


def test_shipped_policy_parses_and_hash_tracks_content(tmp_path: Path):
    from airflow_mlops import settings
    from airflow_mlops.usecase import config as usecase_config

    shipped = usecase_config.load(settings.project_root() / "examples" / "flight_delay").gate_policy()
    assert shipped is not None and shipped.has_rules and shipped.min_slice_size > 0
    changed = copy.deepcopy(POLICY)
    changed["min_slice_size"] = 301
    assert gate.GatePolicy.from_dict(changed).sha256 != policy().sha256
    assert gate.GatePolicy.from_dict(copy.deepcopy(POLICY)).sha256 == policy().sha256


def test_force_bless_needs_reason_and_is_recorded():
    rejected = gate.decide(evaluation(metrics(roc_auc=0.5)), None, policy())
    with pytest.raises(ValueError, match="force_bless_reason"):
        gate.force_bless(rejected, "  ")
    blessed = gate.force_bless(rejected, "hotfix for carrier outage", who="alice")
    assert blessed.approved and blessed.forced and blessed.force_reason == "hotfix for carrier outage"
    assert "force-blessed by alice" in blessed.reasons[-1]
    assert blessed.reasons[0] == rejected.reasons[0]  # the overridden reasons stay visible
    assert gate.GateDecision.from_dict(blessed.to_dict()) == blessed


# -- regression models -----------------------------------------------------------------------------------
REGRESSION_POLICY = {
    "absolute": {"rmse": {"max": 3.0}, "r2": {"min": 0.6}},
    "max_regression": {"overall": {"rmse": 0.05, "r2": 0.01}, "per_slice": {"mae": 0.2}},
    "min_slice_size": 100,
    "slice_columns": ["zone"],
}


def reg_metrics(rmse=2.0, mae=1.5, r2=0.8, n=5_000):
    return {"n": n, "mean_label": 12.5, "rmse": rmse, "mae": mae, "r2": r2}


def reg_evaluation(overall=None, **zones):
    """A regression evaluation with zones north, south (big) and east (small)."""
    slices = {"north": reg_metrics(mae=1.4, n=3000), "south": reg_metrics(mae=1.6, n=1950), "east": reg_metrics(n=50)}
    slices.update(zones)
    return {"overall": overall or reg_metrics(), "slices": {"zone": slices}, "threshold": None, "task": "regression"}


REGRESSION_CASES = [
    pytest.param(reg_evaluation(), None, None, True, "first model: no champion", id="first-run-within-ceiling"),
    pytest.param(
        reg_evaluation(reg_metrics(rmse=3.2)), None, None, False, "rmse 3.2000 is above the ceiling", id="rmse-ceiling"
    ),
    pytest.param(
        reg_evaluation(reg_metrics(r2=0.55)), None, None, False, "r2 0.5500 is below the floor", id="r2-floor"
    ),
    pytest.param(reg_evaluation(), reg_evaluation(), "4", True, "checks passed against champion version 4", id="equal"),
    pytest.param(
        reg_evaluation(reg_metrics(rmse=2.1)),
        reg_evaluation(),
        "4",
        False,
        "overall.rmse 2.1000 vs champion 2.0000: worse by 0.1000",
        id="higher-rmse-is-worse",
    ),
    pytest.param(
        reg_evaluation(reg_metrics(rmse=1.5, r2=0.9)),
        reg_evaluation(),
        "4",
        True,
        "checks passed",
        id="lower-rmse-is-better",
    ),
    pytest.param(
        reg_evaluation(reg_metrics(rmse=2.04)), reg_evaluation(), "4", True, "checks passed", id="within-tolerance"
    ),
    pytest.param(
        reg_evaluation(reg_metrics(r2=0.78)),
        reg_evaluation(),
        "4",
        False,
        "overall.r2 0.7800 vs champion 0.8000: worse by 0.0200",
        id="lower-r2-is-worse",
    ),
    pytest.param(
        reg_evaluation(south=reg_metrics(mae=1.9, n=1950)),
        reg_evaluation(),
        "4",
        False,
        "slice.zone.south.mae 1.9000 vs champion 1.6000: worse by 0.3000",
        id="worse-on-one-slice",
    ),
    pytest.param(
        reg_evaluation(east=reg_metrics(mae=9.0, n=50)),
        reg_evaluation(),
        "4",
        True,
        "zone=east (n=50)",
        id="small-slice-ignored",
    ),
    pytest.param(
        reg_evaluation({**reg_metrics(), "r2": None}),
        None,
        None,
        False,
        "r2 is missing",
        id="undefined-r2-fails-closed",
    ),
]


@pytest.mark.parametrize(("candidate", "champion", "champion_version", "approved", "reason"), REGRESSION_CASES)
def test_gate_rules_for_a_regression(candidate, champion, champion_version, approved, reason):
    rules = gate.GatePolicy.from_dict(copy.deepcopy(REGRESSION_POLICY))
    decision = gate.decide(candidate, champion, rules, champion_version=champion_version)
    assert decision.approved is approved, decision.reasons
    assert any(reason in r for r in decision.reasons), decision.reasons


def test_worse_by_follows_each_metric_s_direction():
    from airflow_mlops.core.evaluation import METRIC_DIRECTIONS

    for metric, higher_is_better in METRIC_DIRECTIONS.items():
        assert gate._worse_by(metric, 1.0, 2.0) == (1.0 if higher_is_better else -1.0), metric


def test_a_policy_of_the_other_task_s_metrics_rejects():
    # A classification policy judging a regression (or the reverse) finds its metrics missing: fail closed.
    decision = gate.decide(reg_evaluation(), None, policy())
    assert not decision.approved and any("roc_auc is missing" in r for r in decision.reasons)
    decision = gate.decide(evaluation(), None, gate.GatePolicy.from_dict(copy.deepcopy(REGRESSION_POLICY)))
    assert not decision.approved and any("rmse is missing" in r for r in decision.reasons)
    with pytest.raises(ValueError, match="unknown metric 'mse'.*rmse, mae, r2"):
        gate.GatePolicy.from_dict({"absolute": {"mse": {"max": 1.0}}})


# -- ledger ----------------------------------------------------------------------------------------------
def entry(seq, action, frm, to, **trigger):
    return lg.LedgerEntry(
        seq=seq, action=action, model="m", alias="champion", from_version=frm, to_version=to, triggered_by=trigger
    )


def test_ledger_history_and_rollback_target():
    entries = [entry(1, "promote", None, "1"), entry(2, "promote", "1", "2"), entry(3, "promote", "2", "3")]
    assert lg.history(entries) == ["1", "2", "3"]
    assert lg.rollback_target(entries) == "2"
    entries.append(entry(4, "rollback", "3", "2"))
    assert lg.history(entries) == ["1", "2"]
    assert lg.rollback_target(entries) == "1"
    entries.append(entry(5, "rollback", "2", "1"))
    with pytest.raises(lg.LedgerConflict, match="nothing to roll back to"):
        lg.rollback_target(entries)
    lg.check_sequence(entries)


def test_ledger_sequence_check_catches_gaps_and_broken_chains():
    with pytest.raises(ValueError, match="gap"):
        lg.check_sequence([entry(1, "promote", None, "1"), entry(3, "promote", "1", "2")])
    with pytest.raises(ValueError, match="moves from version 5"):
        lg.check_sequence([entry(1, "promote", None, "1"), entry(2, "promote", "5", "2")])


@pytest.mark.parametrize(
    ("alias_now", "expected"),
    [
        pytest.param("2", "2", id="in-sync"),
        pytest.param("1", "2", id="alias-lags-ledger"),
        pytest.param(None, "2", id="alias-missing"),
    ],
)
def test_expected_state_trusts_the_ledger(alias_now, expected):
    entries = [entry(1, "promote", None, "1"), entry(2, "promote", "1", "2")]
    assert lg.expected_state(entries, alias_now) == expected


def test_expected_state_flags_an_alias_moved_by_hand():
    with pytest.raises(lg.LedgerConflict, match="moved by hand"):
        lg.expected_state([entry(1, "promote", None, "1")], "7")
    assert lg.expected_state([], "7") == "7"  # no ledger yet: adopt the alias as it is


def test_same_trigger_matches_only_the_same_task_run():
    e = entry(1, "promote", None, "1", dag_id="d", run_id="r", task_id="t", try_number="1")
    assert lg.same_trigger(e, {"dag_id": "d", "run_id": "r", "task_id": "t", "try_number": "2"})
    assert not lg.same_trigger(e, {"dag_id": "d", "run_id": "r2", "task_id": "t"})
    assert not lg.same_trigger(e, {})
