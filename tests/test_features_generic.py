"""The generic feature stage: a use case's declared views, the checks of what its functions return, the
training-set contract and online defaults, and partition builds of user code (good and bad).

Most tests run on ``tests/usecases/tiny`` (daily sensor readings, two views), whose values are checked by hand;
the spec tests also read the flight_delay example's declaration.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from airflow_mlops.core import features as F

from features_fixtures import (
    FLIGHTS,
    TINY,
    build_all,
    load_spec,
    load_usecase,
    reference_training_set,
    seed_validated,
    tiny_expected,
    tiny_validated,
    user_features,
)

TINY_SPEC = load_spec(TINY)
DAYS = ("2024-01-01", "2024-01-02", "2024-01-03")


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def _view(spec: F.FeatureSpec, name: str):
    return next(v for v in spec.views if v.name == name)


# -- the spec a use case declares ----------------------------------------------------------------------------------
def test_spec_of_the_flight_example():
    spec = load_spec(FLIGHTS)
    assert spec.name == "flight_delay" and spec.id_column == "flight_id" and spec.label == "is_late"
    assert spec.period_column == "month" and spec.lookback_periods == 2 and spec.params["threshold_minutes"] == 15
    # carrier and origin come with each label row and request: no view serves them
    assert spec.row_features() == ["carrier", "origin"]
    assert spec.join_keys() == ["flight_id", "weather_slot", "carrier_slot", "route_slot", "origin_slot"]
    refs = spec.feature_refs()
    assert refs[:2] == ["flight_features:dest", "flight_features:sched_hour"]
    assert {"origin_weather:temp", "carrier_history:carrier_late_rate_7d", "origin_history:origin_flights_7d"} <= set(
        refs
    )
    assert len(refs) == len(spec.feature_columns) - 2  # every model feature but the two row features
    assert spec.training_columns[:7] == [
        "flight_id",
        "event_timestamp",
        "is_late",
        "month",
        "carrier",
        "origin",
        "dest",
    ]
    assert spec.default_of("plane_known") == 0 and spec.default_of("dest") == "UNKNOWN"
    assert math.isnan(spec.default_of("temp")) and spec.default_of("carrier_flights_30d") == 0
    assert spec.module_file == FLIGHTS / "usecase.py"


def test_spec_defaults_and_fingerprint_follow_the_features_and_label_only(tmp_path):
    import copy

    from airflow_mlops.usecase import config

    usecase = load_usecase(FLIGHTS)
    raw = usecase.raw

    def spec_of(changed: dict) -> F.FeatureSpec:
        return F.FeatureSpec.from_usecase(config.parse(changed, usecase.config_file))

    base = spec_of(copy.deepcopy(raw))
    assert base.fingerprint == F.FeatureSpec.from_usecase(usecase).fingerprint
    other_model = copy.deepcopy(raw)
    other_model["model"]["params"]["max_iter"] = 3
    assert spec_of(other_model).fingerprint == base.fingerprint  # a model change does not rebuild features
    other_params = copy.deepcopy(raw)
    other_params["features"]["params"]["threshold_minutes"] = 30
    assert spec_of(other_params).fingerprint != base.fingerprint
    other_label = copy.deepcopy(raw)
    other_label["label"]["forbidden"].append("dep_time_local")
    assert spec_of(other_label).fingerprint != base.fingerprint

    bare = copy.deepcopy(raw)
    for key in ("lookback_periods", "window_periods", "min_periods", "join_chunk_rows", "version", "unknown_category"):
        bare["features"].pop(key)
    spec = spec_of(bare)
    assert (spec.lookback_periods, spec.window_periods, spec.min_periods) == (0, 12, 1)
    assert (spec.join_chunk_rows, spec.feature_version, spec.unknown_category) == (50_000, 1, "UNKNOWN")

    bad = copy.deepcopy(raw)
    bad["features"]["join_chunk_rows"] = 0
    with pytest.raises(ValueError, match=r"mlops\.yaml: features\.join_chunk_rows must be >= 1"):
        spec_of(bad)


def test_periods_read_and_interval():
    assert F.lookback("2024-01-03", TINY_SPEC) == ["2024-01-02", "2024-01-03"]
    assert F.lookback("2024-03-01", TINY_SPEC) == ["2024-02-29", "2024-03-01"]
    assert F.lookback("2013-01", load_spec(FLIGHTS)) == ["2012-11", "2012-12", "2013-01"]
    assert F.interval(["2024-01-03", "2024-01-01"]) == (ts("2024-01-01"), ts("2024-01-04"))
    assert F.interval(["2013-02"]) == (ts("2013-02-01"), ts("2013-03-01"))


# -- checking what the use case's functions return ----------------------------------------------------------------
def test_check_view_types_and_sorts_a_view_frame():
    view = _view(TINY_SPEC, "sensor_stats")
    frame = pd.DataFrame(
        {
            "sensor": [2, 1, 1],  # not strings yet
            "computed_at": ["2024-01-02T00:00:00+01:00", "2024-01-02T00:00:00+00:00", "2024-01-01T00:00:00+00:00"],
            "sensor_mean": ["1.5", 2, None],
            "sensor_count": [1.0, np.nan, 3.0],  # a gap: float, not filled (the join's finishing fills it)
            "sensor_site": ["north", None, "south"],
            "extra": [1, 2, 3],  # lineage columns pass through
        }
    )
    out = F.check_view(frame, view, TINY_SPEC)
    assert out["sensor"].tolist() == ["1", "1", "2"] and out["sensor"].dtype == object
    assert str(out["computed_at"].dtype) == F.TS
    assert out["computed_at"].tolist() == [ts("2024-01-01"), ts("2024-01-02"), ts("2024-01-01T23:00")]
    assert out["sensor_mean"].dtype == "float64" and np.isnan(out["sensor_mean"].iloc[0])
    assert out["sensor_count"].dtype == "float64" and np.isnan(out["sensor_count"].iloc[1])
    assert out["sensor_site"].tolist() == ["south", None, "north"] and out["extra"].tolist() == [3, 2, 1]
    whole = F.check_view(frame.assign(sensor_count=[1, 2, 3]), view, TINY_SPEC)
    assert whole["sensor_count"].dtype == "int64"


@pytest.mark.parametrize(
    ("plant", "message"),
    [
        (lambda f: f.to_dict("list"), r"build_features\(\) returned dict for view sensor_stats, not a DataFrame"),
        (lambda f: f.drop(columns=["sensor_count"]), r"view sensor_stats lacks column\(s\) sensor_count"),
        (
            lambda f: f.drop(columns=["computed_at", "sensor"]),
            r"view sensor_stats lacks column\(s\) sensor, computed_at",
        ),
        (lambda f: f.assign(sensor=[None, "s2"]), r"view sensor_stats has rows without sensor or computed_at"),
        (lambda f: f.assign(computed_at=[ts("2024-01-02"), None]), r"view sensor_stats has rows without sensor"),
    ],
    ids=["not-a-frame", "missing-field", "missing-key-and-time", "null-key", "null-time"],
)
def test_check_view_errors_name_the_view_and_column(plant, message):
    frame = pd.DataFrame(
        {
            "sensor": ["s1", "s2"],
            "computed_at": [ts("2024-01-02")] * 2,
            "sensor_mean": [1.0, 2.0],
            "sensor_count": [1, 2],
            "sensor_site": ["north", "south"],
        }
    )
    with pytest.raises(ValueError, match=message):
        F.check_view(plant(frame), _view(TINY_SPEC, "sensor_stats"), TINY_SPEC)


def _label_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "reading_id": [12, 3],
            "event_timestamp": ["2024-01-02T10:00Z", "2024-01-02T09:00Z"],
            "value": [1.5, 2.5],
            "sensor": ["s1", 7],
        }
    )


def test_check_labels_types_completes_and_sorts_label_rows():
    out = F.check_labels(_label_frame(), TINY_SPEC, "2024-01-02")
    assert out["reading_id"].tolist() == ["12", "3"]  # ids are strings, sorted as strings
    assert out["sensor"].tolist() == ["s1", "7"] and out["sensor"].dtype == object
    assert out["day"].tolist() == ["2024-01-02"] * 2  # the period column, added
    assert str(out["event_timestamp"].dtype) == F.TS and out["value"].tolist() == [1.5, 2.5]
    own = F.check_labels(_label_frame().assign(day=["2024-01-01", "2024-01-02"]), TINY_SPEC, "2024-01-02")
    assert own["day"].tolist() == ["2024-01-01", "2024-01-02"]  # a period column of its own is kept


@pytest.mark.parametrize(
    ("plant", "message"),
    [
        (lambda f: f.values, r"label_rows\(\) returned ndarray, not a DataFrame"),
        (lambda f: f.drop(columns=["sensor"]), r"label_rows\(\) rows lack column\(s\) sensor"),
        (lambda f: f.drop(columns=["value", "reading_id"]), r"lack column\(s\) reading_id, value"),
        (lambda f: f.assign(reading_id=[3, 3]), r"label_rows\(\): 1 rows share an id, e.g. 3"),
        (lambda f: f.assign(reading_id=[None, 3]), r"label_rows\(\): rows without reading_id or event_timestamp"),
        (lambda f: f.assign(event_timestamp=[None, None]), r"rows without reading_id or event_timestamp"),
    ],
    ids=["not-a-frame", "missing-key", "missing-id-and-label", "duplicate-id", "null-id", "null-time"],
)
def test_check_labels_errors_name_the_column(plant, message):
    with pytest.raises(ValueError, match=message):
        F.check_labels(plant(_label_frame()), TINY_SPEC, "2024-01-02")


# -- training sets and online reads -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_built() -> dict[str, pd.DataFrame]:
    return build_all(load_usecase(TINY), tiny_validated())


def test_finish_training_set_gives_the_contract_with_defaults(tiny_built):
    joined = reference_training_set(tiny_built, tiny_built[F.LABELS], TINY_SPEC)
    shuffled = joined.sample(frac=1.0, random_state=1)  # a join's row order is unspecified
    assert shuffled["reading_id"].tolist() != sorted(shuffled["reading_id"])
    out = F.finish_training_set(shuffled, TINY_SPEC)
    assert list(out.columns) == TINY_SPEC.training_columns
    pd.testing.assert_frame_equal(out, tiny_expected(), check_exact=True)
    assert out["sensor_count"].dtype == "int64" and out["hour"].dtype == "int64" and out["kind"].dtype == object
    # a row feature's gap is the unknown category too
    gap = F.finish_training_set(joined.assign(sensor=joined["sensor"].where(joined["reading_id"] != "2")), TINY_SPEC)
    assert gap.set_index("reading_id").loc["2", "sensor"] == "UNKNOWN"


def test_finish_training_set_rejects_a_row_without_its_required_view_or_duplicate_ids(tiny_built):
    frames = dict(tiny_built)
    frames["reading_features"] = frames["reading_features"][frames["reading_features"]["reading_id"] != "5"]
    joined = reference_training_set(frames, frames[F.LABELS], TINY_SPEC)
    with pytest.raises(ValueError, match=r"1 label rows found no row of the required view reading_features, e.g. 5"):
        F.finish_training_set(joined, TINY_SPEC)
    # a view that is not required just gives defaults (sensor_stats is not)
    assert not _view(TINY_SPEC, "sensor_stats").required
    labels = tiny_built[F.LABELS]
    twice = reference_training_set(tiny_built, pd.concat([labels, labels.iloc[:1]]), TINY_SPEC)
    with pytest.raises(ValueError, match="duplicate reading_id rows"):
        F.finish_training_set(twice, TINY_SPEC)


def test_finish_online_fills_the_declared_defaults_and_names_unknown_views():
    values = {
        "kind": ["a", None],
        "size": [1.0, None],
        "hour": [3, None],
        "sensor_mean": [None, None],
        "sensor_count": [None, None],
        "sensor_site": [None, None],
    }
    known, unknown = F.finish_online(values, TINY_SPEC)
    assert known == {
        "kind": "a",
        "size": 1.0,
        "hour": 3,
        "sensor_mean": known["sensor_mean"],
        "sensor_count": 0,
        "sensor_site": "NOWHERE",
    }
    assert math.isnan(known["sensor_mean"])
    assert unknown["kind"] == "UNKNOWN" and math.isnan(unknown["size"]) and unknown["sensor_count"] == 0
    assert F.unknown_views(values, TINY_SPEC, 0) == ["sensor_stats"]
    assert F.unknown_views(values, TINY_SPEC, 1) == ["reading_features", "sensor_stats"]
    assert F.finish_online({}, TINY_SPEC) == []


# -- partitions built from user code ------------------------------------------------------------------------------
def _seed_tiny(lake, days=DAYS) -> None:
    validated = tiny_validated()
    for day in days:
        seed_validated(lake, day, validated[day])


def test_build_partition_commits_the_checked_frames_and_skips_unchanged_inputs(lake, caplog):
    from airflow_mlops.operators.features import build_partition

    usecase = load_usecase(TINY)
    _seed_tiny(lake)
    log = logging.getLogger("test.features")
    with caplog.at_level(logging.WARNING, logger="test.features"):
        first = build_partition(lake, "2024-01-01", usecase, TINY_SPEC, log)
    assert "no validated 2023-12-31" in caplog.text  # its lookback is absent: logged, not an error
    assert first["rebuilt"] is True
    assert first["rows"] == {"labels": 3, "reading_features": 3, "sensor_stats": 0}
    third = build_partition(lake, "2024-01-03", usecase, TINY_SPEC, log)
    assert third["rows"] == {"labels": 2, "reading_features": 2, "sensor_stats": 2}  # s1 and s3 read on day 2
    manifest = lake.read_manifest(lake.path("features", "2024-01-03"))
    assert set(manifest["inputs"]) == {"2024-01-02", "2024-01-03"} and manifest["period"] == "2024-01-03"
    assert manifest["feature_version"] == TINY_SPEC.feature_version
    # what was written is what the user functions returned, checked, byte for byte
    expected = user_features(usecase, "2024-01-03", tiny_validated())
    for view, frame in expected.items():
        written = lake.read_verified(manifest["files"][f"{view}.parquet"])
        assert written == F.to_parquet_bytes(frame), view
    again = build_partition(lake, "2024-01-03", usecase, TINY_SPEC, log)
    assert again["rebuilt"] is False and again["sha256"] == third["sha256"]
    # an input changes (day 2 re-validated with another value): day 3's statistics are rebuilt
    changed = tiny_validated()["2024-01-02"]
    changed["readings"].loc[0, "value"] = 4.0
    seed_validated(lake, "2024-01-02", changed)
    rebuilt = build_partition(lake, "2024-01-03", usecase, TINY_SPEC, log)
    assert rebuilt["rebuilt"] is True and rebuilt["sha256"] != third["sha256"]


def test_a_period_never_validated_fails_naming_it(lake):
    from airflow_mlops.operators.features import ValidatedPeriodMissingError, build_partition

    with pytest.raises(ValidatedPeriodMissingError, match=r"no committed validated/2024-01-05/"):
        build_partition(lake, "2024-01-05", load_usecase(TINY), TINY_SPEC, logging.getLogger("test"))


BAD_CODE = {
    "view-missing-a-field": (
        "def build_features(ctx):\n"
        "    views = _build(ctx)\n"
        "    views['reading_features'] = views['reading_features'].drop(columns=['size'])\n"
        "    return views\n",
        r"usecase\.py, period 2024-01-02: build_features\(\): view reading_features lacks column\(s\) size",
    ),
    "undeclared-view": (
        "def build_features(ctx):\n    views = _build(ctx)\n    views['extra_view'] = views.pop('sensor_stats')\n"
        "    return views\n",
        r"usecase\.py, period 2024-01-02: build_features\(\) must return exactly the declared views: "
        r"missing \['sensor_stats'\], undeclared \['extra_view'\]",
    ),
    "not-a-mapping": (
        "def build_features(ctx):\n    return list(_build(ctx).values())\n",
        r"build_features\(\) returned list, not a mapping",
    ),
    "view-not-a-frame": (
        "def build_features(ctx):\n    views = _build(ctx)\n    views['sensor_stats'] = None\n    return views\n",
        r"build_features\(\) returned NoneType for view sensor_stats, not a DataFrame",
    ),
    "labels-without-a-key": (
        "def label_rows(ctx):\n    return _labels(ctx).drop(columns=['sensor'])\n",
        r"usecase\.py, period 2024-01-02: label_rows\(\) rows lack column\(s\) sensor",
    ),
    "raises-key-error": (
        "def build_features(ctx):\n    return _build(ctx)['no_such_view']\n",
        r"usecase\.py, period 2024-01-02: 'no_such_view'",
    ),
    "missing-function": (
        "del label_rows\n",
        r"usecase\.py, period 2024-01-02: usecase\.py: no function label_rows\(\)",
    ),
    "wrong-arity": (
        "def build_features(ctx, extra):\n    return _build(ctx)\n",
        r"build_features\(\) must take 1 positional argument",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CODE), ids=list(BAD_CODE))
def test_build_partition_fails_naming_what_user_code_got_wrong(case, lake, tmp_path):
    """Wrong frames from a use case's functions fail the task once (no retry can fix code), naming the file, the
    period, the function and the view or column; nothing is committed."""
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_mlops.operators.features import build_partition

    folder = tmp_path / "tiny"
    shutil.copytree(TINY, folder)
    module = Path(folder / "usecase.py")
    code, message = BAD_CODE[case]
    module.write_text(module.read_text() + "\n\n_build, _labels = build_features, label_rows\n\n\n" + code)
    usecase = load_usecase(folder)
    _seed_tiny(lake, DAYS[:2])
    with pytest.raises(AirflowFailException, match=message):
        build_partition(lake, "2024-01-02", usecase, F.FeatureSpec.from_usecase(usecase), logging.getLogger("test"))
    assert lake.read_manifest(lake.path("features", "2024-01-02")) is None
