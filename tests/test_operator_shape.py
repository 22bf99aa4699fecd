"""Operators stay thin (issue 20): every operator or sensor module at most 300 lines, and every ``execute`` (or
``poke``, ``execute_complete``) at most 60 lines; the step's logic belongs in ``core/`` or a hook."""

from __future__ import annotations

import ast

import pytest

from conftest import ROOT

PACKAGE = ROOT / "plugins" / "airflow_mlops"
MODULES = sorted((PACKAGE / "operators").glob("*.py")) + sorted((PACKAGE / "sensors").glob("*.py"))
STEP_METHODS = {"execute", "poke", "execute_complete"}


def _step_methods(tree: ast.Module) -> list[tuple[str, int]]:
    return [
        (f"{cls.name}.{fn.name}", fn.end_lineno - fn.lineno + 1)
        for cls in tree.body
        if isinstance(cls, ast.ClassDef)
        for fn in cls.body
        if isinstance(fn, ast.FunctionDef) and fn.name in STEP_METHODS
    ]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_an_operator_module_is_thin(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 300, f"{path.name}: {len(text.splitlines())} lines; move logic to core/ or a hook"
    long = [(name, lines) for name, lines in _step_methods(ast.parse(text)) if lines > 60]
    assert not long, f"{path.name}: {long} over 60 lines"


def test_the_shape_check_sees_every_step():
    methods = [m for path in MODULES for m in _step_methods(ast.parse(path.read_text()))]
    assert len(MODULES) >= 15 and len(methods) >= 18
    assert _step_methods(ast.parse("class A:\n    def execute(self):\n" + "        x = 1\n" * 70)) == [
        ("A.execute", 71)
    ]
