"""bench/readme_table.py: README's performance table is made from bench_all.py --json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

SCRIPT = str(ROOT / "bench" / "readme_table.py")
COMPARISONS = [
    {"name": "socket lookup vs native", "ours": 1.2345, "reference": 0.8, "ratio": 1.543125,
     "unit": "ms/lookup", "target": "<= 1.5", "met": False},
    {"name": "POP3 login vs Dovecot {SSHA}", "ours": 40.0, "reference": 20.0, "ratio": 2.0,
     "unit": "ms/session", "target": None, "met": None},
]


def test_the_block_between_the_markers_is_replaced(tmp_path: Path) -> None:
    data = tmp_path / "bench.json"
    data.write_text(json.dumps(COMPARISONS))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nbefore\n<!-- bench-table -->\nold table\n<!-- /bench-table -->\nafter\n")
    subprocess.run([sys.executable, SCRIPT, str(data), str(readme)], check=True, timeout=60)
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n<!-- bench-table -->\nGenerated ") and "old table" not in text
    assert text.endswith("<!-- /bench-table -->\nafter\n")
    assert "| socket lookup vs native | 1.23 | 0.80 | ms/lookup | 1.54× | <= 1.5 | **no** |" in text
    assert "| POP3 login vs Dovecot {SSHA} | 40.00 | 20.00 | ms/session | 2.00× | (info) | - |" in text
    # Run twice: the same table, not two.
    subprocess.run([sys.executable, SCRIPT, str(data), str(readme)], check=True, timeout=60)
    assert readme.read_text() == text


def test_a_readme_without_markers_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "bench.json"
    data.write_text(json.dumps(COMPARISONS))
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    done = subprocess.run([sys.executable, SCRIPT, str(data), str(readme)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0 and readme.read_text() == "no markers\n"
