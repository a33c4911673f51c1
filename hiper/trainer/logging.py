"""Metric logging (console / JSONL / TensorBoard / wandb), training diagnostics and timing helpers.

* :class:`MetricLogger` fans ``log(metrics, step)`` out to the chosen backends; JSONL (``metrics.jsonl``,
  one object per call, flushed) is the record the plots and tests read.
* :func:`explained_variance` is computed at the value read positions only (the official code computes it over
  every response token, which makes it meaningless: spec §7 #17).
* :func:`masked_stats` / :func:`advantage_stats` summarise advantage tensors per role over a mask.
* :class:`StageTimer` accumulates wall-clock seconds per stage (``with timer("rollout"): ...``).
* :func:`plot_learning_curve` draws metrics from a ``metrics.jsonl`` into a PNG (matplotlib Agg).
* :func:`track` wraps an iterable in a rich progress bar.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from hiper.losses import explained_variance as losses_explained_variance

BACKENDS = ("console", "jsonl", "tensorboard", "wandb")
#: keys shown first (in this order) on the console line when present.
CONSOLE_PRIORITY = (
    "train/success",
    "train/score",
    "train/reward",
    "train/episode_length",
    "eval/success",
    "eval/score",
    "actor/pg_loss",
    "actor/kl",
    "actor/entropy",
    "critic/loss",
    "critic/explained_var_low",
    "train/switch_rate",
    "time/iteration",
)

T = TypeVar("T")


def _to_float(value: Any) -> float:
    """A scalar (python number, 0-d/1-element tensor, numpy scalar) -> float."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric tensors must hold one element, got shape {tuple(value.shape)}")
        return float(value.detach().float().item())
    return float(value)


def truncate_metrics(path: str | os.PathLike[str], max_step: int, key: str = "step") -> int:
    """Drop the rows of a JSONL log (``metrics.jsonl``; ``trajectories.jsonl`` with ``key="iteration"``) logged after
    step ``max_step`` (a resume from the checkpoint of that step recomputes them, so keeping them would repeat a
    step); returns how many rows were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    keep = [ln for ln in lines if ln.strip() and int(json.loads(ln).get(key, 0)) <= max_step]
    dropped = len([ln for ln in lines if ln.strip()]) - len(keep)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


class MetricLogger:
    """Log scalar metrics per step to several backends.

    Args:
        output_dir: run folder; JSONL goes to ``<output_dir>/metrics.jsonl``, TensorBoard events to
            ``<output_dir>/tensorboard/``.
        backends: any of ``console``, ``jsonl``, ``tensorboard``, ``wandb``.
        run_name: name shown on the console and used as the wandb run name.
        project: wandb project (default ``"hiper"``).
        config: dict stored with the wandb run.
        console_keys: at most this many metrics on the console line (all go to the other backends).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        backends: Sequence[str] = ("console", "jsonl"),
        run_name: str = "hiper",
        project: str = "hiper",
        config: Mapping[str, Any] | None = None,
        console_keys: int = 10,
    ) -> None:
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown:
            raise ValueError(f"unknown logger backend(s) {unknown}; use any of {list(BACKENDS)}")
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.backends = tuple(dict.fromkeys(backends))
        self.run_name = run_name
        self.console_keys = console_keys
        self._jsonl = None
        self._tb = None
        self._wandb_run = None
        self._console = None
        if "console" in self.backends:
            from rich.console import Console

            self._console = Console(highlight=False)
        if "jsonl" in self.backends:
            self.jsonl_path = self.output_dir / "metrics.jsonl"
            self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if "tensorboard" in self.backends:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ImportError(
                    "the tensorboard logger needs the tensorboard package: pip install 'hiper[logging]' "
                    "or drop 'tensorboard' from trainer.logger"
                ) from exc
            self._tb = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))
        if "wandb" in self.backends:
            try:
                import wandb
            except ImportError as exc:
                raise ImportError(
                    "the wandb logger needs the wandb package: pip install wandb, or drop 'wandb' from trainer.logger"
                ) from exc
            self._wandb_run = wandb.init(
                project=project, name=run_name, dir=str(self.output_dir), config=dict(config or {})
            )

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record scalar ``metrics`` at ``step`` (an iteration index). Non-finite values become JSON null."""
        values = {str(k): _to_float(v) for k, v in metrics.items()}
        if self._jsonl is not None:
            record: dict[str, Any] = {"step": int(step), "time": round(time.time(), 3)}
            record.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, global_step=int(step))
            self._tb.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(values, step=int(step))
        if self._console is not None:
            self._console.print(self.format_line(values, step), soft_wrap=True)

    def format_line(self, values: Mapping[str, float], step: int) -> str:
        """The compact console line: priority keys first, then the rest alphabetically, ``console_keys`` max."""
        keys = [k for k in CONSOLE_PRIORITY if k in values]
        keys += sorted(k for k in values if k not in keys)
        shown = keys[: self.console_keys]
        parts = [f"[bold]{self.run_name}[/bold] step {step}"]
        parts += [f"{k}=[cyan]{_fmt(values[k])}[/cyan]" for k in shown]
        if len(keys) > len(shown):
            parts.append(f"(+{len(keys) - len(shown)} more)")
        return " | ".join(parts)

    def close(self) -> None:
        """Flush and close every backend (idempotent)."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return f"{v:.4g}"
    return f"{v:.3e}"


