"""Doc-check: every command shown in README.md and docs/*.md still parses, and is run.

Each ``hiper ...`` line in a fenced code block must parse with that subcommand's own argument parser, and its
``key=value`` overrides must load against its preset (unknown keys and wrong types fail); each ``make X`` must name a
Makefile target; each ``scripts/...``, ``tests/...`` or ``recipes/...`` path must exist. Then every documented
``hiper`` command is executed: the cheap ones here (``RUN_HERE``: as written, plus tiny-size arguments), the long ones
(training runs, GPU benchmarks) by the test that drives that subcommand end to end (``RUN_BY``: README's sequence in
``test_cli_train.py``, ``hiper compare`` / ``diagnose`` / ``view`` / ``bench`` in theirs). A command in neither fails.
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


#: what may stand before a command without being it: a timer (``/usr/bin/time -v``) and environment assignments
#: (``ATEN_CPU_CAPABILITY=avx2``); a command behind them is checked like any other.
WRAPPERS = re.compile(r"^(?:(?:/usr/bin/)?time(?:\s+-v)?\s+|[A-Z_][A-Z0-9_]*=\S*\s+)+")


def documented(prefix: str) -> list[tuple[str, str]]:
    """``(doc name, command)`` for every command line that starts with ``prefix`` (after wrappers and ``.venv/bin/``)."""
    found = []
    for doc in DOCS:
        for line in shell_lines(doc.read_text()):
            for part in re.split(r"\s*(?:&&|;|\|\|?)\s*", line):
                part = WRAPPERS.sub("", part).removeprefix(".venv/bin/")
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


DEMO = documented("python -m hiper.trainer.demo")


@pytest.mark.parametrize(("doc", "cmd"), DEMO, ids=[f"{d}:{c[:60]}" for d, c in DEMO])
def test_demo_command_parses(doc: str, cmd: str) -> None:
    from hiper.trainer.demo import build_parser

    try:
        build_parser(exit_on_error=False).parse_args(split(cmd)[3:])
    except (argparse.ArgumentError, SystemExit) as exc:
        pytest.fail(f"{doc}: {cmd!r} does not parse: {exc}")


def test_docs_show_demo_commands() -> None:
    assert len(DEMO) >= 5, "the doc-check found almost no python -m hiper.trainer.demo commands"


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


# ------------------------------------------------------------------------------------------ documented commands run
# Every documented ``hiper`` command is executed: the cheap ones here, as written plus the tiny-size arguments below
# (appended, so they win over the doc's values), the long ones by the test file that drives that subcommand end to
# end. A new command in the docs must fall under one of the two, or this check fails.
RUN_HERE: dict[str, list[str]] = {
    "--version": [],
    "eval --env household --policy expert": ["--n", "4"],
    "eval --env household --policy random": ["--n", "4"],
    "bench advantage": ["--n-traj", "8", "--max-turns", "6", "--repeats", "1", "--reference-repeats", "1"],
    "bench household": ["--random-steps", "50", "--expert-episodes", "2", "--n", "2", "--presets", "tiny"],
}
RUN_BY: dict[str, str] = {
    "train": "tests/test_cli_train.py",
    "sft": "tests/test_cli_train.py",
    "eval": "tests/test_eval.py",
    "play": "tests/test_eval.py",
    "view": "tests/test_view.py",
    "compare": "tests/test_compare.py",
    "diagnose": "tests/test_diagnose.py",
    "bench iteration": "tests/test_gpu_check_script.py",
    "bench generate": "tests/test_gpu_check_script.py",
    "bench rollout": "tests/test_bench_rollout.py",
    "bench advantage": "tests/test_advantage_bench.py",
    "bench household": "tests/test_household_env.py",
    "bench alfworld": "tests/test_alfworld_pool.py",
}


def _words(cmd: str) -> str:
    return " ".join(split(cmd)[1:])


def _run_here_key(cmd: str) -> str | None:
    words = _words(cmd)
    return next((k for k in RUN_HERE if words == k or words.startswith(k + " ")), None)


def _run_by_key(cmd: str) -> str | None:
    words = _words(cmd)
    return next((k for k in sorted(RUN_BY, key=len, reverse=True) if words == k or words.startswith(k + " ")), None)


@pytest.mark.parametrize(("doc", "cmd"), HIPER, ids=[f"{d}:{c[:60]}" for d, c in HIPER])
def test_every_documented_command_is_run_somewhere(doc: str, cmd: str) -> None:
    if _run_here_key(cmd) is not None:
        return
    key = _run_by_key(cmd)
    assert key is not None, f"{doc}: {cmd!r} is run by no test: add it to RUN_HERE or RUN_BY in {__file__}"
    test_file = ROOT / RUN_BY[key]
    assert test_file.is_file(), f"{RUN_BY[key]} (named for {key!r}) does not exist"
    sub = key.split()[-1]
    assert sub in test_file.read_text(), f"{RUN_BY[key]} never mentions {sub!r}: it cannot be what runs {cmd!r}"


HERE = [(d, c) for d, c in HIPER if _run_here_key(c) is not None]


@pytest.mark.parametrize(("doc", "cmd"), HERE, ids=[f"{d}:{c[:60]}" for d, c in HERE])
def test_documented_command_runs(doc: str, cmd: str) -> None:
    import subprocess
    import sys

    argv = [sys.executable, "-m", "hiper.cli", *split(cmd)[1:], *RUN_HERE[_run_here_key(cmd) or ""]]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{doc}: {' '.join(argv[3:])} exited {proc.returncode}: {proc.stderr[-1500:]}"
