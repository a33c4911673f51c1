"""Atomic, resumable checkpoints.

Layout (``<output_dir>/checkpoints/``)::

    iter_000010/
        policy/             HF ``save_pretrained`` folder + tokenizer (``hiper eval --policy <this dir>``);
                            a LoRA policy is saved merged, with peft's adapter folder in ``policy/adapter/``
        critic/             ``save_pretrained`` folder if the module has one, else ``state_dict.pt``
        trainer_state.pt    iteration, optimizer + scheduler states, RNG streams, ``extra`` (sampler position...)
        config.yaml         the resolved run config
    latest                  one line: the name of the newest complete checkpoint folder

Writes are atomic: everything goes to ``iter_000010.tmp-<pid>/`` first and is renamed into place with
``os.replace``; ``latest`` is rewritten the same way. A crash at any point leaves the previous checkpoint
and the ``latest`` pointer intact (a leftover ``*.tmp-<pid>`` folder of a dead process is removed by the
next save). Only the last ``keep`` ``iter_*`` checkpoints are kept; other names (e.g. ``best``) are never
pruned.

``trainer_state.pt`` is a pickle (``torch.save``); load checkpoints you trust, like any pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.utils import logging as hf_logging

from hiper.config.loader import parse_yaml, save_resolved
from hiper.losses import weights_finite
from hiper.models.policy import from_pretrained_dtype
from hiper.models.tokenizer import load_tokenizer
from hiper.rollout.weights import merged_state_dict

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAINER_STATE = "trainer_state.pt"
CONFIG_FILE = "config.yaml"
MANIFEST = "manifest.json"
#: name of the best-validation checkpoint (never pruned, never the ``latest`` resume point)
BEST = "best"
STATE_DICT_FILE = "state_dict.pt"
#: sub-folder of a LoRA policy folder holding peft's adapter (``save_pretrained`` of the PeftModel).
LORA_ADAPTER_DIR = "adapter"
LORA_ADAPTER_FILE = "adapter_model.safetensors"
PEFT_ADAPTER_CONFIG = "adapter_config.json"  # marks a bare peft adapter folder (saved by peft, not by hiper)
POLICY = "policy"
FORMAT_VERSION = 1
_ITER_RE = re.compile(r"^iter_(\d+)$")
_TMP_RE = re.compile(r"^(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)$")


# ----------------------------------------------------------------------------------------------
# RNG streams
# ----------------------------------------------------------------------------------------------


def capture_rng_state(generators: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Snapshot every RNG stream: python ``random``, numpy's global RNG, torch CPU (+ all CUDA devices),
    and each named generator in ``generators`` (``torch.Generator``, ``numpy.random.Generator`` or
    ``random.Random``). Restore with :func:`restore_rng_state`; draws after the restore equal the draws
    made after the capture.
    """
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generators": {},
    }
    for name, gen in (generators or {}).items():
        state["generators"][name] = _generator_state(gen, name)
    return state


def _generator_state(gen: Any, name: str) -> Any:
    if isinstance(gen, torch.Generator):
        return {"kind": "torch", "state": gen.get_state()}
    if isinstance(gen, np.random.Generator):
        return {"kind": "numpy", "state": gen.bit_generator.state}
    if isinstance(gen, random.Random):
        return {"kind": "python", "state": gen.getstate()}
    raise TypeError(f"generator {name!r} is a {type(gen).__name__}; expected torch.Generator, "
                    "numpy.random.Generator or random.Random")


