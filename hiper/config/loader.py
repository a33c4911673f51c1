"""Loading a run config: YAML presets and files (with ``base:`` inheritance), dotted overrides, dict coercion.

Usage::

    cfg = load_config("alfworld_qwen2.5_1.5b", ["algorithm.hae.keep_penalty=-0.5", "env.n_envs=64"])
    cfg.algorithm.hae.keep_penalty        # -0.5
    save_resolved(cfg, "runs/x/config.yaml")

A partial dict (``Trainer({...})``) goes through :func:`from_dict`, the same path as ``hiper train``: missing keys
take the schema's defaults (:mod:`hiper.config.schema`), unknown keys and wrong types raise :class:`ConfigError`
with a one-line message naming the key and the fix. Overrides are ``dotted.key=value`` with the value parsed as a
YAML scalar/flow value (``null``, ``true``, ``[console,jsonl]``, ``1e-6``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from hiper.config.schema import ConfigError, HiperConfig
from hiper.config.validate import validate_config
from hiper.settings import set_by

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
DEFAULT_PRESET = "cpu_demo"
#: keys of older configs that no longer exist, with what replaced them
REMOVED_KEYS = {
    "critic.n_heads": "the critic's heads follow from algorithm.adv_estimator (and algorithm.hae.switch_mode)",
}


# ----------------------------------------------------------------------------------------------
# YAML parsing (YAML 1.2 floats: ``1e-6`` is a float, not the string PyYAML's 1.1 rules make it)
# ----------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    pass


_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _ch in "-+0123456789.":
    _Loader.yaml_implicit_resolvers[_ch] = [
        (tag, rx)
        for tag, rx in _Loader.yaml_implicit_resolvers.get(_ch, [])
        if tag != "tag:yaml.org,2002:float"
    ]
    _Loader.yaml_implicit_resolvers[_ch].append(("tag:yaml.org,2002:float", _FLOAT_RE))


def parse_yaml(text: str) -> Any:
    """Parse YAML with YAML-1.2 float rules (``1e-6`` -> 1e-06)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


# ----------------------------------------------------------------------------------------------
# dict -> dataclasses, with one-line errors
# ----------------------------------------------------------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is dict:
        return "a mapping"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true/false"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _did_you_mean(key: str, known: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    where = f"{prefix}." if prefix else ""
    if close:
        return f"; did you mean {where + close[0]!r}?"
    return f"; known keys{' of ' + prefix if prefix else ''}: {', '.join(known)}"


def _example(default: Any) -> str:
    """A default value written as an override value (for the fix hint of a type error)."""
    if isinstance(default, bool):
        return "true" if default else "false"
    if default is None or isinstance(default, (dict, list)):
        return yaml.safe_dump(default, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    return str(default)


def _coerce(value: Any, tp: Any, key: str, default: Any = dataclasses.MISSING) -> Any:
    """Check ``value`` against the type hint ``tp`` (int accepted for float); return the converted value.

    ``default`` (the field's default) only feeds the ``e.g. key=<default>`` fix hint of error messages.
    """
    hint = "" if default is dataclasses.MISSING else f"; e.g. {key}={_example(default)}"
    got = f"got {value!r} ({type(value).__name__}){hint}"
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} is a section: give sub-keys such as {key}.<name>=..., got {value!r}")
        return _build(tp, value, key)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r} must be {_type_name(tp)}, {got}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, {got}")
        return dict(value)
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # ``trainer.logger=console`` means ``[console]``
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be {_type_name(tp)}, {got}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    return _coerce_scalar(value, tp, key, got)


