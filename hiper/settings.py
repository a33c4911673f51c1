"""How a setting is declared: a dataclass field with its default, a one-line help and its source.

Every configurable value in hiper (run config sections, estimator configs, the PPO loss config) is declared once
with :func:`setting`; ``docs/config_reference.md`` is generated from these declarations (a test keeps it in sync).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, Field, field
from typing import Any


def setting(
    default: Any = MISSING,
    help: str = "",  # noqa: A002 - the field's help text
    source: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    set_by: str | None = None,
) -> Any:
    """A dataclass field: ``default`` (or ``factory`` for mutable defaults), ``help`` (one line) and ``source``
    (the spec section, paper value or code it comes from; empty for hiper's own engineering knobs).

    ``set_by``: the dotted run-config key that fills this field (e.g. the estimators' ``invalid_penalty`` is
    ``actor.invalid_action_penalty_coef``); the run config then refuses the field under its own section, so the
    setting still has one home."""
    if not help:
        raise ValueError("every setting needs a one-line help")
    metadata: dict[str, Any] = {"help": help, "source": source}
    if set_by is not None:
        metadata["set_by"] = set_by
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def help_of(f: Field[Any]) -> tuple[str, str]:
    """``(help, source)`` of a field declared with :func:`setting` (empty strings otherwise)."""
    return str(f.metadata.get("help", "")), str(f.metadata.get("source", ""))


def set_by(f: Field[Any]) -> str | None:
    """The run-config key that fills field ``f`` (see :func:`setting`), or None."""
    value = f.metadata.get("set_by")
    return None if value is None else str(value)


__all__ = ["help_of", "set_by", "setting"]
