"""Where a result was measured: the machine and the library versions that decide its float rounding.

The CPU demo is chaotic in float rounding: the same code, seed and config (the two-SFT-epoch preset) gave seed 0 a
held-out start of 0.260 on an Intel Xeon and 0.115 on an AMD EPYC, both at torch's AVX512 kernel level
(docs/results_cpu_demo.md, "The same seeds on another CPU" and "A third CPU"): the CPU decides which kernels torch
and its libraries run, forcing another kernel level changes the figures again, and library versions can change the
rounding too. So every demo result records what it ran on, and a figure quoted in the docs can be compared with a
rerun only where these fields agree.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

import hiper

#: packages whose version changes the numbers of a run (kernels, model code, sampling).
PACKAGES = ("torch", "transformers", "numpy")

#: environment variables that choose the CPU kernels (and so the float rounding) of torch, MKL and oneDNN;
#: ``ATEN_CPU_CAPABILITY=avx2`` moved seed 0's SFT start from 0.260 to 0.312 (two SFT epochs) on an Intel Xeon that
#: reproduces the docs' tables.
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`; ``"unknown"`` if empty)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str | None:
    """The commit of the hiper checkout this code runs from, ``"<sha>+dirty"`` with uncommitted changes to tracked
    files; None when hiper is not run from a git checkout (an installed wheel) or git is missing."""
    root = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(hiper.__file__))))
    try:
        top, sha = subprocess.run(["git", "-C", root, "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                                  text=True, timeout=10, check=True).stdout.splitlines()
        if os.path.realpath(top) != root:  # an installed hiper inside some other repository (a venv in a project)
            return None
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return f"{sha}+dirty" if dirty else sha


def machine_info() -> dict[str, Any]:
    """A JSON-ready record: CPU model, logical cores, torch's CPU kernel level (``"AVX512"``, ``"AVX2"``, ...)
    and intra-op threads, the :data:`KERNEL_ENV` variables that are set, OS machine type, python, the
    :data:`PACKAGES` versions (None if not installed), hiper's version and git commit."""
    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "kernel_env": {name: os.environ[name] for name in KERNEL_ENV if name in os.environ},
        "machine": platform.machine(),
        "python": platform.python_version(),
        "packages": packages,
        "hiper": hiper.__version__,
        "git_commit": git_commit(),
    }


def describe(info: dict[str, Any]) -> str:
    """One line of what decides a run's float rounding, from a :func:`machine_info` record:
    ``"AMD EPYC (AVX512), torch 2.13.0+cpu, transformers 5.25.0"`` plus any :data:`KERNEL_ENV` setting."""
    packages = info["packages"]
    text = (f"{info['cpu']} ({info['torch_cpu_capability']}), torch {packages['torch']}, "
            f"transformers {packages['transformers']}")
    kernel_env = info.get("kernel_env") or {}
    return text + "".join(f", {k}={v}" for k, v in sorted(kernel_env.items()))


__all__ = ["KERNEL_ENV", "PACKAGES", "cpu_model", "describe", "git_commit", "machine_info"]