# ----------------------------------------------------------------------------------------------
# Diagnostics
# ----------------------------------------------------------------------------------------------


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor | None = None) -> float:
    """``1 - Var(returns - values) / Var(returns)`` over the positions where ``mask`` is True.

    Args:
        values: predicted values, any shape (e.g. ``[n_samples, L]`` per-token or ``[n_turns]``).
        returns: targets, same shape.
        mask: bool (or 0/1) tensor of the same shape selecting the value read positions; None = all.

    Population variances. Returns NaN when fewer than 2 positions are selected or the returns are
    constant there (the ratio is undefined); 1.0 is a perfect critic, 0.0 predicts the mean.
    """
    if values.shape != returns.shape:
        raise ValueError(f"values {tuple(values.shape)} and returns {tuple(returns.shape)} differ in shape")
    if mask is not None and mask.shape != values.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must have the values' shape {tuple(values.shape)}")
    sel = torch.ones_like(values, dtype=torch.bool) if mask is None else mask
    return losses_explained_variance(values.detach(), returns.detach(), sel)


def masked_stats(x: Tensor, mask: Tensor | None = None, prefix: str = "") -> dict[str, float]:
    """``{prefix}mean/std/min/max/count`` of ``x`` over ``mask`` (population std; NaN stats when empty)."""
    flat = x.detach().double()
    flat = flat[mask.bool()] if mask is not None else flat.reshape(-1)
    n = int(flat.numel())
    if n == 0:
        nan = float("nan")
        return {f"{prefix}mean": nan, f"{prefix}std": nan, f"{prefix}min": nan, f"{prefix}max": nan,
                f"{prefix}count": 0.0}
    return {
        f"{prefix}mean": float(flat.mean()),
        f"{prefix}std": float(flat.std(unbiased=False)),
        f"{prefix}min": float(flat.min()),
        f"{prefix}max": float(flat.max()),
        f"{prefix}count": float(n),
    }


def advantage_stats(
    advantages: Mapping[str, tuple[Tensor, Tensor | None]], prefix: str = "adv/"
) -> dict[str, float]:
    """Stats per role: ``{"low": (adv, mask), "high": ..., "term": ...}`` -> ``adv/low/mean`` etc."""
    out: dict[str, float] = {}
    for role, (adv, mask) in advantages.items():
        out.update(masked_stats(adv, mask, prefix=f"{prefix}{role}/"))
    return out


class StageTimer:
    """Accumulate wall-clock seconds per named stage.

    ``with timer("rollout"): ...`` adds the elapsed time to ``rollout``; :meth:`metrics` returns
    ``{"time/rollout": seconds, ...}`` and :meth:`reset` starts a new iteration. Re-entering a stage adds up.
    CUDA work is asynchronous: pass ``sync_cuda=True`` to synchronise before reading the clock.
    """

    def __init__(self, sync_cuda: bool = False) -> None:
        self.sync_cuda = sync_cuda and torch.cuda.is_available()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.sync_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync_cuda:
                torch.cuda.synchronize()
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    def metrics(self, prefix: str = "time/") -> dict[str, float]:
        """Seconds per stage with ``prefix`` on each key."""
        return {f"{prefix}{k}": v for k, v in self.seconds.items()}

    def reset(self) -> None:
        self.seconds.clear()


# ----------------------------------------------------------------------------------------------
# Reading metrics back and plotting
# ----------------------------------------------------------------------------------------------


def read_metrics(metrics_jsonl: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` (in order)."""
    with open(metrics_jsonl, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def plot_learning_curve(
    metrics_jsonl: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    keys: Sequence[str] = ("train/success", "eval/success"),
    title: str | None = None,
    x_key: str = "step",
) -> Path:
    """Plot ``keys`` against ``x_key`` from a ``metrics.jsonl`` into ``out_png`` (one line per key).

    Keys absent from every record are skipped; ValueError if none of them is present.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_jsonl)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    plotted = 0
    for key in keys:
        pts = [(r[x_key], r[key]) for r in records if r.get(key) is not None and x_key in r]
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", markersize=3, label=key)
        plotted += 1
    if plotted == 0:
        plt.close(fig)
        raise ValueError(f"none of {list(keys)} appears in {metrics_jsonl}")
    ax.set_xlabel("iteration" if x_key == "step" else x_key)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


@contextmanager
def progress_bar(description: str, total: int | None, disable: bool = False) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (elapsed / remaining time) for work that advances in steps; yields ``advance(k)``.
    Disabled (a no-op) when ``disable`` or when stdout is not a terminal (logs, CI, tests)."""
    if disable or not sys.stdout.isatty():
        yield lambda k=1: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda k=1: progress.advance(task, k)


def track(
    iterable: Iterable[T], description: str = "working", total: int | None = None, disable: bool = False
) -> Iterator[T]:
    """Iterate with :func:`progress_bar` (elapsed/remaining time); ``disable`` passes items straight through."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with progress_bar(description, total, disable) as advance:
        for item in iterable:
            yield item
            advance(1)


__all__ = [
    "BACKENDS",
    "MetricLogger",
    "StageTimer",
    "progress_bar",
    "advantage_stats",
    "explained_variance",
    "masked_stats",
    "plot_learning_curve",
    "truncate_metrics",
    "read_metrics",
    "track",
]
