"""Every benchmark script still starts (imports and parses its options).

The benchmarks are no tests, but they import the package's internals: a moved
function breaks them silently until someone needs a figure.  ``--help`` runs
every import and the argument parser, and nothing else.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = sorted(path.name for path in (ROOT / "bench").glob("bench_*.py"))


def test_there_are_benchmarks() -> None:
    assert "bench_all.py" in SCRIPTS and len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_starts(script: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
