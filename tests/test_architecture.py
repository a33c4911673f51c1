"""The shape of the package: stage imports point downward (import-linter in ``make test``), no module over 600
lines, function-local ``hiper`` imports only where an optional dependency forces them, no test doubles in the
library, and every setting read from the typed config."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "hiper"
MODULES = sorted(ROOT.rglob("*.py"))
#: function-local ``hiper`` imports that must stay local, with the reason
LOCAL_IMPORTS_ALLOWED = {
    # verl imports the plugin during ``import verl``; these modules import verl's classes (docs/scale_out.md)
    "integrations/verl/plugin.py",
}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_module_size(path: Path) -> None:
    n = len(path.read_text().splitlines())
    assert n <= 600, f"hiper/{_rel(path)} has {n} lines (> 600): split it by responsibility"


def test_no_function_local_hiper_imports() -> None:
    offenders = []
    for path in MODULES:
        if _rel(path) in LOCAL_IMPORTS_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith("hiper"):
                        offenders.append(f"hiper/{_rel(path)}:{sub.lineno} from {sub.module}")
    assert not offenders, "function-local hiper imports hide the import graph:\n" + "\n".join(offenders)


def test_no_test_doubles_or_untyped_config_reads_in_the_library() -> None:
    for path in MODULES:
        text = path.read_text()
        assert not re.search(r"^class (Scripted|Fake)\w*", text, re.M), f"hiper/{_rel(path)} ships a test double"
        assert "cfg_get(" not in text, f"hiper/{_rel(path)} reads a config with a local default"
