"""The validate step's setup: which batch, which files, which suites; checked before any data is read.

Pure logic over a ``Batch`` and the step's arguments: every mismatch between the configuration and the batch is a
``ValueError`` naming what to fix (the operator turns it into a failure without retries).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.batches import Batch, check_kind, file_stem, period_bounds
from airflow_mlops.templating import is_blank

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import pandas as pd


def load_batch(value: dict | str, period_kind: str | None = None) -> Batch:
    """The batch an ingest task returned (a dict, or its JSON rendering), checked to be of ``period_kind``.

    :param value: the batch.
    :param period_kind: ``month`` or ``day``; None: any.
    :raises ValueError: not a batch, or a batch of the other kind.
    """
    try:
        batch = Batch.from_dict(json.loads(value) if isinstance(value, str) else value)
        period_bounds(batch.period)
        if period_kind is not None and batch.kind != check_kind(period_kind):
            raise ValueError(
                f"batch {batch.batch_id} covers a {batch.kind}; this pipeline's batches are by {period_kind}"
            )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"not a batch of this pipeline: {err!r}") from err
    return batch


def by_file(mapping: Mapping[str, Any], files: list[str], what: str) -> dict[str, Any]:
    """``mapping`` keyed by batch file name; its keys may be file names or stems.

    :param mapping: file name or stem → value.
    :param files: the batch's file names.
    :param what: the argument's name (for the message).
    :raises ValueError: a key names no file of the batch.
    """
    stems = {file_stem(name): name for name in files}
    out = {}
    for key, value in mapping.items():
        name = key if key in files else stems.get(key)
        if name is None:
            raise ValueError(f"{what} names {key!r}, which is not one of the batch files {files}")
        out[name] = value
    return out


def files_and_primary(batch: Batch, files: Sequence[str] | None, primary: str | None) -> tuple[list[str], str]:
    """The files to validate (default: the batch's) and the primary one (default: the batch's, else the first).

    :raises ValueError: no files, a file the batch lacks, two files of one stem, or an unknown primary file.
    """
    names = list(batch.files) if files is None else [str(f) for f in files]
    if not names:
        raise ValueError(f"batch {batch.batch_id} has no files to validate")
    missing = [name for name in names if name not in batch.files]
    if missing:
        held = ", ".join(batch.files) or "no file"
        raise ValueError(f"batch {batch.batch_id} has no {', '.join(missing)} (it holds {held})")
    stems = [file_stem(name) for name in names]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise ValueError(f"batch files share a name without extension ({', '.join(clash)}): rename one")
    chosen = next(str(p) for p in (primary, batch.primary, names[0]) if not is_blank(p))
    if chosen not in names:
        raise ValueError(f"the primary file {chosen!r} is not one of the batch files {names}")
    return names, chosen


def load_suites(files: list[str], suites: Mapping[str, str] | None, expectations_dir: str | None) -> dict[str, dict]:
    """Batch file → its suite JSON: ``suites`` (file → path, relative to ``expectations_dir``), else
    ``<file stem>.json`` in ``expectations_dir`` for every file.

    :raises ValueError: no folder for relative paths, no suites at all, a missing or malformed suite file.
    """
    from airflow_mlops.core.validation import load_suite

    if is_blank(expectations_dir) and any(not Path(str(p)).is_absolute() for p in (suites or {}).values()):
        raise ValueError("suites given by relative path need expectations_dir (the use case's expectations/)")
    if is_blank(expectations_dir) and suites is None:
        raise ValueError("no suites: pass expectations_dir (the use case's expectations/) or suites")
    folder = Path(expectations_dir or ".")
    if suites is None:
        paths = {name: folder / f"{file_stem(name)}.json" for name in files}
    else:
        paths = {name: folder / str(path) for name, path in by_file(suites, files, "suites").items()}
    missing = next((name for name, path in paths.items() if not path.is_file()), None)
    if missing is not None:
        raise ValueError(f"no expectation suite for {missing}: {paths[missing]} does not exist")
    return {name: load_suite(path) for name, path in paths.items()}


@dataclass(frozen=True)
class ValidationSetup:
    """What the validate step checks in a batch: its files, the primary one, each file's suite and timestamps."""

    files: list[str]
    primary: str
    suites: dict[str, dict]
    timestamps: dict[str, Any]

    @classmethod
    def resolve(
        cls,
        batch: Batch,
        *,
        files: Sequence[str] | None = None,
        primary: str | None = None,
        suites: Mapping[str, str] | None = None,
        expectations_dir: str | None = None,
        timestamp_columns: Mapping[str, str | Sequence[str]] | None = None,
    ) -> ValidationSetup:
        """The setup of ``batch`` from the step's arguments (see ``ValidateBatchOperator``).

        :raises ValueError: the arguments do not fit the batch (the message names what to fix).
        """
        names, chosen = files_and_primary(batch, files, primary)
        loaded = load_suites(names, suites, expectations_dir)
        timestamps = by_file(timestamp_columns or {}, names, "timestamp_columns")
        return cls(files=names, primary=chosen, suites=loaded, timestamps=timestamps)

    @property
    def suites_by_frame(self) -> dict[str, dict]:
        """Frame name (file stem) → suite JSON, as ``validate_batch`` takes them."""
        return {file_stem(name): suite for name, suite in self.suites.items()}

    @property
    def timestamps_by_frame(self) -> dict[str, Any]:
        """Frame name (file stem) → the column(s) parsed as timestamps."""
        return {file_stem(name): columns for name, columns in self.timestamps.items()}


def read_frames(read: Callable[[Any], bytes], batch: Batch, files: list[str]) -> tuple[dict[str, pd.DataFrame], list]:
    """Each file of ``batch`` read (``read(record)``, e.g. ``LakeHook.read_verified``) into a frame named by its stem;
    an unreadable file becomes an empty frame and a note (so GX still reports on it).

    :return: frame name → frame, and the notes.
    """
    from airflow_mlops.core.validation import read_frame_tolerant

    frames, notes = {}, []
    for name in files:
        frame, note = read_frame_tolerant(read(batch.files[name]), name)
        frames[file_stem(name)] = frame
        notes += [note] if note else []
    return frames, notes
