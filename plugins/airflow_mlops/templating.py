"""Helpers for templated operator arguments (no heavy imports: DAG files import the operators)."""

from __future__ import annotations

from typing import Any


def is_blank(value: Any) -> bool:
    """A templated argument that rendered to nothing: ``None``, ``""``, ``"None"`` or ``"null"``
    (e.g. ``"{{ params.month or '' }}"`` or a Jinja ``None``)."""
    return value is None or str(value).strip() in ("", "None", "null")


def as_bool(value: Any) -> bool:
    """A flag that may arrive rendered as text: without ``render_template_as_native_obj``, ``"{{ params.flag }}"``
    renders ``"True"`` or ``"False"``; ``"1"``, ``"true"``, ``"yes"`` and ``"on"`` are true, any other text false.

    :param value: the flag, native or rendered.
    """
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def as_mapping(value: Any, name: str) -> dict[str, Any]:
    """An argument that must be an upstream task's XCom dict: pass the task's ``.output`` (an XComArg resolves to
    the native value; no JSON string to parse back).

    :param value: the resolved argument.
    :param name: the argument's name, for the message.
    :raises ValueError: not a dict.
    """
    if not isinstance(value, dict):
        raise ValueError(
            f"{name} must be an upstream task's XCom, a dict (pass the task's .output), not "
            f"{type(value).__name__}: {str(value)[:80]!r}"
        )
    return value
