"""The replay source of a use case: what ``make demo`` lands and sends, taken from the use case's own module.

A use case's ``usecase.py`` may provide, for the demo (docs/usecase.md):

* ``demo_batches(period) -> {file name: DataFrame}``: one batch as the upstream would land it (every file of
  ``source.files``);
* ``demo_requests(ctx) -> DataFrame``: the period's live traffic, one row per request (columns: the
  ``serving.request`` fields); ``ctx.frames`` holds the period's validated frames;
* ``CORRUPTIONS: {kind: fn(files, frames)}``: broken deliveries; ``fn`` rewrites ``files`` (file name → bytes of
  the good batch) from ``frames`` (file name → the good batch's DataFrames). The first kind is the demo's default.

* ``DEMO_PERIODS = (first, last)``: the periods ``demo_batches`` can deliver, the replay's default range (else
  ``source.schedule``; a landing-driven use case has none).

This module turns them into landed bytes (CSV or Parquet by the file's name), checks what the functions return,
and decides which periods a replay covers and how it groups them: a backfill (the first periods at once: a daily
use case lands the days its first model needs), then live steps (a week of days, or one month, at a time). No
Airflow import; pandas only inside functions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.batches import is_parquet, parse_period, period_kind, shift_period

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlops.usecase.config import UseCase

#: A daily use case's default replay: at least its first this many days (a range of years would take hours)...
DAILY_DEMO_DAYS = 90
#: ...or the days its first model needs (landed at once: the backfill) plus this many of serving and monitoring.
DAILY_DEMO_LIVE_DAYS = 42
#: A daily replay's live step: this many days land at once, then one outcomes event, one monitoring run.
DAILY_DEMO_STEP = 7

Corruption = Callable[[dict[str, bytes], dict[str, "pd.DataFrame"]], None]


class DemoSourceError(ValueError):
    """A use case cannot be replayed as asked (no demo function, a bad return value, an unknown period or
    corruption); the message names the file, the function or the argument to fix."""


# -- the use case ------------------------------------------------------------------------------------------------
def default_usecase() -> Path:
    """The use case a replay without one names: ``MLOPS_USECASE``, else the first use-case folder of the projects
    folder (``MLOPS_PROJECTS``, default ``examples/``: the reference example).

    :raises DemoSourceError: no use case found.
    """
    from airflow_mlops.usecase import config

    chosen = os.environ.get("MLOPS_USECASE")
    if chosen:
        return Path(chosen).resolve()
    found = config.discover()
    if not found:
        raise DemoSourceError(f"no use case under {config.projects_dir()}: name its folder (--usecase)")
    return found[0]


def load_usecase(usecase: UseCase | str | Path | None = None) -> UseCase:
    """The typed use case: ``usecase`` as given (a loaded one, or its folder), else :func:`default_usecase`.

    :param usecase: a ``UseCase``, a use-case folder, or None.
    """
    from airflow_mlops.usecase import config

    if usecase is None:
        return config.load(default_usecase())
    if isinstance(usecase, str | Path):
        return config.load(usecase)
    return usecase


def _function(usecase: UseCase, name: str, arity: int, *, required: bool) -> Callable[..., Any] | None:
    from airflow_mlops.usecase import load_function
    from airflow_mlops.usecase.user_code import UserCodeError

    try:
        return load_function(usecase.module_file, name, arity=arity, required=required)
    except UserCodeError as err:
        raise DemoSourceError(f"{err} (the demo calls {name}; see docs/usecase.md)") from err


def check_period(usecase: UseCase, period: str) -> str:
    """``period`` normalised, checked to be of the use case's kind (``source.period``).

    :param usecase: the use case.
    :param period: ``YYYY-MM`` or ``YYYY-MM-DD``.
    :raises DemoSourceError: not a period, or one of the other kind.
    """
    try:
        normal = parse_period(period)
    except ValueError as err:
        raise DemoSourceError(str(err)) from err
    if period_kind(normal) != usecase.source.period:
        example = "2013-03" if usecase.source.period == "month" else "2013-03-05"
        raise DemoSourceError(
            f"{normal} is a {period_kind(normal)}, but {usecase.name}'s batches are one {usecase.source.period} each "
            f"(e.g. {example})"
        )
    return normal


# -- batches -----------------------------------------------------------------------------------------------------
def demo_frames(period: str, usecase: UseCase | str | Path | None = None) -> dict[str, pd.DataFrame]:
    """The period's batch from the use case's ``demo_batches(period)``: file name → DataFrame, one per
    ``source.files``.

    :param period: the period (of the use case's kind).
    :param usecase: the use case (default :func:`default_usecase`).
    :raises DemoSourceError: no ``demo_batches``, or it returned other files or no DataFrames.
    :raises ValueError: ``demo_batches`` refused the period (e.g. outside its data); its message is kept.
    """
    import pandas as pd

    uc = load_usecase(usecase)
    period = check_period(uc, period)
    fn = _function(uc, "demo_batches", 1, required=True)
    frames = fn(period)
    where = f"{uc.module_file.name}: demo_batches({period!r})"
    if not isinstance(frames, Mapping):
        raise DemoSourceError(f"{where} returned {type(frames).__name__}, not {{file name: DataFrame}}")
    missing = [name for name in uc.source.files if name not in frames]
    extra = sorted(set(frames) - set(uc.source.files))
    if missing or extra:
        raise DemoSourceError(
            f"{where} must return exactly the files of source.files ({', '.join(uc.source.files)}): "
            + "; ".join(
                filter(None, [missing and f"missing {', '.join(missing)}", extra and f"extra {', '.join(extra)}"])
            )
        )
    bad = [name for name, frame in frames.items() if not isinstance(frame, pd.DataFrame)]
    if bad:
        raise DemoSourceError(f"{where}: {', '.join(bad)} must be pandas DataFrames")
    return {name: frames[name] for name in uc.source.files}


#: The name monthly code used (the batch of a period, as frames).
month_frames = demo_frames


def to_file_bytes(name: str, frame: pd.DataFrame) -> bytes:
    """A batch file's bytes as the upstream writes them: Parquet for ``.parquet``/``.pq``, else CSV (no index).

    :param name: the file's name.
    :param frame: its rows.
    """
    if is_parquet(name):
        return frame.to_parquet(index=False)
    return frame.to_csv(index=False).encode()


def corruptions(usecase: UseCase | str | Path | None = None) -> dict[str, Corruption]:
    """The use case's ``CORRUPTIONS`` (kind → ``fn(files, frames)``), in its order; empty if it declares none.

    :param usecase: the use case (default :func:`default_usecase`).
    :raises DemoSourceError: ``CORRUPTIONS`` is not a mapping of names to functions of two arguments.
    """
    from airflow_mlops.usecase.user_code import UserCodeError, check_arity, load_module

    uc = load_usecase(usecase)
    try:
        declared = getattr(load_module(uc.module_file), "CORRUPTIONS", None)
    except UserCodeError as err:
        raise DemoSourceError(str(err)) from err
    if declared is None:
        return {}
    where = f"{uc.module_file.name}: CORRUPTIONS"
    if not isinstance(declared, Mapping):
        raise DemoSourceError(
            f"{where} must map each kind to a function fn(files, frames) that rewrites the batch's bytes, "
            f"not a {type(declared).__name__} (docs/usecase.md)"
        )
    out: dict[str, Corruption] = {}
    for kind, fn in declared.items():
        if not callable(fn):
            raise DemoSourceError(f"{where}[{kind!r}] is not a function")
        try:
            check_arity(fn, 2, f"{where}[{kind!r}]")
        except UserCodeError as err:
            raise DemoSourceError(str(err)) from err
        out[str(kind)] = fn
    return out


def batch_files(
    period: str, corrupt: str | None = None, usecase: UseCase | str | Path | None = None
) -> dict[str, bytes]:
    """The period's batch as file name → bytes, optionally broken in one of the use case's ``CORRUPTIONS`` ways.

    :param period: the period.
    :param corrupt: a kind of ``CORRUPTIONS``, or None for the good batch.
    :param usecase: the use case (default :func:`default_usecase`).
    :raises DemoSourceError: an unknown corruption (the message lists the kinds), or a bad ``demo_batches``.
    """
    uc = load_usecase(usecase)
    kinds = corruptions(uc) if corrupt is not None else {}
    if corrupt is not None and corrupt not in kinds:
        raise DemoSourceError(
            f"unknown corruption {corrupt!r} for {uc.name}; choose one of: {', '.join(kinds) or '(none declared)'}"
        )
    frames = demo_frames(period, uc)
    files = {name: to_file_bytes(name, frame) for name, frame in frames.items()}
    if corrupt is not None:
        kinds[corrupt](files, {name: frame.copy() for name, frame in frames.items()})
        unknown = sorted(set(files) - set(frames))
        if unknown:
            raise DemoSourceError(f"CORRUPTIONS[{corrupt!r}] added files that are not in source.files: {unknown}")
    return files


# -- traffic ------------------------------------------------------------------------------------------------------
def has_demo_requests(usecase: UseCase) -> bool:
    """Whether the use case's module defines ``demo_requests`` (else the replay sends no live traffic).

    :param usecase: the use case.
    """
    return _function(usecase, "demo_requests", 1, required=False) is not None


def demo_requests(usecase: UseCase, period: str, frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The period's live traffic from the use case's ``demo_requests(ctx)``: one row per request.

    :param usecase: the use case.
    :param period: the period.
    :param frames: the period's validated frames, file stem → DataFrame (``ctx.frames[period]``).
    :raises DemoSourceError: no ``demo_requests``, or it returned no DataFrame.
    """
    import pandas as pd

    from airflow_mlops.usecase import FeatureContext

    fn = _function(usecase, "demo_requests", 1, required=True)
    ctx = FeatureContext(
        period=period, frames={period: frames}, params=dict(usecase.features.get("params") or {}), config=usecase
    )
    rows = fn(ctx)
    if not isinstance(rows, pd.DataFrame):
        raise DemoSourceError(
            f"{usecase.module_file.name}: demo_requests() returned {type(rows).__name__}, not a DataFrame of requests"
        )
    return rows


# -- which periods ------------------------------------------------------------------------------------------------
def period_range(specs: Iterable[str], kind: str | None = None) -> list[str]:
    """Every period named, in order, without duplicates: ``["2013-01:2013-03", "2013-07"]`` or
    ``["2012-01-01:2012-01-31,2012-03-01"]`` (ranges ``FIRST:LAST`` inclusive, lists by comma or space).

    :param specs: the specifications.
    :param kind: ``month`` or ``day``: every period must be of it (None: any, but one kind).
    :raises DemoSourceError: not a period, a range of two kinds, a range backwards, or a period of another kind.
    """
    out: list[str] = []
    for spec in specs:
        for part in str(spec).replace(",", " ").split():
            first, _, last = part.partition(":")
            try:
                start, end = parse_period(first), parse_period(last or first)
            except ValueError as err:
                raise DemoSourceError(str(err)) from err
            if period_kind(start) != period_kind(end):
                raise DemoSourceError(f"{part}: {start} and {end} are not of one kind")
            if end < start:
                raise DemoSourceError(f"{part}: {end} is before {start}")
            period = start
            while period <= end:
                if period not in out:
                    out.append(period)
                period = shift_period(period, 1)
    kinds = {period_kind(p) for p in out}
    if kind is not None and kinds - {kind}:
        other = next(p for p in out if period_kind(p) != kind)
        raise DemoSourceError(f"{other} is not a {kind}: this use case's batches are one {kind} each")
    if len(kinds) > 1:
        raise DemoSourceError("months and days mixed: name periods of one kind")
    return sorted(out)


def bootstrap_periods(usecase: UseCase) -> int | None:
    """After how many validated periods the retraining policy asks for the first model
    (``monitoring.policy.bootstrap.min_periods``, or ``min_months``); None if it never does.

    :param usecase: the use case.
    """
    bootstrap = ((usecase.monitoring or {}).get("policy") or {}).get("bootstrap") or {}
    value = bootstrap.get("min_periods", bootstrap.get("min_months"))
    return None if value is None else int(value)


def demo_range(usecase: UseCase) -> tuple[str, str]:
    """The first and last period a replay of the use case may cover: its module's ``DEMO_PERIODS`` (the range its
    ``demo_batches`` can deliver), else ``source.schedule`` first..last.

    :param usecase: the use case.
    :raises DemoSourceError: neither is declared, or ``DEMO_PERIODS`` is not two periods of the use case's kind in
        order (the message names what to set).
    """
    from airflow_mlops.usecase.user_code import UserCodeError, load_module

    try:
        declared = getattr(load_module(usecase.module_file), "DEMO_PERIODS", None)
    except UserCodeError as err:
        raise DemoSourceError(str(err)) from err
    if declared is not None:
        where = f"{usecase.module_file.name}: DEMO_PERIODS"
        if isinstance(declared, str) or not isinstance(declared, Iterable) or len(items := list(declared)) != 2:
            raise DemoSourceError(f"{where} must be (first, last): two {usecase.source.period}s, not {declared!r}")
        try:
            first, last = (check_period(usecase, str(item)) for item in items)
        except DemoSourceError as err:
            raise DemoSourceError(f"{where}: {err}") from err
        if last < first:
            raise DemoSourceError(f"{where}: {last} is before {first}")
        return first, last
    source = usecase.source
    if not source.schedule_first or not source.schedule_last:
        raise DemoSourceError(
            f"{usecase.config_file}: source.schedule is null and {usecase.module_file.name} declares no DEMO_PERIODS: "
            "name the periods to replay (--periods FIRST:LAST), or set DEMO_PERIODS = (first, last) in the module"
        )
    return source.schedule_first, source.schedule_last


def default_backfill(usecase: UseCase, periods: list[str] | None = None) -> int:
    """How many of a replay's first periods land at once by default: for a daily use case, enough for the policy's
    first model (``monitoring.policy.bootstrap`` + 1: the check of the last of them asks for it); none for a monthly
    one, or without a bootstrap rule (each period is then a step of its own).

    :param usecase: the use case.
    :param periods: the replayed periods (the backfill is at most all of them).
    """
    bootstrap = bootstrap_periods(usecase)
    if usecase.source.period != "day" or bootstrap is None:
        return 0
    wanted = bootstrap + 1
    return min(wanted, len(periods)) if periods is not None else wanted


def default_step(usecase: UseCase) -> int:
    """How many periods a live step of a replay lands at once by default: :data:`DAILY_DEMO_STEP` days for a daily
    use case, one month for a monthly one.

    :param usecase: the use case.
    """
    return DAILY_DEMO_STEP if usecase.source.period == "day" else 1


def plan_steps(periods: list[str], backfill: int = 0, step: int = 1) -> list[list[str]]:
    """The replay's steps: the first ``backfill`` periods at once (if more than none), then ``step`` at a time.

    :param periods: the replayed periods, in order.
    :param backfill: how many of the first periods land in the first step (0: none; 1 is a step of one).
    :param step: how many periods each later step lands (1 or more).
    :raises DemoSourceError: a negative backfill or a step below 1.
    """
    if backfill < 0:
        raise DemoSourceError(f"--backfill must be 0 or more, not {backfill}")
    if step < 1:
        raise DemoSourceError(f"--step must be 1 or more, not {step}")
    head = periods[:backfill]
    rest = periods[len(head) :]
    return ([head] if head else []) + [rest[i : i + step] for i in range(0, len(rest), step)]


def default_periods(usecase: UseCase) -> tuple[list[str], str | None]:
    """The periods a replay covers by default, and a note when it is not the whole range.

    The demo range (:func:`demo_range`: ``DEMO_PERIODS``, else ``source.schedule``). A monthly use case replays all
    of it. A daily one replays its first days: the default backfill (the first model's days, landed at once), then
    :data:`DAILY_DEMO_LIVE_DAYS` days of serving and monitoring in weekly steps — at least :data:`DAILY_DEMO_DAYS`
    days; a range of years would take hours.

    :param usecase: the use case.
    :raises DemoSourceError: the use case declares no range (name the periods then).
    """
    first, last = demo_range(usecase)
    periods = period_range([f"{first}:{last}"], usecase.source.period)
    if usecase.source.period != "day":
        return periods, None
    backfill = default_backfill(usecase)
    days = max(DAILY_DEMO_DAYS, backfill + DAILY_DEMO_LIVE_DAYS)
    if len(periods) <= days:
        return periods, None
    kept = periods[:days]
    step = default_step(usecase)
    why = (
        f"the policy's first model needs {backfill - 1} validated days (monitoring.policy.bootstrap): "
        f"{backfill} land at once, then {days - backfill} days of serving and monitoring, {step} at a time"
        if backfill
        else f"enough for a first model, its monitoring and a broken delivery, {step} days at a time"
    )
    note = (
        f"{usecase.name} is daily: replaying its first {days} of {len(periods)} days "
        f"({kept[0]}..{kept[-1]}): {why}; name others with --periods FIRST:LAST (--backfill N, --step N)"
    )
    return kept, note


def parse_corrupt(specs: Iterable[str], kinds: Mapping[str, Any], kind: str | None = None) -> dict[str, str]:
    """``["2013-05", "2013-07:out_of_range"]`` → period → corruption kind (default: the first of ``kinds``).

    :param specs: ``PERIOD[:KIND]`` each.
    :param kinds: the use case's ``CORRUPTIONS``.
    :param kind: the use case's period kind (checked).
    :raises DemoSourceError: a bad period, an unknown kind, or a corruption asked of a use case without any.
    """
    out: dict[str, str] = {}
    for spec in specs:
        text, _, name = str(spec).partition(":")
        (period,) = period_range([text], kind)
        if not kinds:
            raise DemoSourceError(f"--corrupt {spec}: the use case declares no CORRUPTIONS")
        name = name or next(iter(kinds))
        if name not in kinds:
            raise DemoSourceError(f"unknown corruption {name!r}; kinds: {', '.join(kinds)}")
        out[period] = name
    return out


def default_corrupt(periods: list[str], kinds: Mapping[str, Any], backfill: int = 0) -> dict[str, str]:
    """The demo's broken delivery when none is named: the first kind of ``kinds`` on the period a third of the way
    into the replay's live part (after the ``backfill`` periods landed at once; all of them if nothing is left),
    none when the use case declares no corruption.

    :param periods: the replayed periods, in order.
    :param kinds: the use case's ``CORRUPTIONS``.
    :param backfill: how many of the first periods land at once.
    """
    if not periods or not kinds:
        return {}
    live = periods[backfill:] or periods
    return {live[len(live) // 3]: next(iter(kinds))}


def __getattr__(name: str) -> Any:
    """``CORRUPTIONS``: the default use case's (the name this module exported when it held one use case's data)."""
    if name == "CORRUPTIONS":
        return corruptions()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
