"""The one reader of YAML for the suite's configs: the use case's ``mlops.yaml``, a stand-alone section file given
to an operator (``config_path``, ``policy_path``), and a config logged as a run's artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def parse_mapping(text: str, where: str, what: str) -> dict[str, Any] | None:
    """The mapping YAML ``text`` holds; None for an empty document.

    :param where: the file (or artifact) the text came from, for the message.
    :param what: what it should hold, for the message (e.g. "a mapping (features, model, ...)").
    :raises ValueError: not YAML, or not a mapping; the message names ``where``.
    """
    import yaml

    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as err:
        raise ValueError(f"{where}: cannot parse it: {err}") from err
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{where} must hold {what}")
    return data


def read_mapping(path: str | Path, what: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
    """The mapping the YAML file at ``path`` holds (None for an empty file, or a missing one with ``missing_ok``).

    :raises ValueError: missing (unless ``missing_ok``), unreadable, not YAML or not a mapping; names the file.
    """
    target = Path(path)
    if missing_ok and not target.is_file():
        return None
    try:
        text = target.read_text()
    except OSError as err:
        raise ValueError(f"{target}: cannot read it: {err}") from err
    return parse_mapping(text, str(target), what)
