"""Keep the how-to pages' examples equal to the code that runs them.

Each example in ``docs/operators/*.md`` is a fenced ``python`` block right after a marker line
``<!-- example: <file> <name> -->``; its text is the region between ``# [START <name>]`` and ``# [END <name>]`` of
``<file>`` (a path from the repository's root), dedented. The DAG factory (``plugins/airflow_mlops/usecase/
factory.py``) holds the operators' examples, so the DAGs the tests run are the examples the pages show.

    python docs/snippets.py          # rewrite the pages' examples from the code
    python docs/snippets.py --check  # exit 1 naming each page whose example differs (what tests/test_docs.py runs)
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "docs" / "operators"
EXAMPLE = re.compile(r"<!-- example: (?P<file>\S+) (?P<name>[\w-]+) -->\n```python\n(?P<body>.*?)```", re.S)


def region(file: str, name: str) -> str:
    """The dedented text between ``# [START name]`` and ``# [END name]`` in ``file``; ValueError if absent."""
    text = (ROOT / file).read_text()
    found = re.search(rf"^[ \t]*# \[START {name}\]\n(.*?)^[ \t]*# \[END {name}\]\n", text, re.S | re.M)
    if not found:
        raise ValueError(f"{file} has no region '# [START {name}]' ... '# [END {name}]'")
    return textwrap.dedent(found.group(1))


def examples(page: Path) -> list[tuple[str, str, str]]:
    """(file, name, body) of each example on ``page``."""
    return [(m["file"], m["name"], m["body"]) for m in EXAMPLE.finditer(page.read_text())]


def synced(page: Path) -> str:
    """The page's text with every example replaced by its region of code."""

    def fill(m: re.Match) -> str:
        return f"<!-- example: {m['file']} {m['name']} -->\n```python\n{region(m['file'], m['name'])}```"

    return EXAMPLE.sub(fill, page.read_text())


def stale() -> list[str]:
    """The pages whose examples differ from the code (or name a missing region), each with the example's name."""
    problems = []
    for page in sorted(PAGES.glob("*.md")):
        where = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
        for file, name, body in examples(page):
            try:
                if region(file, name) != body:
                    problems.append(f"{where}: example {name} differs from {file}")
            except ValueError as err:
                problems.append(f"{where}: {err}")
    return problems


def main(argv: list[str]) -> int:
    if "--check" in argv:
        problems = stale()
        print("\n".join(problems) or "the examples match the code")
        return 1 if problems else 0
    for page in sorted(PAGES.glob("*.md")):
        page.write_text(synced(page))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
