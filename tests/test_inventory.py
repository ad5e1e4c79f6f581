"""tests/README.md's inventory of fault cases matches the suite, and names at least 60."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT, _env
from inventory import CATEGORIES, table


def test_the_inventory_in_tests_readme_is_current():
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "inventory.py"), "--check"],
                            capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    readme = (ROOT / "tests" / "README.md").read_text(encoding="utf-8")
    total = re.search(r"\| \*\*total\*\* \| \*\*(\d+)\*\* \|", readme)
    assert total and int(total.group(1)) >= 60, "the issue asks for at least 60 fault cases"


def test_the_table_counts_each_category_and_the_total():
    cases = [("fits", "tests/a.py::t[1]"), ("fits", "tests/a.py::t[2]"),
             ("kill", "tests/b.py::k")]
    text = table(cases)
    assert "| fits | 2 | a.py |" in text and "| kill | 1 | b.py |" in text
    assert text.endswith("| **total** | **3** | |")
    assert set(CATEGORIES) >= {"params", "fits", "hdf5", "png", "checkpoint", "kill",
                               "disk-full"}
