"""The docs match the code: each how-to page's example is the DAG factory's code, every operator and sensor of the
provider has its page, and the README stays a user's page (at most ~300 lines)."""

from __future__ import annotations

import ast
import importlib.util
import re

from conftest import ROOT

DOCS = ROOT / "docs"


def _snippets():
    spec = importlib.util.spec_from_file_location("docs_snippets", DOCS / "snippets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_how_to_example_is_the_code_that_runs():
    snippets = _snippets()
    pages = sorted(snippets.PAGES.glob("*.md"))
    assert pages and sum(len(snippets.examples(page)) for page in pages) >= 18
    assert snippets.stale() == [], "run: python docs/snippets.py"


def test_a_changed_example_is_caught(tmp_path, monkeypatch):
    snippets = _snippets()
    page = tmp_path / "page.md"
    text = (snippets.PAGES / "feast.md").read_text()
    page.write_text(text.replace('task_id="apply_feature_repo"', 'task_id="apply_repo"'))
    monkeypatch.setattr(snippets, "PAGES", tmp_path)
    assert snippets.stale() == [
        f"{page}: example howto_operator_feast_apply differs from plugins/airflow_mlops/usecase/factory.py"
    ]
    page.write_text(text.replace("howto_operator_feast_apply", "howto_operator_feast_gone"))
    assert "has no region '# [START howto_operator_feast_gone]'" in snippets.stale()[0]


def _public_classes(folder: str, suffix: str) -> set[str]:
    names = set()
    for path in (ROOT / "plugins" / "airflow_mlops" / folder).glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith(suffix) and not node.name.startswith("_"):
                names.add(node.name)
    return names


def test_every_operator_and_sensor_has_a_how_to_section():
    documented = set()
    for page in (DOCS / "operators").glob("*.md"):
        documented |= set(re.findall(r"^## (\w+)$", page.read_text(), re.M))
    bases = {"MlopsBaseOperator", "MonitoringBaseOperator", "ChampionCheckOperator", "TrainingStepOperator"}
    missing = (_public_classes("operators", "Operator") | _public_classes("sensors", "Sensor")) - bases - documented
    assert not missing, f"no how-to section (## <Class>) in docs/operators/ for {sorted(missing)}"


def test_the_readme_is_a_users_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300
    assert "docs/operators" in "\n".join(lines)


def _template_fields() -> dict[str, set[str]]:
    """Class name → its ``template_fields`` (literal tuples; a ``*Base.template_fields`` entry is expanded)."""
    found: dict[str, list] = {}
    for folder in ("operators", "sensors"):
        for path in (ROOT / "plugins" / "airflow_mlops" / folder).glob("*.py"):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.ClassDef):
                    for stmt in node.body:
                        if isinstance(stmt, ast.Assign) and getattr(stmt.targets[0], "id", "") == "template_fields":
                            found[node.name] = list(stmt.value.elts)
    resolved: dict[str, set[str]] = {}
    for name, elts in found.items():
        fields = set()
        for elt in elts:
            if isinstance(elt, ast.Constant):
                fields.add(elt.value)
            elif isinstance(elt, ast.Starred):
                fields |= {e.value for e in found[elt.value.value.id] if isinstance(e, ast.Constant)}
        resolved[name] = fields
    return resolved


def test_the_templated_fields_a_page_names_are_the_operators_own():
    fields = _template_fields()
    for page in (DOCS / "operators").glob("*.md"):
        for section in re.split(r"^## ", page.read_text(), flags=re.M)[1:]:
            name = section.split("\n", 1)[0].strip()
            listed = re.search(r"\*\*Templated\*\*: (.*)", section)
            if listed:
                named = set(re.findall(r"`(\w+)`", listed.group(1)))
                assert named <= fields.get(name, set()), f"{page.name} {name}: {named - fields.get(name, set())}"
