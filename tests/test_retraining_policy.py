"""The retraining policy: thresholds, cooldown, dedupe, cap and retries, as pure decisions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from airflow_mlops.core import retraining_policy as rp
from airflow_mlops.core.batches import month_bounds

POLICY = rp.RetrainingPolicy(
    drift_share=0.3,
    feature_drift={"distance": 0.25},
    prediction_drift=0.2,
    performance_decay={"roc_auc": 0.03},
    slice_performance_decay={"roc_auc": 0.08},
    cooldown_days=45,
    cap_period="year",
    max_per_period=2,
)


def interval(month: str) -> rp.Interval:
    return rp.Interval(*month_bounds(month))


def drift(share=0.0, scores=None, pred=0.0, rows=10_000, enough=True) -> dict:
    return {
        "status": "ok",
        "rows": rows,
        "enough_rows": enough,
        "drift_share": share,
        "drifted_columns": ["x"] if share else [],
        "scores": scores or {},
        "prediction_drift": pred,
    }


def perf(roc_decay=0.0, slices=None, enough=True, status="ok") -> dict:
    return {
        "status": status,
        "rows": 5_000,
        "enough_rows": enough,
        "decay": {"roc_auc": roc_decay},
        "live": {"roc_auc": 0.7},
        "holdout": {"roc_auc": 0.7 + roc_decay},
        "slice_decay": slices or {},
    }


def positive(month: str) -> rp.PolicyDecision:
    return rp.decide(POLICY, interval(month), drift(share=0.9), None, [])


@pytest.mark.parametrize(
    ("d", "p", "retrain", "needle"),
    [
        pytest.param(drift(), perf(), False, "no trigger", id="quiet"),
        pytest.param(drift(share=0.3), None, True, "drift share 0.30 >= 0.30", id="drift-share-at-threshold"),
        pytest.param(drift(share=0.29), None, False, "no trigger", id="drift-share-below"),
        pytest.param(
            drift(scores={"distance": 0.26, "temp": 0.9}), None, True, "feature distance drift", id="named-feature"
        ),
        pytest.param(drift(scores={"temp": 0.9}), None, False, "no trigger", id="unnamed-feature-alone"),
        pytest.param(drift(pred=0.21), None, True, "prediction drift 0.210", id="prediction-drift"),
        pytest.param(drift(), perf(roc_decay=0.031), True, "roc_auc decayed by 0.0310", id="overall-decay"),
        pytest.param(drift(), perf(roc_decay=-0.05), False, "no trigger", id="improved"),
        pytest.param(
            drift(),
            perf(slices={"carrier=UA": {"roc_auc": 0.09}, "carrier=AA": {"roc_auc": 0.01}}),
            True,
            "1 slice(s): carrier=UA",
            id="slice-decay",
        ),
        pytest.param(drift(share=0.9, enough=False), None, False, "drift not judged", id="too-few-rows"),
        pytest.param(
            drift(), perf(roc_decay=0.5, status="no_outcomes"), False, "performance not judged", id="no-outcomes"
        ),
        pytest.param(None, None, False, "no drift summary", id="no-signals"),
    ],
)
def test_thresholds(d, p, retrain, needle):
    decision = rp.decide(POLICY, interval("2013-03"), d, p, [])
    assert decision.retrain is retrain
    assert any(needle in r for r in decision.reasons), decision.reasons


def test_a_policy_without_triggers_never_retrains():
    decision = rp.decide(rp.RetrainingPolicy(), interval("2013-03"), drift(share=1.0, pred=9), perf(roc_decay=1), [])
    assert (decision.retrain, decision.suppressed_by) == (False, "no_policy")


@pytest.mark.parametrize(
    ("earlier", "month", "retrain", "brake"),
    [
        pytest.param(["2013-01"], "2013-02", False, "cooldown", id="31-days-after"),
        pytest.param(["2013-01"], "2013-03", True, None, id="59-days-after"),
        pytest.param(["2013-05"], "2013-04", False, "cooldown", id="backfill-before-a-trigger"),
        pytest.param(["2013-01", "2013-04"], "2013-08", False, "cap", id="cap-reached"),
        pytest.param(["2012-11", "2013-04"], "2013-08", True, None, id="cap-counts-the-period-only"),
        pytest.param(["2013-03"], "2013-03", False, "dedupe", id="same-interval"),
    ],
)
def test_brakes(earlier, month, retrain, brake):
    history = [positive(m) for m in earlier]
    decision = rp.decide(POLICY, interval(month), drift(share=0.9), None, history)
    assert (decision.retrain, decision.suppressed_by) == (retrain, brake), decision.reasons
    if brake:
        assert any(r.startswith("drift share") for r in decision.reasons), "a held trigger still says why it fired"


def test_negative_decisions_do_not_brake():
    history = [rp.decide(POLICY, interval("2013-02"), drift(), None, [])]
    assert rp.decide(POLICY, interval("2013-03"), drift(share=0.9), None, history).retrain


def test_retries_of_one_interval_trigger_exactly_once():
    """A check retried, cleared or backfilled many times: the stored record makes every later attempt a no."""
    record: dict | None = None
    outcomes = []
    for attempt in range(5):
        history = rp.history_from_records([record] if record else [])
        decision = rp.decide(
            POLICY,
            interval("2013-06"),
            drift(share=0.9),
            None,
            history,
            decided_by={"run_id": "r1", "try_number": str(attempt + 1)},
        )
        record = rp.record_for_interval(record, decision)
        outcomes.append(decision.retrain)
    assert outcomes == [True, False, False, False, False]
    assert record["evaluations"] == 5 and record["triggered"]["decided_by"]["try_number"] == "1"
    assert record["latest"]["suppressed_by"] == "dedupe"


def test_a_first_negative_check_may_trigger_later_once_outcomes_arrive():
    record = rp.record_for_interval(
        None, rp.decide(POLICY, interval("2013-06"), drift(), perf(status="no_outcomes"), [])
    )
    later = rp.decide(POLICY, interval("2013-06"), drift(), perf(roc_decay=0.1), rp.history_from_records([record]))
    assert later.retrain


def test_config_file_and_interval_keys(tmp_path):
    from airflow_mlops import settings
    from airflow_mlops.usecase import config as usecase_config

    shipped = usecase_config.load(settings.project_root() / "examples" / "flight_delay").monitoring
    policy = rp.RetrainingPolicy.from_dict(shipped["policy"])
    assert policy.has_triggers and policy.cooldown_days > 0 and policy.max_per_period
    assert interval("2013-03").key == "20130301T000000--20130401T000000"
    assert rp.Interval.parse("2013-03-01T00:00:00+00:00", "2013-04-01T00:00:00+00:00") == interval("2013-03")
    assert rp.period_of(datetime(2013, 5, 1, tzinfo=UTC), "quarter") == "2013-Q2"
    with pytest.raises(ValueError, match="cap period"):
        rp.RetrainingPolicy.from_dict({"cap": {"period": "week", "max": 1}})
    (tmp_path / "m.yaml").write_text("drift: {}\n")
    with pytest.raises(ValueError, match="no 'policy' section"):
        rp.load_policy(tmp_path / "m.yaml")


BOOTSTRAP = rp.RetrainingPolicy(drift_share=0.3, cooldown_days=45, max_per_period=1, bootstrap_min_months=2)


@pytest.mark.parametrize(
    ("policy", "months", "earlier", "retrain", "brake", "needle"),
    [
        pytest.param(BOOTSTRAP, 1, [], False, None, "the first model needs 2", id="too-little-data"),
        pytest.param(BOOTSTRAP, 2, [], True, None, "bootstrap: no champion yet", id="enough-data"),
        pytest.param(BOOTSTRAP, 3, ["2013-02"], True, None, "bootstrap", id="cooldown-does-not-apply"),
        pytest.param(BOOTSTRAP, 3, ["2013-01", "2013-02"], True, None, "bootstrap", id="cap-does-not-apply"),
        pytest.param(BOOTSTRAP, 3, ["2013-03"], False, "dedupe", "never twice", id="same-interval"),
        pytest.param(POLICY, 12, [], False, "no_bootstrap", "does not bootstrap", id="bootstrap-off"),
    ],
)
def test_bootstrap_without_a_champion(policy, months, earlier, retrain, brake, needle):
    history = [rp.decide_bootstrap(BOOTSTRAP, interval(m), 5, []) for m in earlier]
    decision = rp.decide_bootstrap(policy, interval("2013-03"), months, history, month="2013-03", model="m")
    assert (decision.retrain, decision.suppressed_by) == (retrain, brake), decision.reasons
    assert any(needle in r for r in decision.reasons), decision.reasons
    assert decision.champion_version is None and decision.month == "2013-03"


def test_a_bootstrap_trigger_starts_the_cooldown_of_drift_triggers():
    first = rp.decide_bootstrap(BOOTSTRAP, interval("2013-02"), 2, [])
    later = rp.decide(BOOTSTRAP, interval("2013-03"), drift(share=0.9), None, [first])
    assert (later.retrain, later.suppressed_by) == (False, "cooldown")


def test_bootstrap_setting_is_read_and_checked():
    assert rp.RetrainingPolicy.from_dict({"bootstrap": {"min_months": 3}}).bootstrap_min_months == 3
    assert rp.RetrainingPolicy.from_dict({"bootstrap": {"min_months": None}}).bootstrap_min_months is None
    with pytest.raises(ValueError, match="bootstrap_min_months"):
        rp.RetrainingPolicy.from_dict({"bootstrap": {"min_months": 0}})


# -- decay thresholds of any task ---------------------------------------------------------------------------------
REGRESSION_POLICY = rp.RetrainingPolicy.from_dict(
    {"performance_decay": {"overall": {"rmse": 0.5, "r2": 0.05}, "per_slice": {"mae": 1.0}}}
)


def regression_perf(decay: dict, slices: dict | None = None) -> dict:
    return {"status": "ok", "rows": 2_000, "enough_rows": True, "decay": decay, "slice_decay": slices or {}}


@pytest.mark.parametrize(
    ("decay", "slices", "retrain", "needle"),
    [
        pytest.param({"rmse": 0.6, "r2": 0.0}, None, True, "rmse decayed by 0.6000 >= 0.5000", id="rmse-rose"),
        pytest.param({"rmse": -0.6, "r2": 0.0}, None, False, "no trigger", id="rmse-fell"),
        pytest.param({"rmse": 0.0, "r2": 0.06}, None, True, "r2 decayed by 0.0600 >= 0.0500", id="r2-dropped"),
        pytest.param({}, {"zone=east": {"mae": 1.2}}, True, "mae decayed >= 1.0000 in 1 slice(s)", id="slice-mae"),
    ],
)
def test_regression_decay_thresholds_fire_on_a_worse_figure_whatever_its_direction(decay, slices, retrain, needle):
    """The check's decay is positive when worse (RMSE / MAE up, R² down): every threshold reads "worse by"."""
    decision = rp.decide(REGRESSION_POLICY, interval("2024-03"), None, regression_perf(decay, slices), [])
    assert decision.retrain is retrain and any(needle in r for r in decision.reasons), decision.reasons


