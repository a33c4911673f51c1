"""The generated reference of every run-config key: ``docs/config_reference.md``.

``python -m hiper.config.reference > docs/config_reference.md`` regenerates it from the schema's declarations
(:mod:`hiper.config.schema`, :func:`hiper.settings.setting`); a test fails when the file and the schema differ.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import yaml

from hiper.config.schema import HiperConfig
from hiper.settings import help_of, set_by

HEADER = """# Config reference (generated)

Every key of a hiper run config with its type, its default, what it does and where the value comes from (spec
section or paper value; *hiper* for the library's own engineering knobs). Generated from the schema by `python -m hiper.config.reference > docs/config_reference.md`;
a test keeps this file in sync. Defaults are the schema's: a preset (`hiper/presets/*.yaml`, e.g. `cpu_demo`, the
default of `hiper train`) or your YAML overrides them, and `Trainer({...})` takes the same defaults for keys a dict
leaves out. Keys marked *set by* are filled from the key named there and cannot be set in their own section.
"""


def _type(tp: Any) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return (text or str(tp).replace("typing.", "")).replace("|", "or")


def _value(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        return ""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    return f"`{text}`"


def _rows(obj: Any, prefix: str, sections: list[tuple[str, Any]]) -> list[str]:
    rows = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        help_text, source = help_of(f)
        if dataclasses.is_dataclass(value):
            sections.append((key, value))
            continue
        owner = set_by(f)
        default = f"*set by* `{owner}`" if owner else _value(value)
        rows.append(f"| `{key}` | {_type(hints[f.name])} | {default} | {help_text} | {source or 'hiper'} |")
    return rows


def reference_markdown() -> str:
    """The reference page: one table per config section, in declaration order."""
    out = [HEADER]
    pending: list[tuple[str, Any]] = [("", HiperConfig())]
    while pending:
        name, obj = pending.pop(0)
        nested: list[tuple[str, Any]] = []
        rows = _rows(obj, f"{name}." if name else "", nested)
        title = f"`{name}`" if name else "top level"
        doc = (type(obj).__doc__ or "").strip().splitlines()[0]
        out.append(f"\n## {title}\n\n{doc}\n")
        if rows:
            out.append("| key | type | default | help | source |\n|---|---|---|---|---|")
            out.extend(rows)
        pending = nested + pending
    return "\n".join(out) + "\n"


def main() -> int:
    print(reference_markdown(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
