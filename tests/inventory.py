"""The inventory of fault and bad-input cases the suite tries, counted from the tests themselves.

    .venv/bin/python tests/inventory.py           # print the table for tests/README.md
    .venv/bin/python tests/inventory.py --check   # exit 1 if tests/README.md's table is stale

A case is one collected test (one parametrisation) marked `@pytest.mark.fault(CATEGORY)`; a
hypothesis test counts once however many examples it draws, and its docstring says what it draws.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
BEGIN, END = "<!-- inventory:begin -->", "<!-- inventory:end -->"
# The order of the table's rows; a category not listed here is an error, not a silent row.
CATEGORIES = ("params", "fits", "hdf5", "png", "checkpoint", "kill", "disk-full",
              "missing-data", "errors")


class _Collect:
    def __init__(self) -> None:
        self.cases: list[tuple[str, str]] = []

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            marker = item.get_closest_marker("fault")
            if marker is not None:
                self.cases.append((marker.args[0], item.nodeid))


def collect() -> list[tuple[str, str]]:
    """(category, test id) of every fault case in tests/."""
    plugin = _Collect()
    with contextlib.redirect_stdout(io.StringIO()) as out:   # pytest's own listing
        code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", str(HERE)],
                           plugins=[plugin])
    if code not in (0, 5):
        raise SystemExit(f"collection failed (pytest exit status {code}):\n{out.getvalue()}")
    unknown = sorted({c for c, _ in plugin.cases} - set(CATEGORIES))
    if unknown:
        raise SystemExit(f"unknown fault categories {unknown}: add them to CATEGORIES")
    return plugin.cases


def table(cases: list[tuple[str, str]]) -> str:
    """The Markdown table: cases per category, the files they are in, and the total."""
    counts = Counter(c for c, _ in cases)
    files: dict[str, set[str]] = {}
    for category, nodeid in cases:
        files.setdefault(category, set()).add(nodeid.split("::")[0].split("/")[-1])
    rows = ["| category | cases | in |", "|---|---|---|"]
    rows += [f"| {c} | {counts[c]} | {', '.join(sorted(files[c]))} |"
             for c in CATEGORIES if counts[c]]
    rows.append(f"| **total** | **{len(cases)}** | |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with tests/README.md")
    args = ap.parse_args()
    text = table(collect())
    if not args.check:
        print(text)
        return 0
    readme = README.read_text(encoding="utf-8")
    current = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip() if BEGIN in readme else ""
    if current != text:
        print(f"{README}: the inventory is stale; replace the table between the markers with:\n"
              f"{text}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