def _coerce_scalar(value: Any, tp: Any, key: str, got: str) -> Any:
    """``value`` as a bool / int / float / str / Any field (int accepted for float; floats must be finite)."""
    bad = ConfigError(f"config key {key!r} must be {_type_name(tp)}, {got}")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise ConfigError(f"config key {key!r} must be a finite number, {got}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)  # e.g. ``experiment_name=7``
            raise bad
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported config field type {tp!r} at {key!r}")  # a bug in this module


def _build(cls: type, d: dict[str, Any], prefix: str) -> Any:
    hints = _hints(cls)
    defaults = cls()
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    names = [n for n, f in by_name.items() if set_by(f) is None]
    kwargs = {}
    for key, value in d.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if full in REMOVED_KEYS:
            raise ConfigError(f"config key {full!r} was removed: {REMOVED_KEYS[full]}; delete it")
        if key not in by_name:
            raise ConfigError(f"unknown config key {full!r}{_did_you_mean(str(key), names, prefix)}")
        owner = set_by(by_name[key])
        if owner is not None:
            raise ConfigError(f"config key {full!r} is set by {owner!r}: set {owner}=<value> instead")
        kwargs[key] = _coerce(value, hints[key], full, getattr(defaults, key))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # a section class's own checks (the estimator configs validate values)
        # the section's messages name ``Class.field``: name the config key instead
        raise ConfigError(str(exc).replace(f"{cls.__name__}.", f"{prefix}." if prefix else "")) from None


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` merged into a copy of ``base``; nested mappings merge, everything else replaces."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def from_dict(d: dict[str, Any], validate: bool = True) -> HiperConfig:
    """Build a :class:`HiperConfig` from a (possibly partial) nested dict; missing keys take the defaults.

    Raises :class:`ConfigError` for unknown keys, wrong types and (with ``validate``) bad values.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
    cfg = _build(HiperConfig, d, "")
    if validate:
        validate_config(cfg)
    return cfg


# ----------------------------------------------------------------------------------------------
# Loading: presets, files, overrides
# ----------------------------------------------------------------------------------------------


def list_presets() -> list[str]:
    """Names of the shipped presets (``hiper/presets/*.yaml``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config_path(path_or_preset: str) -> Path:
    """A preset name (``cpu_demo``) or a YAML path -> the file; :class:`ConfigError` if neither exists."""
    candidate = Path(os.path.expanduser(path_or_preset))
    if candidate.is_file():
        return candidate
    preset = PRESET_DIR / f"{path_or_preset}.yaml"
    if preset.is_file():
        return preset
    names = list_presets()
    close = difflib.get_close_matches(path_or_preset, names, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        f"--config {path_or_preset!r} is neither a YAML file nor a preset; {hint}presets: {', '.join(names)}"
    )


def _read_yaml_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file; a top-level ``base: <preset or path>`` key inherits from that config first."""
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} is not valid YAML ({first}); fix the file") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        base_path = (
            resolve_config_path(str(base)) if not (path.parent / str(base)).is_file() else path.parent / base
        )
        if base_path.resolve() in seen:
            raise ConfigError(f"{path}: 'base: {base}' makes a cycle; remove it")
        data = _deep_merge(_read_yaml_file(base_path, (*seen, path.resolve())), data)
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> ``(["a", "b", "c"], parsed value)``; the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} is not of the form dotted.key=value, e.g. actor.lr=1e-6")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"override {item!r}: the value is not valid YAML; quote it, e.g. {key}='{raw}'"
        ) from exc
    return key.split("."), value


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a nested dict (in order); returns a new dict."""
    out = _deep_merge({}, d)
    for item in overrides:
        parts, value = parse_override(item)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(
                    f"override {item!r}: {where!r} is a value, not a section; use {where}=<value>"
                )
            node = child
        node[parts[-1]] = value
    return out


def load_config(
    path_or_preset: str | None = None, overrides: list[str] | None = None, validate: bool = True
) -> HiperConfig:
    """Load a preset name or YAML path (``None`` = ``cpu_demo``), apply dotted ``overrides``, validate.

    Missing keys take the dataclass defaults. Raises :class:`ConfigError`.
    """
    path = resolve_config_path(path_or_preset or DEFAULT_PRESET)
    data = _read_yaml_file(path)
    data = apply_overrides(data, list(overrides or []))
    return from_dict(data, validate=validate)


def config_to_yaml(cfg: HiperConfig) -> str:
    """The resolved config as YAML (section order as declared)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False)


def save_resolved(cfg: HiperConfig, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config to ``path`` (YAML, atomically); loading it back gives an equal config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(
        "# resolved hiper config (all keys); reload with: hiper train --config <this file>\n"
        + config_to_yaml(cfg)
    )
    os.replace(tmp, path)
    return path


__all__ = [
    "DEFAULT_PRESET",
    "PRESET_DIR",
    "REMOVED_KEYS",
    "apply_overrides",
    "config_to_yaml",
    "from_dict",
    "list_presets",
    "load_config",
    "parse_override",
    "parse_yaml",
    "resolve_config_path",
    "save_resolved",
]