def restore_rng_state(state: Mapping[str, Any], generators: Mapping[str, Any] | None = None) -> None:
    """Restore the streams captured by :func:`capture_rng_state` (global ones and each named generator).

    Every generator in ``generators`` must be in ``state`` (KeyError otherwise); CUDA states are restored
    when CUDA is available with the same device count.
    """
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    saved = state.get("generators", {})
    for name, gen in (generators or {}).items():
        if name not in saved:
            raise KeyError(f"generator {name!r} is not in the checkpoint's RNG state (saved: {sorted(saved)})")
        entry = saved[name]
        kind = _generator_state(gen, name)["kind"]
        if entry["kind"] != kind:
            raise TypeError(f"generator {name!r} was saved as {entry['kind']}, restoring into {kind}")
        if kind == "torch":
            gen.set_state(entry["state"])
        elif kind == "numpy":
            gen.bit_generator.state = entry["state"]
        else:
            gen.setstate(entry["state"])


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------


def checkpoint_root(output_dir: str | os.PathLike[str]) -> Path:
    """``<output_dir>/checkpoints``."""
    return Path(output_dir) / CHECKPOINTS


def checkpoint_name(iteration: int) -> str:
    """``iter_000010`` for iteration 10 (zero-padded so names sort by iteration)."""
    return f"iter_{int(iteration):06d}"


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete ``iter_*`` checkpoints of a run, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _ITER_RE.match(p.name))
             and (p / TRAINER_STATE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint named by ``<output_dir>/checkpoints/latest`` (else the newest ``iter_*``), or None."""
    root = checkpoint_root(output_dir)
    pointer = root / LATEST
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if (target / TRAINER_STATE).is_file():
            return target
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmp(root: Path) -> None:
    """Remove ``*.tmp-<pid>`` / ``*.old-<pid>`` leftovers of processes that no longer run."""
    for p in root.iterdir():
        m = _TMP_RE.match(p.name)
        if m and not _pid_alive(int(m.group("pid"))):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _write_pointer(root: Path, name: str) -> None:
    tmp = root / f"{LATEST}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / LATEST)


# ----------------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------------


def _save_model(model: nn.Module, folder: Path) -> None:
    """``save_pretrained`` (or ``state_dict.pt``); a peft LoRA model is written as a merged HF folder.

    LoRA layout: ``folder/`` is a plain transformers folder with the adapters merged into the weights (what
    ``hiper eval``, ``from_pretrained`` and vLLM load), and ``folder/adapter/`` is peft's adapter folder
    (the exact adapter tensors that resume restores; the base is rebuilt from the run config).
    """
    folder.mkdir(parents=True, exist_ok=True)
    # transformers draws a "Writing model shards" bar per save; a run saves often (best, final), so it is noise
    with _no_hf_progress_bars():
        if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
            model.get_base_model().save_pretrained(str(folder), state_dict=merged_state_dict(model))
            model.save_pretrained(str(folder / LORA_ADAPTER_DIR))
        elif hasattr(model, "save_pretrained"):
            model.save_pretrained(str(folder))
        else:
            torch.save(model.state_dict(), folder / STATE_DICT_FILE)


@contextmanager
def _no_hf_progress_bars() -> Iterator[None]:
    """transformers' progress bars (saving / loading weights) off inside the block, as they were after it."""
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _load_adapter(model: nn.Module, folder: Path) -> None:
    """Restore a peft model's adapter tensors from ``folder/adapter/`` (or a bare adapter ``folder``)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    candidates = [folder / LORA_ADAPTER_DIR / LORA_ADAPTER_FILE, folder / LORA_ADAPTER_FILE]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"{folder} has no LoRA adapter ({LORA_ADAPTER_DIR}/{LORA_ADAPTER_FILE}) but the model has LoRA "
            "adapters: was it saved without model.lora.enabled=true? (its merged weights load into a model "
            "built with model.lora.enabled=false)"
        )
    misfit = f"{path}: adapter does not fit the model (model.lora r / target_modules differ from the run's?)"
    try:
        result = set_peft_model_state_dict(model, load_file(str(path)))
    except RuntimeError as exc:  # shape mismatch (another r)
        raise RuntimeError(f"{misfit}: {str(exc).splitlines()[1:2]}") from exc
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"{misfit}; missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]}")


def _load_model(model: nn.Module, folder: Path) -> None:
    """Load parameters saved by :func:`_save_model` into ``model`` (exact, incl. tied weights)."""
    if (folder / STATE_DICT_FILE).is_file():
        model.load_state_dict(torch.load(folder / STATE_DICT_FILE, map_location="cpu", weights_only=True))
        return
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        _load_adapter(model, folder)
        return
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no {STATE_DICT_FILE} or *.safetensors in {folder}")
    loaded: dict[str, torch.Tensor] = {}
    for f in files:
        loaded.update(load_file(str(f)))
    result = model.load_state_dict(loaded, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"{folder}: unexpected parameters {result.unexpected_keys[:5]}")
    # save_pretrained drops tied copies (lm_head = embed_tokens); anything else missing is an error
    current = model.state_dict()
    loaded_ptrs = {current[k].data_ptr() for k in loaded if k in current}
    untied = [k for k in result.missing_keys if current[k].data_ptr() not in loaded_ptrs]
    if untied:
        raise RuntimeError(f"{folder}: parameters missing from the checkpoint: {untied[:5]}")


def save_checkpoint(
    output_dir: str | os.PathLike[str],
    *,
    iteration: int,
    models: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    rng: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    tokenizer: Any = None,
    config: Any = None,
    keep: int = 3,
    name: str | None = None,
    update_latest: bool = True,
) -> Path:
    """Write a checkpoint atomically to ``<output_dir>/checkpoints/<name>`` and return its path.

    Args:
        output_dir: the run folder.
        iteration: the number of completed iterations (stored; the default ``name`` is ``iter_<iteration>``).
        models: ``{"policy": model, "critic": value_model, ...}``; each goes to its own sub-folder
            (``save_pretrained`` when the module has it, else ``state_dict.pt``).
        optimizers / schedulers: objects with ``state_dict()``, stored in ``trainer_state.pt``.
        rng: output of :func:`capture_rng_state`; None captures the global streams now.
        extra: anything picklable the trainer needs to resume (task-sampler position, best metric...).
        tokenizer: saved into ``policy/`` (so it is a complete HF folder).
        config: a ``HiperConfig`` (or a dict) written as ``config.yaml``.
        keep: keep the last ``keep`` ``iter_*`` checkpoints (0 = all).
        name: folder name (e.g. ``"best"``); such checkpoints are never pruned.
        update_latest: point ``latest`` at this checkpoint.
    """
    for model_name, model in models.items():
        if not weights_finite(list(model.parameters())):
            raise ValueError(f"refusing to save a checkpoint: {model_name} has non-finite weights")
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    name = name or checkpoint_name(iteration)
    final = root / name
    tmp = root / f"{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        for model_name, model in models.items():
            _save_model(model, tmp / model_name)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "policy"))
        if config is not None:
            _save_config(config, tmp / CONFIG_FILE)
        state = {
            "format": FORMAT_VERSION,
            "iteration": int(iteration),
            "models": sorted(models),
            "optimizers": {k: v.state_dict() for k, v in (optimizers or {}).items()},
            "schedulers": {k: v.state_dict() for k, v in (schedulers or {}).items()},
            "rng": dict(rng) if rng is not None else capture_rng_state(),
            "extra": dict(extra or {}),
        }
        torch.save(state, tmp / TRAINER_STATE)
        # written last: a folder with a manifest is complete, and every file in it can be checked on load
        _write_manifest(tmp)
        old = None
        if final.exists():
            old = root / f"{name}.old-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if update_latest:
        _write_pointer(root, name)
    if keep > 0:
        _prune(output_dir, keep)
    return final


def _save_config(config: Any, path: Path) -> None:
    if hasattr(config, "to_dict"):
        save_resolved(config, path)
    else:
        import yaml

        path.write_text(yaml.safe_dump(dict(config), sort_keys=False))


def _prune(output_dir: str | os.PathLike[str], keep: int) -> None:
    """Delete all but the newest ``keep`` ``iter_*`` checkpoints (never the one ``latest`` names)."""
    current = latest_checkpoint(output_dir)
    found = list_checkpoints(output_dir)
    for path in found[: max(0, len(found) - keep)]:
        if current is not None and path.resolve() == current.resolve():
            continue
        shutil.rmtree(path, ignore_errors=True)


class CheckpointCorrupt(RuntimeError):
    """A checkpoint file does not match its manifest (or a listed file is missing); ``str(err)`` is one line."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(folder: Path) -> None:
    """``manifest.json``: the sha256 and size of every file of the checkpoint folder (relative paths)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {p.relative_to(folder).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in files}
    tmp = folder / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"format": 1, "files": entries}, indent=1, sort_keys=True))
    os.replace(tmp, folder / MANIFEST)


def verify_checkpoint(path: str | os.PathLike[str], only: str | None = None) -> int:
    """Check the files of checkpoint folder ``path`` against its ``manifest.json``; returns how many were checked.

    ``only``: check just the files under this sub-folder (e.g. ``policy``). Raises :class:`CheckpointCorrupt`
    naming the first file that is missing or whose sha256 differs. A checkpoint written before manifests existed
    has none and is not checked (returns 0).
    """
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        return 0
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as exc:
        raise CheckpointCorrupt(f"checkpoint {path}: {MANIFEST} is unreadable ({exc}); the checkpoint cannot be "
                                "trusted: resume from an earlier one") from None
    checked = 0
    for rel, meta in sorted(entries.items()):
        if only is not None and not rel.startswith(f"{only}/"):
            continue
        file = path / rel
        if not file.is_file():
            raise CheckpointCorrupt(f"checkpoint {path}: {rel} is missing; resume from an earlier checkpoint")
        if file.stat().st_size != meta["bytes"] or _sha256(file) != meta["sha256"]:
            raise CheckpointCorrupt(f"checkpoint {path}: {rel} does not match its sha256 in {MANIFEST} (corrupt "
                                    "or modified); resume from an earlier checkpoint")
        checked += 1
    return checked


def load_checkpoint(
    ckpt_dir: str | os.PathLike[str],
    *,
    models: Mapping[str, nn.Module] | None = None,
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    generators: Mapping[str, Any] | None = None,
    restore_rng: bool = False,
    verify: bool = True,
) -> dict[str, Any]:
    """Read a checkpoint; optionally restore it into live objects.

    Args:
        ckpt_dir: a checkpoint folder, or a run folder (its latest checkpoint is used).
        models / optimizers / schedulers: restore parameters / states into these (by name).
        generators: named generators for :func:`restore_rng_state`.
        restore_rng: restore the global RNG streams (and ``generators``).
        verify: check every file against the checkpoint's manifest first (:func:`verify_checkpoint`).

    Returns:
        ``{"path", "iteration", "extra", "rng", "optimizers", "schedulers", "models", "config"}`` where
        ``optimizers``/``schedulers`` are the raw state dicts, ``models`` maps each saved model name to its
        folder, and ``config`` is the saved config dict (or None).
    """
    path = Path(ckpt_dir)
    if not (path / TRAINER_STATE).is_file():
        latest = latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"{path} is neither a checkpoint (no {TRAINER_STATE}) nor a run with checkpoints")
        path = latest
    if verify:
        verify_checkpoint(path)
    state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=False)
    for model_name, model in (models or {}).items():
        folder = path / model_name
        if not folder.is_dir():
            raise FileNotFoundError(f"checkpoint {path} has no {model_name!r} (saved: {state.get('models')})")
        _load_model(model, folder)
    for kind, objs in (("optimizers", optimizers), ("schedulers", schedulers)):
        for obj_name, obj in (objs or {}).items():
            if obj_name not in state[kind]:
                raise KeyError(f"checkpoint {path} has no {kind[:-1]} {obj_name!r} (saved: {sorted(state[kind])})")
            obj.load_state_dict(state[kind][obj_name])
    if restore_rng or generators:
        restore_rng_state(state["rng"], generators)
    config = None
    if (path / CONFIG_FILE).is_file():
        config = parse_yaml((path / CONFIG_FILE).read_text())
    return {
        "path": path,
        "iteration": state["iteration"],
        "extra": state["extra"],
        "rng": state["rng"],
        "optimizers": state["optimizers"],
        "schedulers": state["schedulers"],
        "models": {m: path / m for m in state.get("models", [])},
        "config": config,
    }


def policy_dir(path: str | os.PathLike[str]) -> Path:
    """The HF policy folder of ``path``: a model folder (``config.json``, or a bare peft adapter's
    ``adapter_config.json``), a checkpoint folder (``policy/`` inside), a checkpoints root or a run folder (the
    checkpoint its ``latest`` pointer names, else its newest ``iter_*``)."""
    path = Path(path)
    candidates = [path, path / POLICY]
    for root in (checkpoint_root(path), path):
        pointer = root / LATEST
        if pointer.is_file():
            candidates.append(root / pointer.read_text().strip() / POLICY)
    latest = latest_checkpoint(path)
    if latest is not None:
        candidates.append(latest / POLICY)
    for folder in candidates:
        if (folder / "config.json").is_file() or (folder / PEFT_ADAPTER_CONFIG).is_file():
            return folder
    raise FileNotFoundError(f"{path} holds no policy: expected an HF folder, a checkpoint or a run folder")


def verify_policy(folder: str | os.PathLike[str]) -> int:
    """Check a checkpoint's ``policy/`` folder against the checkpoint's manifest (a plain HF folder: nothing to
    check, returns 0). Raises :class:`CheckpointCorrupt`."""
    folder = Path(folder)
    return verify_checkpoint(folder.parent, only=folder.name) if (folder.parent / MANIFEST).is_file() else 0


def load_tokenizer_dir(folder: str | os.PathLike[str]) -> Any:
    """Load a saved tokenizer exactly as it was saved (left padding, pad token set); see
    :func:`hiper.models.tokenizer.load_tokenizer` (``tokenizer.json`` is loaded verbatim)."""
    return load_tokenizer(str(folder))


def load_policy(
    path: str | os.PathLike[str], dtype: torch.dtype | str | None = None, progress: bool = True
) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` from anything :func:`policy_dir` accepts, after :func:`verify_policy`.

    What ``hiper eval`` loads a saved policy with (the trainer's ``model.path`` goes through
    :mod:`hiper.models.policy`, which builds LoRA and dtype from the run config): a bare peft adapter folder is merged
    into its base (needs the ``lora`` extra); the tokenizer is loaded as saved (:func:`load_tokenizer_dir`;
    transformers' AutoTokenizer would re-tokenise the CPU demo's code-built tokenizer). ``dtype``: a torch dtype
    or ``"auto"``; None keeps transformers' default (float32). ``progress``: False hides transformers'
    weight-loading bar (``hiper eval --no-progress``).
    """
    import transformers

    folder = policy_dir(path)
    verify_policy(folder)
    kwargs = from_pretrained_dtype(dtype)  # not resolve_dtype: it would turn "auto" into float32
    with nullcontext() if progress else _no_hf_progress_bars():
        if (folder / PEFT_ADAPTER_CONFIG).is_file():
            try:
                from peft import AutoPeftModelForCausalLM
            except ImportError as exc:  # pragma: no cover - optional extra
                raise ImportError("this checkpoint is a LoRA adapter: install the 'lora' extra (peft)") from exc
            model = AutoPeftModelForCausalLM.from_pretrained(str(folder), **kwargs).merge_and_unload()
        else:
            model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    return model, load_tokenizer_dir(folder)


__all__ = [
    "CheckpointCorrupt",
    "capture_rng_state",
    "load_policy",
    "load_tokenizer_dir",
    "policy_dir",
    "checkpoint_name",
    "checkpoint_root",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "verify_checkpoint",
    "verify_policy",
]
