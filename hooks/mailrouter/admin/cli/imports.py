"""``mailrouter-admin import qmail|aliases``: dry run by default, --apply to write."""

from __future__ import annotations

from typing import Any

from mailrouter.admin import imports
from mailrouter.admin.cli.base import PROG, Cli, group, leaf
from mailrouter.admin.cli.output import Progress
from mailrouter.exitcodes import EX_OK

# An import of at least this many changes shows a progress bar on a terminal.
PROGRESS_THRESHOLD = 20


def qmail(cli: Cli) -> int:
    args = cli.args
    return run(cli, imports.plan_qmail(args.path, args.domain, args.assign))


def aliases(cli: Cli) -> int:
    return run(cli, imports.plan_aliases(cli.args.path, cli.args.domain))


def run(cli: Cli, plan: imports.Plan) -> int:
    args = cli.args
    if plan.invalid and not args.skip_invalid:
        for problem in plan.invalid:  # each on its own line, then the verdict
            cli.err.write(f"{PROG}: {problem}\n")
    progress = Progress(cli.err, forced=bool(args.progress), threshold=PROGRESS_THRESHOLD)
    result = imports.run_import(cli.session(), plan, apply=bool(args.apply),
                                skip_invalid=bool(args.skip_invalid), progress=progress)
    progress.done()

    def human() -> str:
        lines = [
            f"{a['action']} {a['address']}" + (f" -> {', '.join(a['targets'])}" if a["targets"] else "")
            for a in result["actions"]
        ]
        lines += [f"skipped (invalid): {p}" for p in plan.invalid]
        lines += [f"note: {n}" for n in plan.notes]
        if args.apply:
            lines.append(f"applied {result['applied']} change(s); {result['unchanged']} already in place")
        else:
            lines.append(f"dry run: {len(result['actions'])} change(s) planned, "
                         f"{result['unchanged']} already in place; --apply to write them")
        return "\n".join(lines)

    cli.output.emit(result, human)
    return EX_OK


def register(top: Any) -> None:
    g = group(top, "import", "import from qmail or aliases files")
    for name, handler, what in (("qmail", qmail, "a qmail tree (users/assign, .qmail-*)"),
                                ("aliases", aliases, "an /etc/aliases-style file")):
        p = leaf(g, name, handler, f"import {what}")
        p.add_argument("path", help="the qmail directory (DIR)" if name == "qmail" else "the aliases file")
        p.add_argument("--domain", required=True, help="the domain to import into")
        if name == "qmail":
            p.add_argument("--assign", metavar="FILE", help="users/assign file (default DIR/users/assign)")
        p.add_argument("--apply", action="store_true", help="write (default: dry run)")
        p.add_argument("--skip-invalid", action="store_true",
                       help="leave invalid items out instead of refusing")
        p.add_argument("--progress", action="store_true", help="progress bar even when stderr is no terminal")
