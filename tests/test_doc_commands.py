"""Doc-check: every command shown in README.md and docs/*.md still parses.

Running every documented command would take hours (training runs, GPU checks), so this checks what rots first:
each ``hiper ...`` line in a fenced code block must parse with that subcommand's own argument parser, and its
``key=value`` overrides must load against its preset (unknown keys and wrong types fail); each
``make X`` must name a Makefile target; each ``scripts/...``, ``tests/...`` or ``recipes/...`` path must exist.
The commands that are run end to end live in their own tests (README's sequence in ``test_cli_train.py``,
``hiper compare`` / ``diagnose`` / ``view`` / ``bench`` in theirs).
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from hiper.cli import COMMANDS
from hiper.config import ConfigError, list_presets, load_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def shell_lines(text: str) -> list[str]:
    """Commands in the fenced blocks of ``text``: continuation lines joined, prompts and comments dropped."""
    out: list[str] = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line and not line.startswith("#"):
                out.append(line)
    return out


def documented(prefix: str) -> list[tuple[str, str]]:
    """``(doc name, command)`` for every command line that starts with ``prefix`` (after ``.venv/bin/``)."""
    found = []
    for doc in DOCS:
        for line in shell_lines(doc.read_text()):
            for part in re.split(r"\s*(?:&&|;|\|\|?)\s*", line):
                part = part.removeprefix(".venv/bin/")
                if part.startswith(prefix):
                    found.append((doc.relative_to(ROOT).as_posix(), part))
    return found


def split(cmd: str) -> list[str]:
    # an inline comment after the command ("hiper train   # the demo") is not an argument
    return shlex.split(cmd, comments=True)


HIPER = documented("hiper ")


def test_docs_show_commands() -> None:
    assert len(HIPER) >= 30, "the doc-check found almost no hiper commands: is the fence pattern still right?"
    assert {c.split()[1] for _, c in HIPER} >= {"train", "eval", "bench", "compare", "diagnose", "view"}


@pytest.mark.parametrize(("doc", "cmd"), HIPER, ids=[f"{d}:{c[:60]}" for d, c in HIPER])
def test_hiper_command_parses(doc: str, cmd: str) -> None:
    argv = split(cmd)[1:]
    if argv and argv[0].startswith("--"):  # hiper --version / --help: the top-level parser's flags
        assert argv[0] in {"--version", "--help", "-h"}, f"{doc}: {cmd!r}"
        return
    assert argv and argv[0] in COMMANDS, f"{doc}: unknown subcommand in {cmd!r}"
    module = importlib.import_module(COMMANDS[argv[0]][0])
    parser = argparse.ArgumentParser(prog=f"hiper {argv[0]}", exit_on_error=False)
    module.add_arguments(parser)
    if "--help" in argv or "-h" in argv:
        return
    try:
        args = parser.parse_args(argv[1:])
    except (argparse.ArgumentError, SystemExit) as exc:
        pytest.fail(f"{doc}: {cmd!r} does not parse: {exc}")
    overrides = list(getattr(args, "overrides", None) or [])
    config = getattr(args, "config", None)
    if getattr(args, "resume", None) or (config and config not in list_presets()):
        return  # a run folder or a user's YAML file that the doc only names
    try:
        # keys and types only: the environment checks (paths exist, CUDA, vLLM installed) are the reader's machine's
        load_config(config, overrides, validate=False)
    except ConfigError as exc:
        pytest.fail(f"{doc}: {cmd!r}: {exc}")


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", (ROOT / "Makefile").read_text(), re.M))


@pytest.mark.parametrize(("doc", "cmd"), documented("make "))
def test_make_targets_exist(doc: str, cmd: str) -> None:
    targets = [t for t in split(cmd)[1:] if "=" not in t and not t.startswith("-")]
    missing = [t for t in targets if t not in makefile_targets()]
    assert not missing, f"{doc}: {cmd!r} names no Makefile target {missing}"


PATHS = [(d, p) for d, c in documented("") for p in re.findall(r"(?<![\w/.-])((?:scripts|tests|recipes)/[\w./*-]+)", c)]


@pytest.mark.parametrize(("doc", "path"), PATHS)
def test_paths_in_commands_exist(doc: str, path: str) -> None:
    assert any(ROOT.glob(path.split("::")[0])), f"{doc}: {path} does not exist"  # docs may show a glob
