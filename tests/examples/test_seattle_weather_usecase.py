"""The seattle_weather example (examples/seattle_weather): its functions on real consecutive days of the data that
vega_datasets ships, the timing of features and labels (no leakage), its Great Expectations suite with the real
library, and a sanity model that justifies the gate's bounds. No Airflow.

The module is loaded as the pipeline loads it (``airflow_mlops.usecase.user_code.load_module``); the config with the
typed loader; frames reach the functions as the validator publishes them (the CSV read, ``date`` parsed as UTC by
``core.validation.prepare_batch``, the derived ``_`` columns dropped). Expected values are computed here from the
packaged CSV with plain pandas, independently of the module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from airflow_mlops.core import features as F
from airflow_mlops.core import validation
from airflow_mlops.usecase import FeatureContext
from airflow_mlops.usecase import config as usecase_config
from airflow_mlops.usecase.user_code import load_module

FOLDER = Path(__file__).resolve().parents[2] / "examples" / "seattle_weather"
USECASE = usecase_config.load(FOLDER)
SPEC = F.FeatureSpec.from_usecase(USECASE)
M = load_module(USECASE.module_file)
VIEW = USECASE.views[0]
SUITE_FILE = Path(USECASE.source.suites["observations.csv"])
TS = "datetime64[us, UTC]"
DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    """Every day of the packaged CSV, read here with plain pandas (not through the module), indexed by day."""
    from importlib import resources

    with resources.as_file(resources.files("vega_datasets") / "_data" / "seattle-weather.csv") as path:
        frame = pd.read_csv(path)
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame["date"], format="%Y/%m/%d"), name="day")
    return frame


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def days_between(first: str, last: str) -> list[str]:
    return [d.strftime("%Y-%m-%d") for d in pd.date_range(first, last, freq="D")]


def published(period: str, frame: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """One day's batch as the validator publishes it: the CSV bytes read, prepared, derived columns dropped."""
    frame = M.demo_batches(period)["observations.csv"] if frame is None else frame
    read, note = validation.read_frame_tolerant(frame.to_csv(index=False).encode(), "observations.csv")
    assert note is None
    prepared = validation.prepare_batch({"observations": read}, M.prepare_validation, {"observations": "date"})
    return {name: validation.published_frame(f) for name, f in prepared.items()}


def context(period: str, periods: dict[str, dict[str, pd.DataFrame]]) -> FeatureContext:
    """The context of a partition build: the period and its lookback (those of ``periods`` that exist)."""
    wanted = F.lookback(period, SPEC)
    frames = {p: {n: f.copy() for n, f in periods[p].items()} for p in wanted if p in periods}
    return FeatureContext(period=period, frames=frames, params=SPEC.params, config=USECASE)


