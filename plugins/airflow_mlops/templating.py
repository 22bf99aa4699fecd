"""Helpers for templated operator arguments (no heavy imports: DAG files import the operators)."""

from __future__ import annotations

from typing import Any


def is_blank(value: Any) -> bool:
    """A templated argument that rendered to nothing: ``None``, ``""``, ``"None"`` or ``"null"``
    (e.g. ``"{{ params.month or '' }}"`` or a Jinja ``None``)."""
    return value is None or str(value).strip() in ("", "None", "null")
