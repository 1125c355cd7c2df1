#!/opt/mailrouter/venv/bin/python
"""README's performance table from ``bench_all.py --json`` (not a benchmark itself).

One command regenerates the table (as root, from the checkout)::

    /opt/mailrouter/venv/bin/python bench/bench_all.py --json > /tmp/bench.json
    /opt/mailrouter/venv/bin/python bench/readme_table.py /tmp/bench.json README.md

The table is the text between the ``<!-- bench-table -->`` and
``<!-- /bench-table -->`` lines of README.md, replaced whole; nothing else is
touched.  Without a README argument the table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

START, END = "<!-- bench-table -->", "<!-- /bench-table -->"


def table(comparisons: list[dict[str, Any]], stamp: str) -> str:
    lines = [
        f"Generated {stamp} by `bench/readme_table.py` from `bench/bench_all.py --json`.",
        "",
        "| comparison | ours | reference | unit | ratio | target | met |",
        "| --- | ---: | ---: | --- | ---: | --- | --- |",
    ]
    for row in comparisons:
        met = {True: "yes", False: "**no**", None: "-"}[row.get("met")]
        lines.append(
            f"| {row['name']} | {row['ours']:.2f} | {row['reference']:.2f} | {row['unit']} "
            f"| {row['ratio']:.2f}× | {row.get('target') or '(info)'} | {met} |"
        )
    return "\n".join(lines)


def splice(readme: str, text: str) -> str:
    head, start, rest = readme.partition(START + "\n")
    _old, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"README has no {START} ... {END} block")
    return head + start + text + "\n" + end + tail


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("json_file", help="the output of bench_all.py --json")
    parser.add_argument("readme", nargs="?", help="README.md to update in place")
    args = parser.parse_args(argv)
    path = Path(args.json_file)
    comparisons = json.loads(path.read_text(encoding="utf-8"))
    stamp = time.strftime("%Y-%m-%d", time.gmtime(path.stat().st_mtime))
    text = table(comparisons, stamp)
    if args.readme is None:
        print(text)
        return 0
    readme = Path(args.readme)
    readme.write_text(splice(readme.read_text(encoding="utf-8"), text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