@pytest.mark.parametrize(
    ("section", "match"),
    [
        pytest.param({"overall": {"accuracy": 0.1}}, "unknown metrics \\['accuracy'\\]", id="unknown-metric"),
        pytest.param({"per_slice": {"rmse": -0.1}}, "must be >= 0", id="negative"),
    ],
)
def test_decay_thresholds_are_checked(section, match):
    with pytest.raises(ValueError, match=match):
        rp.RetrainingPolicy.from_dict({"performance_decay": section})


def test_decide_interval_reads_the_stored_records_and_returns_the_new_one():
    source = {"model": "m", "month": "2013-06", "champion_version": "3"}
    june = interval("2013-06")
    decision, record = rp.decide_interval(POLICY, june, source, drift(share=0.9), None, {}, decided_by={"try": "1"})
    assert decision.retrain and record["triggered"]["decided_by"] == {"try": "1"} and record["evaluations"] == 1
    extra = decision.event_extra()
    assert (extra["model"], extra["month"], extra["champion_version"]) == ("m", "2013-06", "3")
    assert extra["interval_start"].startswith("2013-06-01") and extra["policy_sha256"] == POLICY.sha256

    again, record = rp.decide_interval(POLICY, june, source, drift(share=0.9), None, {june.key: record})
    assert (again.retrain, again.suppressed_by, record["evaluations"]) == (False, "dedupe", 2)
    july, _ = rp.decide_interval(POLICY, interval("2013-07"), source, drift(share=0.9), None, {june.key: record})
    assert july.suppressed_by == "cooldown"

    boot = {"model": "m", "month": "2013-02", "bootstrap": True, "months_available": 2}
    first, _ = rp.decide_interval(BOOTSTRAP, interval("2013-02"), boot, None, None, {})
    assert first.retrain and first.champion_version is None and first.triggers[0].startswith("bootstrap")