def build(periods: dict[str, dict[str, pd.DataFrame]], targets: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The view rows and label rows of ``targets``, one partition build per day (checked by the generic checks)."""
    views, labels = [], []
    for period in targets:
        ctx = context(period, periods)
        views.append(F.check_view(M.build_features(ctx)[VIEW.name], VIEW, SPEC))
        labels.append(F.check_labels(M.label_rows(ctx), SPEC, period))
    return pd.concat(views, ignore_index=True), pd.concat(labels, ignore_index=True)


def pit_join(labels: pd.DataFrame, views: pd.DataFrame) -> pd.DataFrame:
    """Feast's point-in-time semantics with merge_asof: per key, the latest row with available_at <= event time,
    no older than the view's TTL; the view's timestamp and lineage are kept."""
    right = views.rename(columns={VIEW.timestamp: "feature_ts"}).sort_values("feature_ts", kind="stable")
    return pd.merge_asof(
        labels.sort_values("event_timestamp", kind="stable"),
        right,
        left_on="event_timestamp",
        right_on="feature_ts",
        by=VIEW.key,
        direction="backward",
        tolerance=pd.Timedelta(hours=VIEW.ttl_hours),
        allow_exact_matches=True,
    )


@pytest.fixture(scope="module")
def winter() -> dict[str, dict[str, pd.DataFrame]]:
    """Published batches of 2013-12-01 .. 2014-03-10: 29 lookback days, then the stretch the tests build."""
    return {day: published(day) for day in days_between("2013-12-01", "2014-03-10")}


STRETCH = days_between("2014-01-01", "2014-03-10")  # crosses two month ends and 2014-02 (28 days)


@pytest.fixture(scope="module")
def built(winter) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The view rows and label rows of the stretch, one partition build per day."""
    return build(winter, STRETCH)


@pytest.fixture
def stretch(built) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fresh copies of :func:`built` for one test."""
    return built[0].copy(), built[1].copy()


# -- config and packaged data ------------------------------------------------------------------------------------
def test_the_config_is_valid_and_matches_the_module():
    from airflow_mlops.usecase.checks import check

    assert check(FOLDER) == []
    assert USECASE.source.period == "day" and USECASE.source.files == ("observations.csv",)
    assert USECASE.task == "regression" and USECASE.label == M.LABEL and USECASE.id_column == M.ID
    assert USECASE.period_column == M.PERIOD_COLUMN
    assert [(v.name, v.key, v.timestamp, v.fields) for v in USECASE.views] == [
        (M.VIEW, M.KEY, M.AVAILABLE_AT, M.VIEW_FIELDS)
    ]
    assert SPEC.row_features() == sorted(M.ROW_FEATURES, key=SPEC.feature_columns.index)
    assert M.LABEL not in SPEC.feature_columns and M.LABEL not in VIEW.fields
    # The longest window (30 days ending on the batch's day) is within the lookback.
    assert SPEC.lookback_periods >= 29


def test_the_packaged_data_is_every_day_of_four_years(data):
    frame = M.packaged_observations()
    assert list(frame.columns) == list(M.COLUMNS)
    assert (
        frame["date"].tolist() == days_between("2012-01-01", "2015-12-31") == data.index.strftime("%Y-%m-%d").tolist()
    )
    pd.testing.assert_frame_equal(
        frame.drop(columns="date"), data.drop(columns="date").reset_index(drop=True), check_dtype=False
    )
    assert set(frame["weather"]) == set(M.WEATHER)
    # Landing-driven (no schedule: no catch-up runs); the demo's range is the packaged data's.
    assert USECASE.source.schedule_first is None and USECASE.source.schedule_last is None
    assert M.DEMO_PERIODS == (frame["date"].iloc[0], frame["date"].iloc[-1])


def test_demo_batches_are_one_day_each(data):
    batch = M.demo_batches("2012-02-29")
    assert list(batch) == ["observations.csv"]
    (row,) = batch["observations.csv"].to_dict("records")
    assert row["date"] == "2012-02-29" and row["temp_max"] == data.loc["2012-02-29", "temp_max"]
    for bad in ("2011-12-31", "2016-01-01"):
        with pytest.raises(ValueError, match="covers 2012-01-01 .. 2015-12-31"):
            M.demo_batches(bad)
    with pytest.raises(ValueError, match="days"):
        M.demo_batches("2013-03")


# -- build_features ----------------------------------------------------------------------------------------------
def test_build_features_on_real_consecutive_days(stretch, data):
    views, _ = stretch
    assert len(views) == len(STRETCH)
    for column, dtype in VIEW.fields.items():
        assert str(views[column].dtype) == ("object" if dtype == "string" else dtype), column
    assert str(views[VIEW.timestamp].dtype) == TS and str(views[M.OBSERVED_ON].dtype) == TS
    assert views[VIEW.key].map(type).eq(str).all()
    for day in (pd.Timestamp(d) for d in STRETCH):
        row = views.set_index(VIEW.key).loc["SEA@" + (day + DAY).strftime("%Y%m%d")]
        # The row of slot d+1 holds day d and the windows ending on d, usable from d+1 00:00 UTC.
        assert row[VIEW.timestamp] == utc(str((day + DAY).date())) and row[M.OBSERVED_ON] == utc(str(day.date()))
        today = data.loc[day]
        for column in ("temp_max", "temp_min", "precipitation", "wind", "weather"):
            assert row[column] == today[column], (day, column)
        week, month = data.loc[day - 6 * DAY : day], data.loc[day - 29 * DAY : day]
        assert len(week) == 7 and len(month) == 30
        assert row["temp_max_mean_7d"] == pytest.approx(week["temp_max"].mean())
        assert row["temp_min_mean_7d"] == pytest.approx(week["temp_min"].mean())
        assert row["temp_max_mean_30d"] == pytest.approx(month["temp_max"].mean())
        assert row["precipitation_sum_7d"] == pytest.approx(week["precipitation"].sum())
        assert row["temp_max_change_1d"] == pytest.approx(today["temp_max"] - data.loc[day - DAY, "temp_max"])


def test_windows_leave_out_missing_days_and_start_with_the_data(winter, data):
    day = pd.Timestamp("2014-02-10")
    gaps = {p: f for p, f in winter.items() if p not in ("2014-02-09", "2014-02-05")}
    (row,) = M.build_features(context("2014-02-10", gaps))[M.VIEW].to_dict("records")
    week = data.loc[day - 6 * DAY : day].drop([pd.Timestamp("2014-02-09"), pd.Timestamp("2014-02-05")])
    assert row["temp_max_mean_7d"] == pytest.approx(week["temp_max"].mean())
    assert np.isnan(row["temp_max_change_1d"])  # the day before is missing
    # The first day of the data has no history: its windows are the day itself.
    first = context("2012-01-01", {"2012-01-01": published("2012-01-01")})
    (row,) = M.build_features(first)[M.VIEW].to_dict("records")
    assert row["temp_max_mean_30d"] == row["temp_max_mean_7d"] == data["temp_max"].iloc[0]
    assert np.isnan(row["temp_max_change_1d"])


def test_dates_as_strings_or_timestamps_give_the_same_rows(winter):
    ctx = context("2014-02-10", winter)
    raw = {
        p: {"observations": M.demo_batches(p)["observations.csv"]}  # date as the CSV says: "2014-02-10"
        for p in ctx.frames
    }
    as_read = FeatureContext(period=ctx.period, frames=raw, params=ctx.params)
    assert ctx.current["observations"]["date"].dtype == TS and raw["2014-02-10"]["observations"]["date"].dtype == object
    pd.testing.assert_frame_equal(M.build_features(ctx)[M.VIEW], M.build_features(as_read)[M.VIEW])
    pd.testing.assert_frame_equal(M.label_rows(ctx), M.label_rows(as_read))


def test_later_batches_in_the_context_change_nothing(winter):
    ctx = context("2014-02-10", winter)
    later = {**ctx.frames, **{p: winter[p] for p in ("2014-02-11", "2014-02-12")}}
    leaky = FeatureContext(period=ctx.period, frames=later, params=ctx.params)
    pd.testing.assert_frame_equal(M.build_features(ctx)[M.VIEW], M.build_features(leaky)[M.VIEW])
    pd.testing.assert_frame_equal(M.label_rows(ctx), M.label_rows(leaky))


def test_one_context_of_many_days_equals_one_per_day(winter, stretch):
    """The sanity model builds four years in one call: it must equal the day-by-day partitions."""
    views, labels = stretch
    everything = pd.concat([winter[p]["observations"] for p in winter], ignore_index=True)
    bulk = FeatureContext(period=STRETCH[-1], frames={STRETCH[-1]: {"observations": everything}}, params=SPEC.params)
    bulk_views = M.build_features(bulk)[M.VIEW]
    bulk_views = bulk_views[bulk_views[M.OBSERVED_ON] >= utc(STRETCH[0])].reset_index(drop=True)
    pd.testing.assert_frame_equal(F.check_view(bulk_views, VIEW, SPEC), views)
    bulk_labels = M.label_rows(bulk)
    bulk_labels = bulk_labels[bulk_labels[M.PERIOD_COLUMN] >= STRETCH[0]].reset_index(drop=True)
    pd.testing.assert_frame_equal(F.check_labels(bulk_labels, SPEC, STRETCH[-1]), labels)


# -- label_rows, outcomes, entity_keys ---------------------------------------------------------------------------
def test_label_rows_are_the_days_whose_temperature_became_known(winter, stretch, data):
    _, labels = stretch
    assert list(labels.columns) == [M.ID, "event_timestamp", M.LABEL, M.KEY, "month", "day_of_year", M.PERIOD_COLUMN]
    assert labels[M.ID].is_monotonic_increasing and labels[M.ID].is_unique
    assert str(labels["event_timestamp"].dtype) == TS and labels[M.LABEL].dtype == "float64"
    assert labels["month"].dtype == "int64" and labels["day_of_year"].dtype == "int64"
    days = pd.DatetimeIndex(pd.to_datetime(labels[M.PERIOD_COLUMN]))
    assert labels[M.PERIOD_COLUMN].tolist() == STRETCH
    assert (labels[M.ID] == "SEA@" + days.strftime("%Y%m%d")).all() and (labels[M.KEY] == labels[M.ID]).all()
    assert (labels["event_timestamp"] == days.tz_localize("UTC")).all()
    np.testing.assert_array_equal(labels[M.LABEL], data.loc[days, "temp_max"])
    np.testing.assert_array_equal(labels["month"], days.month)
    np.testing.assert_array_equal(labels["day_of_year"], days.dayofyear)
    outcomes = M.outcomes(context("2014-02-10", winter))
    assert outcomes.to_dict("records") == [
        {M.ID: "SEA@20140210", "event_timestamp": utc("2014-02-10"), M.LABEL: data.loc["2014-02-10", "temp_max"]}
    ]


def test_a_day_without_a_maximum_has_no_label_row():
    frame = M.demo_batches("2014-02-10")["observations.csv"].assign(temp_max=np.nan)
    ctx = FeatureContext(period="2014-02-10", frames={"2014-02-10": {"observations": frame}})
    assert M.label_rows(ctx).empty and list(M.label_rows(ctx).columns)[:3] == [M.ID, "event_timestamp", M.LABEL]


def test_a_request_gets_the_keys_and_calendar_of_the_label_row_of_its_date(winter):
    rows = pd.DataFrame(
        {
            "date": pd.to_datetime(["2014-02-10", "2014-02-10", "2014-03-01"]),
            "station": ["SEA", None, " sea "],
            "event_timestamp": [utc("2014-02-10"), utc("2014-02-10 15:30"), utc("2014-03-01")],
        },
        index=[7, 8, 9],
    )
    keys = M.entity_keys(rows, FeatureContext(period="2014-03-01", params=SPEC.params))
    assert list(keys.index) == [7, 8, 9]
    assert keys[M.ID].tolist() == ["SEA@20140210", "SEA@20140210", "SEA@20140301"]
    for i, period in ((7, "2014-02-10"), (9, "2014-03-01")):
        label = M.label_rows(context(period, winter)).iloc[0]
        for column in (M.ID, M.KEY, *M.ROW_FEATURES):
            assert keys.loc[i, column] == label[column], column
    assert str(keys["month"].dtype) == "int64" and keys[M.KEY].map(type).eq(str).all()


# -- no leakage --------------------------------------------------------------------------------------------------
def test_features_of_a_label_row_come_from_the_days_before_it(stretch, data):
    views, labels = stretch
    joined = pit_join(labels, views)
    # Every label row but the first (its slot was built by 2013-12-31, before the stretch) finds its row.
    found = joined["feature_ts"].notna()
    assert not found.iloc[0] and found.iloc[1:].all()
    joined = joined[found]
    assert (joined["feature_ts"] <= joined["event_timestamp"]).all()
    # The row holds the day before the day predicted; the label is the day predicted, never a feature.
    assert (joined[M.OBSERVED_ON] == joined["event_timestamp"] - DAY).all()
    observed = pd.DatetimeIndex(joined[M.OBSERVED_ON].dt.tz_localize(None))
    predicted = pd.DatetimeIndex(pd.to_datetime(joined[M.PERIOD_COLUMN]))
    np.testing.assert_array_equal(joined["temp_max"], data.loc[observed, "temp_max"])
    np.testing.assert_array_equal(joined[M.LABEL], data.loc[predicted, "temp_max"])
    assert M.LABEL not in views.columns and set(USECASE.forbidden).isdisjoint(SPEC.feature_columns)


def test_the_day_predicted_and_later_days_never_change_its_features(winter, stretch):
    """Replace the observations of day d and every later day: the features joined to the label rows up to d stay
    the same; the row of d+1 (built from day d) changes, so the check can see a change."""
    cut = "2014-02-10"
    views, labels = stretch
    broken = {
        p: published(p, M.demo_batches(p)["observations.csv"].assign(temp_max=44.0, temp_min=-19.0, weather="snow"))
        if p >= cut
        else f
        for p, f in winter.items()
    }
    broken_views, broken_labels = build(broken, STRETCH)
    fields = list(VIEW.fields)
    before = pit_join(labels, views).set_index(M.ID)
    after = pit_join(broken_labels, broken_views).set_index(M.ID)
    upto = [i for i in before.index if i <= "SEA@" + cut.replace("-", "")]
    pd.testing.assert_frame_equal(before.loc[upto, fields], after.loc[upto, fields])
    assert not before.loc["SEA@20140211", fields].equals(after.loc["SEA@20140211", fields])


# -- the Great Expectations suite, with the real library ---------------------------------------------------------
@pytest.fixture(scope="module")
def suite() -> dict:
    return validation.load_suite(SUITE_FILE)


def validate(period: str, frame: pd.DataFrame, suite: dict) -> validation.ValidationReport:
    """Validate one day's batch as ValidateBatchOperator does: CSV bytes read, prepared, suite with the day's
    parameters."""
    read, note = validation.read_frame_tolerant(frame.to_csv(index=False).encode(), "observations.csv")
    prepared = validation.prepare_batch({"observations": read}, M.prepare_validation, {"observations": "date"})
    return validation.validate_batch(
        f"{period}-test",
        prepared,
        {"observations": suite},
        validation.batch_parameters(period),
        notes=(note,) if note else (),
    )


#: Expectations that concern one batch as a whole (one row, the batch's own day), checked per day below.
PER_BATCH = {"expect_table_row_count_to_equal"}
PINS = {"_year", "_month", "_day"}


@pytest.mark.slow
def test_the_suite_passes_on_every_real_day(suite):
    """Every day of 2012-2015 against every row-level expectation at once (one frame of all days), then the
    per-batch ones: each day is one row (unique dates) and its pins hold, checked in full on real days chosen
    by their extremes."""
    rows_only = {
        **suite,
        "expectations": [
            e for e in suite["expectations"] if e["type"] not in PER_BATCH and e["kwargs"].get("column") not in PINS
        ],
    }
    report = validate("2012-01-01", M.packaged_observations(), rows_only)
    assert report.success, report.failure_message()
    assert report.suites[0].evaluated == len(rows_only["expectations"]) >= 15
    frame = M.packaged_observations()
    extremes = {
        frame.loc[frame["temp_max"].idxmax(), "date"],
        frame.loc[frame["temp_min"].idxmin(), "date"],
        frame.loc[frame["precipitation"].idxmax(), "date"],
        frame.loc[frame["wind"].idxmax(), "date"],
    }
    days = sorted(extremes | {"2012-02-29", frame.loc[frame["weather"] == "snow", "date"].iloc[0]})
    for day in days:
        report = validate(day, M.demo_batches(day)["observations.csv"], suite)
        assert report.success, report.failure_message()
        assert report.suites[0].evaluated == len(suite["expectations"])


# The expectation each corruption must trip, and the column it names (None: a table-level expectation).
CORRUPTION_SIGNATURES = {
    "out_of_range": ("expect_column_values_to_be_between", "temp_max"),
    "unknown_weather": ("expect_column_values_to_be_in_set", "weather"),
    "negative_precipitation": ("expect_column_values_to_be_between", "precipitation"),
    "null_date": ("expect_column_values_to_not_be_null", "date"),
    "duplicate_day": ("expect_table_row_count_to_equal", None),
    "missing_column": ("expect_table_columns_to_match_set", None),
}


def test_every_corruption_has_a_signature():
    assert set(CORRUPTION_SIGNATURES) == set(M.CORRUPTIONS) == set(M.CORRUPTION_KINDS)
    with pytest.raises(ValueError, match="unknown corruption"):
        M.corrupt(M.demo_batches("2013-07-04")["observations.csv"], "nope")


def test_corruptions_follow_the_demo_contract():
    """``CORRUPTIONS[kind](files, frames)`` rewrites the batch file's bytes from the good frame, as ``corrupt``
    breaks it; the replay source accepts the mapping (first kind: the demo's default)."""
    from airflow_mlops_dev import replay_source

    assert list(replay_source.corruptions(USECASE)) == list(M.CORRUPTION_KINDS)
    good = M.demo_batches("2013-07-04")
    for kind, rewrite in M.CORRUPTIONS.items():
        files = {name: frame.to_csv(index=False).encode() for name, frame in good.items()}
        rewrite(files, {name: frame.copy() for name, frame in good.items()})
        assert files["observations.csv"] == M.corrupt(good["observations.csv"], kind).to_csv(index=False).encode()
        assert rewrite.__doc__ and kind in rewrite.__doc__
        broken = replay_source.batch_files("2013-07-04", kind, USECASE)
        assert broken == files, kind


def test_demo_requests_ask_for_each_day_of_the_batch_and_pass_the_request_schema(winter):
    """One request per day (the schema has no other dimension: one station), for the day itself; the request's
    keys are the label row's, so monitoring joins it with the day's outcome."""
    from airflow_mlops.core.request_schema import request_frame, request_model
    from airflow_mlops_dev import replay_source, traffic

    requests = replay_source.demo_requests(USECASE, "2014-02-10", winter["2014-02-10"])
    assert requests.to_dict("records") == [{"date": "2014-02-10", "station": "SEA"}]
    spec = USECASE.serving["request"]
    bodies = traffic.requests_from_frame(requests, USECASE)
    model = request_model(spec, base_dir=USECASE.folder)
    rows = request_frame([model.model_validate(body) for body in bodies], spec)
    keys = M.entity_keys(rows, FeatureContext(period="2014-02-10", params=SPEC.params))
    label = M.label_rows(context("2014-02-10", winter))
    assert keys[M.ID].tolist() == label[M.ID].tolist() == ["SEA@20140210"]


def test_the_default_demo_backfills_the_first_models_days_then_steps_a_week():
    """``make demo EXAMPLE=seattle_weather``: the days the policy's first model needs land at once (the check of
    the last of them asks for it), then weekly live steps; the broken day falls in a live step."""
    from airflow_mlops_dev import demo, replay_source

    plan = demo.plan(demo.parser().parse_args(["--usecase", str(FOLDER)]))
    bootstrap = USECASE.monitoring["policy"]["bootstrap"]["min_periods"]
    assert plan.backfill == bootstrap + 1 and plan.step == 7
    assert plan.periods[0] == M.DEMO_PERIODS[0]
    assert len(plan.periods) == plan.backfill + replay_source.DAILY_DEMO_LIVE_DAYS
    (broken,) = plan.corrupt
    assert broken in plan.periods[plan.backfill :] and plan.corrupt[broken] == next(iter(M.CORRUPTIONS))
    # A check's window holds the predictions of min_rows days at least, and more than one step's worth.
    window = USECASE.monitoring["window_periods"]
    assert window > plan.step and window >= USECASE.monitoring["performance"]["min_rows"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CORRUPTION_SIGNATURES), ids=str)
def test_a_corrupted_day_fails_for_its_reason(kind, suite):
    report = validate("2013-07-04", M.corrupt(M.demo_batches("2013-07-04")["observations.csv"], kind), suite)
    assert not report.success
    expectation, column = CORRUPTION_SIGNATURES[kind]
    hits = [f for _, f in report.failures if f.expectation == expectation and f.column == column]
    assert hits, report.failure_message()


@pytest.mark.slow
def test_a_batch_of_another_day_fails_the_pins(suite):
    report = validate("2013-07-05", M.demo_batches("2013-07-04")["observations.csv"], suite)
    assert [(f.expectation, f.column) for _, f in report.failures] == [("expect_column_values_to_be_between", "_day")]
    report = validate("2014-07-04", M.demo_batches("2013-07-04")["observations.csv"], suite)
    assert [f.column for _, f in report.failures] == ["_year"]


# -- a sanity model: what justifies the gate's absolute bounds ---------------------------------------------------
@pytest.fixture(scope="module")
def training_set() -> pd.DataFrame:
    """Four years of label rows joined point-in-time with the view (one context of all days: see above)."""
    everything = published("2015-12-31", M.packaged_observations())["observations"]  # every day, published at once
    ctx = FeatureContext(period="2015-12-31", frames={"2015-12-31": {"observations": everything}}, params=SPEC.params)
    views = F.check_view(M.build_features(ctx)[M.VIEW], VIEW, SPEC)
    labels = F.check_labels(M.label_rows(ctx), SPEC, "2015-12-31")
    return pit_join(labels, views).sort_values("event_timestamp").reset_index(drop=True)


def _matrix(frame: pd.DataFrame) -> pd.DataFrame:
    """The model's input: weather as category codes (unknown: NaN), numerics as floats, in config order."""
    out = pd.DataFrame({"weather": pd.Categorical(frame["weather"], categories=M.WEATHER).codes.astype("float64")})
    out.loc[out["weather"] < 0, "weather"] = np.nan
    for column in USECASE.numeric:
        out[column] = frame[column].to_numpy(dtype="float64")
    return out


def _metrics(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    return {
        "rmse": float(np.sqrt(mean_squared_error(y, predicted))),
        "mae": float(mean_absolute_error(y, predicted)),
        "r2": float(r2_score(y, predicted)),
    }


def _passes(metrics: dict[str, float]) -> bool:
    """The gate's absolute bounds of mlops.yaml, read from the config."""
    bounds = USECASE.gate["absolute"]
    return all(
        ("max" not in b or metrics[m] <= b["max"]) and ("min" not in b or metrics[m] >= b["min"])
        for m, b in bounds.items()
    )


def test_the_sanity_model_beats_persistence_and_passes_the_gate(training_set):
    """Trained on 2013-2014 with the config's estimator params (two years: window_periods), scored on 2015: it beats
    persistence (tomorrow's maximum = today's) over the year, every 30-day hold-out of 2015 passes the gate's
    absolute bounds, and a constant model (the training mean) fails them on most of those hold-outs."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    assert USECASE.model["estimator"] == "hist_gradient_boosting" and USECASE.categorical == ("weather",)
    train = training_set[training_set[M.PERIOD_COLUMN].between("2013-01-01", "2014-12-31")]
    test = training_set[training_set[M.PERIOD_COLUMN] >= "2015-01-01"]
    assert len(train) == SPEC.window_periods and len(test) == 365
    model = HistGradientBoostingRegressor(
        categorical_features=[0], random_state=USECASE.model["seed"], **USECASE.model["params"]
    )
    with threadpool_limits(USECASE.model["threads"]):  # as the pipeline trains (model.threads)
        predicted = model.fit(_matrix(train), train[M.LABEL]).predict(_matrix(test))
    y = test[M.LABEL].to_numpy()
    persistence = test["temp_max"].to_numpy()  # the observed maximum of the day before
    assert _metrics(y, predicted)["rmse"] < _metrics(y, persistence)["rmse"]
    holdout = int(USECASE.model["holdout_periods"])
    constant = np.full(len(y), train[M.LABEL].mean())
    blocks = [slice(i, i + holdout) for i in range(0, len(y) - holdout + 1, holdout)]
    assert len(blocks) == 12
    for block in blocks:
        assert _passes(_metrics(y[block], predicted[block])), (
            test[M.PERIOD_COLUMN].iloc[block.start],
            _metrics(y[block], predicted[block]),
        )
    rejected = [b for b in blocks if not _passes(_metrics(y[b], constant[b]))]
    assert len(rejected) > len(blocks) / 2
