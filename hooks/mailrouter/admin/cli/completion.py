"""``mailrouter-admin completion bash``: bash completion, generated from the parser.

The script is data taken from the argparse parser (commands, subcommands,
options, which options take a FILE or DIR, the setting names), so it cannot
drift from the commands.  bin/install-deps writes it to
``VENV/share/bash-completion/completions/mailrouter-admin`` (and, for the
default venv, ``/usr/local/share/bash-completion/completions/``, where
bash-completion finds it); ``source`` it by hand otherwise.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from mailrouter.admin.cli.base import PROG, Cli, group, leaf
from mailrouter.admin.normalise import SETTINGS
from mailrouter.exitcodes import EX_OK

FUNCTION = "_" + PROG.replace("-", "_")
PATH_METAVARS = ("FILE", "DIR")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse offers no public walk of its tree
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> tuple[list[str], list[str], list[str]]:
    """(every option, options taking a FILE/DIR, options taking another value)."""
    every: list[str] = []
    paths: list[str] = []
    valued: list[str] = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        long_names = [o for o in action.option_strings if o.startswith("--")]
        every += long_names
        if action.nargs != 0:
            (paths if action.metavar in PATH_METAVARS else valued).extend(long_names)
    return every, paths, valued


def _words(items: list[str]) -> str:
    return shlex.quote(" ".join(sorted(dict.fromkeys(items))))


def bash_script(parser: argparse.ArgumentParser) -> str:
    common, paths, valued = _options(parser)
    commands = _subcommands(parser)
    sub_cases: list[str] = []
    leaf_cases: list[str] = []
    positional_cases: list[str] = []
    for name, command in sorted(commands.items()):
        leaves = _subcommands(command)
        if not leaves:  # a command without subcommands (audit): its options
            options, leaf_paths, leaf_valued = _options(command)
            paths += leaf_paths
            valued += leaf_valued
            sub_cases.append(f"        {name}) words={_words(options)};;")
            continue
        sub_cases.append(f"        {name}) words={_words(list(leaves))};;")
        for sub, sub_parser in sorted(leaves.items()):
            options, leaf_paths, leaf_valued = _options(sub_parser)
            paths += leaf_paths
            valued += leaf_valued
            leaf_cases.append(f"        {shlex.quote(name + ' ' + sub)}) words={_words(options)};;")
            positionals = [a for a in sub_parser._actions if not a.option_strings]
            if positionals and positionals[0].dest == "name" and name == "setting":
                positional_cases.append(f"        {shlex.quote(name + ' ' + sub)}) "
                                        f"COMPREPLY=($(compgen -W {_words(list(SETTINGS))} -- \"$cur\"));;")
            elif positionals and positionals[0].dest == "path":
                kind = "-d" if sub == "qmail" else "-f"
                positional_cases.append(f"        {shlex.quote(name + ' ' + sub)}) "
                                        f"COMPREPLY=($(compgen {kind} -- \"$cur\"));;")
    nl = "\n"
    return f"""# bash completion for {PROG} -- generated from its argparse parser
# by `{PROG} completion bash`; do not edit.
{FUNCTION}() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local paths={_words(paths)}
    local valued={_words(valued)}
    local common={_words(common)}
    local words i w cmd= sub= skip=
    COMPREPLY=()
    case " $paths " in *" $prev "*) COMPREPLY=($(compgen -f -- "$cur")); return;; esac
    case " $valued " in *" $prev "*) return;; esac
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${{COMP_WORDS[i]}}
        if [[ -n $skip ]]; then skip=; continue; fi
        case " $paths $valued " in *" $w "*) skip=1; continue;; esac
        [[ $w == -* ]] && continue
        if [[ -z $cmd ]]; then cmd=$w; elif [[ -z $sub ]]; then sub=$w; else break; fi
    done
    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W "{' '.join(sorted(commands))} $common" -- "$cur")); return
    fi
    if [[ -z $sub ]]; then
        case $cmd in
{nl.join(sub_cases)}
        *) return;;
        esac
        COMPREPLY=($(compgen -W "$words" -- "$cur")); return
    fi
    if [[ $cur == -* ]]; then
        case "$cmd $sub" in
{nl.join(leaf_cases)}
        *) words=$common;;
        esac
        COMPREPLY=($(compgen -W "$words" -- "$cur")); return
    fi
    case "$cmd $sub" in
{nl.join(positional_cases)}
    esac
}}
complete -F {FUNCTION} {PROG}
"""


def bash(cli: Cli) -> int:
    from mailrouter.admin.cli import build_parser  # the whole tree, this command included

    cli.output.out.write(bash_script(build_parser()))
    return EX_OK


def register(top: Any) -> None:
    g = group(top, "completion", "shell completion for this command")
    leaf(g, "bash", bash, "print the bash completion script (source it, or let install-deps install it)")
