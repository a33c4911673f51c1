"""Batched text envs: a fault-tolerant worker-process pool and an in-process batch with the same API.

Both implement the batch-env API used by :class:`hiper.rollout.manager.EnvManager`::

    with EnvPool(functools.partial(make_env, "alfworld"), n_workers=2, timeout_s=120) as pool:
        first = pool.reset(tasks)                      # list[(obs, info)]; slot i runs tasks[i]
        results = pool.step({0: "go to desk 1", 3: "look"})   # dict[slot, StepResult], active slots only
        plans = pool.expert([0, 3])                    # dict[slot, ExpertStep]

:class:`EnvPool` runs the envs in ``n_workers`` worker processes; slot ``i`` lives in worker
``i % n_workers`` (one env instance per slot, created by ``env_factory()`` in the worker, so the
factory must be picklable: a module-level class or ``functools.partial``, not a lambda). A batch call
sends every worker its requests before waiting for any reply, so workers step in parallel and env
time scales with cores.

Faults never drop an episode silently:

* a worker that dies (segfault, OOM kill, ``os.kill``) or does not answer one request within
  ``timeout_s`` is killed and restarted; every episode it was running comes back (now, or at its next
  ``step``) as ``StepResult(obs="", reward=0.0, done=True, info={..., "truncated": True,
  "truncation_reason": "worker crashed: killed by SIGKILL" | "worker timed out after 30.0s", "won": False})``;
  the other workers' results of the same batch are returned normally and the slot can be reset;
* a Python exception raised by an env's ``step`` ends that episode the same way with reason
  ``"env error: <Type>: <message>"`` (the worker stays up); exceptions in ``reset``/``expert`` are
  programming errors and are re-raised in the caller.

Memory: a worker keeps one env per slot for its life (AlfWorldEnv reuses its TextWorld env across
episodes). Native code can still leak (fast-downward, used by ALFWorld, keeps ~1 MB per loaded game),
so a worker is recycled -- restarted at a reset that restarts all of its episodes -- after
``max_episodes_per_worker`` episodes (default: what the env advises via its own
``max_episodes_per_worker`` attribute; AlfWorldEnv advises 200).
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from multiprocessing.connection import wait
from typing import Any, Protocol

from hiper.envs.base import ExpertStep, StepResult, TaskSpec, TextEnv
from hiper.envs.registry import make_env

#: what ``expert`` returns for a slot whose episode was lost to a worker fault (its next ``step``
#: reports the truncation).
LOST_EXPERT = ExpertStep("look around", "look")


def _truncated_info(info: Mapping[str, Any] | None, reason: str) -> dict[str, Any]:
    out = dict(info or {})
    out.update(truncated=True, truncation_reason=reason, won=False, score=0.0)
    for key, default in (("admissible", []), ("task", ""), ("task_type", ""), ("step", 0)):
        out.setdefault(key, default)
    return out


def truncated_result(info: Mapping[str, Any] | None, reason: str) -> StepResult:
    """The result reported for an episode cut by a fault: empty obs, no reward, done and truncated."""
    return StepResult(obs="", reward=0.0, done=True, info=_truncated_info(info, reason))


# --------------------------------------------------------------------------------------------------
# in-process batch
# --------------------------------------------------------------------------------------------------


class LocalEnvBatch:
    """The batch API over envs in this process (for cheap envs: household, WebShop).

    ``env_factory()`` builds one env per slot, lazily. An exception in an env's ``step`` ends that
    episode truncated with ``"env error: ..."``; a hang cannot be interrupted in-process (use
    :class:`EnvPool` for envs that may hang).
    """

    def __init__(self, env_factory: Callable[[], TextEnv]) -> None:
        self.env_factory = env_factory
        self.envs: list[TextEnv] = []
        self._info: dict[int, dict[str, Any]] = {}

    @property
    def family(self) -> str | None:
        if not self.envs:
            self.envs.append(self.env_factory())
        return getattr(self.envs[0], "family", None)

    @property
    def n_slots(self) -> int:
        return len(self._info)

    def reset(self, tasks: Sequence[TaskSpec]) -> list[tuple[str, dict[str, Any]]]:
        while len(self.envs) < len(tasks):
            self.envs.append(self.env_factory())
        out = []
        for slot, task in enumerate(tasks):
            obs, info = self.envs[slot].reset(task)
            self._info[slot] = info
            out.append((obs, info))
        return out

    def step(self, actions: Mapping[int, str]) -> dict[int, StepResult]:
        results: dict[int, StepResult] = {}
        for slot, action in actions.items():
            if slot not in self._info:
                raise KeyError(f"slot {slot} was never reset (slots 0..{len(self._info) - 1})")
            try:
                obs, reward, done, info = self.envs[slot].step(action)
            except Exception as exc:  # noqa: BLE001 -- recorded as a truncated episode, not hidden
                results[slot] = truncated_result(self._info.get(slot), f"env error: {type(exc).__name__}: {exc}")
                continue
            self._info[slot] = info
            results[slot] = StepResult(obs=obs, reward=float(reward), done=bool(done), info=info)
        return results

    def expert(self, slots: Iterable[int]) -> dict[int, ExpertStep]:
        out = {}
        for slot in slots:
            env = self.envs[slot]
            if not hasattr(env, "expert"):
                raise TypeError(f"{type(env).__name__} has no expert()")
            out[slot] = env.expert()  # type: ignore[attr-defined]
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []

    def __enter__(self) -> LocalEnvBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# worker process
# --------------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """On Linux, have the kernel SIGKILL this worker when its parent dies (no orphans stuck in a long step)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _worker_main(conn: Any, env_factory: Callable[[], TextEnv]) -> None:
    """Serve ``("batch", [(op, slot, arg), ...])`` requests, one reply per op, until ``("close",)``/EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent()
    envs: dict[int, Any] = {}
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "close":
                break
            for op, slot, arg in msg[1]:
                try:
                    if op == "reset":
                        env = envs.get(slot)
                        if env is None:
                            env = envs[slot] = env_factory()
                        # the env's own recycling advice rides along (see EnvPool.max_episodes_per_worker)
                        payload: Any = (*env.reset(arg), getattr(env, "max_episodes_per_worker", None))
                    elif op == "step":
                        if slot not in envs:
                            raise RuntimeError(f"slot {slot} has no env in this worker; reset it first")
                        payload = envs[slot].step(arg)
                    elif op == "expert":
                        payload = envs[slot].expert()
                    else:
                        raise ValueError(f"unknown op {op!r}")
                    reply: tuple[Any, ...] = ("ok", slot, payload)
                except Exception as exc:  # noqa: BLE001 -- sent back to the parent, which decides
                    reply = ("err", slot, exc, traceback.format_exc())
                try:
                    conn.send(reply)
                except Exception as exc:  # noqa: BLE001 -- e.g. an unpicklable exception or payload
                    conn.send(("err", slot, RuntimeError(f"cannot send reply: {exc!r}: {reply[2]!r}"), ""))
    finally:
        for env in envs.values():
            try:
                env.close()
            except Exception:  # noqa: BLE001
                pass


class _Worker:
    def __init__(self, ctx: Any, env_factory: Callable[[], TextEnv], index: int) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, env_factory), name=f"hiper-env-{index}", daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent
        self.episodes = 0

    def kill(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=10)

    def death_reason(self) -> str:
        self.proc.join(timeout=2)
        code = self.proc.exitcode
        if code is None:
            return "worker crashed: connection lost"
        if code < 0:
            try:
                return f"worker crashed: killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"worker crashed: killed by signal {-code}"
        return f"worker crashed: exit code {code}"


class WorkerError(RuntimeError):
    """An env method other than ``step`` failed inside a worker (the worker traceback is in the message)."""


class EnvPool:
    """Run one env per slot in ``n_workers`` processes; crash/hang-tolerant (see the module docstring).

    Args:
        env_factory: picklable zero-argument callable returning a :class:`~hiper.envs.base.TextEnv`.
        n_workers: worker processes (>= 1); slot ``i`` lives in worker ``i % n_workers``.
        timeout_s: the longest one reset/step/expert may take in a worker (seconds) before the
            worker is declared hung, killed and restarted.
        start_method: ``"spawn"`` (default; safe with torch/CUDA in the parent) or ``"forkserver"``.
        max_episodes_per_worker: recycle a worker after this many episodes (at a reset that restarts
            all its episodes); ``None`` (default) follows the envs' ``max_episodes_per_worker``
            attribute if they have one, ``0`` never recycles.
        family: prompt family; default: read from one env built in this process on first use.
    """

    def __init__(
        self,
        env_factory: Callable[[], TextEnv],
        n_workers: int = 2,
        timeout_s: float = 120.0,
        start_method: str = "spawn",
        max_episodes_per_worker: int | None = None,
        family: str | None = None,
    ) -> None:
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.env_factory = env_factory
        self.n_workers = int(n_workers)
        self.timeout_s = float(timeout_s)
        self.max_episodes_per_worker = max_episodes_per_worker
        self._family = family
        self._ctx = mp.get_context(start_method)
        self._workers: list[_Worker | None] = [None] * self.n_workers
        self._info: dict[int, dict[str, Any]] = {}
        self._active: set[int] = set()  # slots with an episode running
        self._lost: dict[int, str] = {}  # slot -> why its episode was lost (reported at its next step)
        self.n_slots = 0
        #: fault log: (time, worker index, reason) for every restart caused by a crash or timeout
        self.faults: list[tuple[float, int, str]] = []
        self.restarts = 0
        self._last_dead: dict[int, str] = {}
        self._recycle_hint: int | None = None
        #: workers restarted by recycling (not faults)
        self.recycles = 0
        self._owner_pid = os.getpid()
        self._closed = False
        for w in range(self.n_workers):
            self._start(w)

    # ------------------------------------------------------------------ workers
    def _start(self, w: int) -> None:
        self._workers[w] = _Worker(self._ctx, self.env_factory, w)

    def _restart(self, w: int, reason: str | None) -> None:
        worker = self._workers[w]
        if worker is not None:
            worker.kill()
        if reason is not None:
            self.faults.append((time.time(), w, reason))
            for slot in self._active:  # every running episode of that worker is gone
                if slot % self.n_workers == w:
                    self._lost[slot] = reason
        self.restarts += 1
        self._start(w)

    @property
    def recycle_limit(self) -> int | None:
        """Episodes after which a worker is recycled: the explicit setting, else the envs' advice
        (``env.max_episodes_per_worker``, e.g. AlfWorldEnv's, whose native planner leaks ~1 MB per
        game), else never. 0 disables recycling."""
        if self.max_episodes_per_worker is not None:
            return self.max_episodes_per_worker or None
        return self._recycle_hint

    def worker_of(self, slot: int) -> int:
        """Index of the worker holding ``slot``."""
        return slot % self.n_workers

    def worker_pids(self) -> list[int]:
        """Process ids of the workers (index ``w`` = worker ``w``)."""
        return [int(wk.proc.pid) for wk in self._workers if wk is not None]

    @property
    def family(self) -> str | None:
        if self._family is None:
            env = self.env_factory()
            try:
                self._family = getattr(env, "family", None)
            finally:
                env.close()
        return self._family

    def _run(self, ops: Sequence[tuple[str, int, Any]]) -> dict[int, tuple[Any, ...]]:
        """Send ``ops`` (grouped per worker, all sent before any wait); collect one reply per op.

        Returns ``slot -> ("ok", payload) | ("err", exc, tb) | ("dead", reason)``. A worker that
        crashes or exceeds ``timeout_s`` on one op is restarted and its unanswered ops get ``"dead"``.
        """
        if self._closed:
            raise RuntimeError("EnvPool is closed")
        per_worker: dict[int, list[tuple[str, int, Any]]] = {}
        for op in ops:
            per_worker.setdefault(self.worker_of(op[1]), []).append(op)
        out: dict[int, tuple[Any, ...]] = {}
        pending: dict[int, list[int]] = {}  # worker -> slots still awaiting a reply, in order
        deadline: dict[int, float] = {}
        dead: dict[int, str] = {}
        for w, batch in per_worker.items():
            worker = self._workers[w]
            assert worker is not None
            try:
                worker.conn.send(("batch", batch))
            except (BrokenPipeError, EOFError, OSError):
                dead[w] = worker.death_reason()
                pending[w] = [slot for _, slot, _ in batch]
                continue
            pending[w] = [slot for _, slot, _ in batch]
            deadline[w] = time.monotonic() + self.timeout_s
        conn_of = {self._workers[w].conn: w for w in pending if w not in dead}  # type: ignore[union-attr]
        while conn_of:
            now = time.monotonic()
            timeout = max(0.0, min(deadline[w] for w in conn_of.values()) - now)
            for conn in wait(list(conn_of), timeout=timeout):
                w = conn_of[conn]  # type: ignore[index]
                try:
                    msg = conn.recv()  # type: ignore[union-attr,call-arg]
                except (EOFError, OSError):
                    dead[w] = self._workers[w].death_reason()  # type: ignore[union-attr]
                    del conn_of[conn]
                    continue
                slot = pending[w].pop(0)
                if msg[1] != slot:  # protocol bug, not an env fault
                    raise RuntimeError(f"worker {w} answered slot {msg[1]}, expected {slot}")
                out[slot] = (msg[0], *msg[2:])
                deadline[w] = time.monotonic() + self.timeout_s
                if not pending[w]:
                    del conn_of[conn]
            now = time.monotonic()
            for conn, w in list(conn_of.items()):
                if now >= deadline[w] and w not in dead:
                    dead[w] = f"worker timed out after {self.timeout_s:g}s"
                    del conn_of[conn]
        for w, reason in dead.items():
            for slot in pending[w]:
                out[slot] = ("dead", reason)
            self._restart(w, reason)
        self._last_dead = dict(dead)
        return out

    # ------------------------------------------------------------------ batch API
    def reset(self, tasks: Sequence[TaskSpec]) -> list[tuple[str, dict[str, Any]]]:
        """Start ``tasks[i]`` in slot ``i``; return ``[(obs, info)]`` in slot order.

        A reset lost to a worker fault is retried once on the restarted worker; if it fails again
        the slot gets ``("", info)`` with ``truncated=True`` and its first ``step`` returns the
        truncated result.
        """
        tasks = list(tasks)
        self.n_slots = max(self.n_slots, len(tasks))
        resetting = set(range(len(tasks)))
        limit = self.recycle_limit
        if limit:
            for w, worker in enumerate(self._workers):
                running = {s for s in self._active if self.worker_of(s) == w}
                if worker is not None and worker.episodes >= limit and running <= resetting:
                    self._restart(w, None)
                    self.recycles += 1
        for slot in resetting:
            self._lost.pop(slot, None)
            self._active.discard(slot)
        ops = [("reset", slot, task) for slot, task in enumerate(tasks)]
        replies = self._run(ops)
        # a worker that died took even its finished resets with it: redo all of its slots once
        retry = [op for op in ops if self.worker_of(op[1]) in self._last_dead]
        if retry:
            replies.update(self._run(retry))
            for _, slot, _ in retry:
                w = self.worker_of(slot)
                if w in self._last_dead and replies[slot][0] != "dead":
                    replies[slot] = ("dead", self._last_dead[w])
        out: list[tuple[str, dict[str, Any]]] = []
        for slot, task in enumerate(tasks):
            kind, *payload = replies[slot]
            if kind == "ok":
                obs, info, hint = payload[0]
                if hint is not None:
                    self._recycle_hint = min(self._recycle_hint or int(hint), int(hint))
                self._info[slot] = info
                self._active.add(slot)
                self._workers[self.worker_of(slot)].episodes += 1  # type: ignore[union-attr]
                out.append((obs, info))
            elif kind == "err":
                raise WorkerError(f"reset of slot {slot} ({task}) failed in its worker:\n{payload[1]}") from payload[0]
            else:
                info = _truncated_info({"task": "", "task_type": ""}, payload[0])
                self._info[slot] = info
                self._lost[slot] = payload[0]
                out.append(("", info))
        return out

    def step(self, actions: Mapping[int, str]) -> dict[int, StepResult]:
        """Step the given slots (only those) in parallel; ``dict[slot, StepResult]``."""
        results: dict[int, StepResult] = {}
        ops = []
        for slot, action in actions.items():
            if slot not in self._info:
                raise KeyError(f"slot {slot} was never reset (slots 0..{self.n_slots - 1})")
            if slot in self._lost:
                results[slot] = truncated_result(self._info.get(slot), self._lost[slot])
                self._active.discard(slot)
                continue
            ops.append(("step", slot, action))
        for slot, reply in self._run(ops).items():
            kind = reply[0]
            if kind == "ok":
                obs, reward, done, info = reply[1]
                self._info[slot] = info
                results[slot] = StepResult(obs=obs, reward=float(reward), done=bool(done), info=info)
                if done:
                    self._active.discard(slot)
            else:
                exc = reply[1]
                reason = f"env error: {type(exc).__name__}: {exc}" if kind == "err" else reply[1]
                results[slot] = truncated_result(self._info.get(slot), reason)
                self._active.discard(slot)
                if kind == "dead":
                    self._lost[slot] = reason
        return {slot: results[slot] for slot in actions}

    def expert(self, slots: Iterable[int]) -> dict[int, ExpertStep]:
        """The expert step of each slot; a slot lost to a fault gets :data:`LOST_EXPERT`."""
        slots = list(slots)
        out: dict[int, ExpertStep] = {}
        ops = []
        for slot in slots:
            if slot in self._lost:
                out[slot] = LOST_EXPERT
            else:
                ops.append(("expert", slot, None))
        for slot, reply in self._run(ops).items():
            if reply[0] == "ok":
                out[slot] = reply[1]
            elif reply[0] == "err":
                raise WorkerError(f"expert() of slot {slot} failed in its worker:\n{reply[2]}") from reply[1]
            else:
                self._lost[slot] = reply[1]
                out[slot] = LOST_EXPERT
        return {slot: out[slot] for slot in slots}

    def lost_slots(self) -> dict[int, str]:
        """Slots whose episode was lost to a worker fault (until they are reset), with the reason."""
        return dict(self._lost)

    def close(self) -> None:
        """Stop all workers (politely, then by force after 5 s)."""
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            if worker is None:
                continue
            try:
                worker.conn.send(("close",))
            except (BrokenPipeError, EOFError, OSError):
                pass
        deadline = time.monotonic() + 5.0
        for worker in self._workers:
            if worker is None:
                continue
            worker.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            worker.kill()
        self._workers = [None] * self.n_workers

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - GC timing is not deterministic
        try:
            if not self._closed and os.getpid() == self._owner_pid:
                self.close()
        except Exception:  # noqa: BLE001
            pass

# --------------------------------------------------------------------------------------------------
# the batch-env API and its factory
# --------------------------------------------------------------------------------------------------


class BatchEnv(Protocol):
    """The batch-env API the manager needs (implemented by ``EnvPool``, ``LocalEnvBatch``, :class:`InProcessBatch`)."""

    def reset(self, tasks: Sequence[TaskSpec]) -> list[tuple[str, dict[str, Any]]]: ...

    def step(self, actions: Mapping[int, str]) -> dict[int, StepResult]: ...


class InProcessBatch(LocalEnvBatch):
    """:class:`LocalEnvBatch` that can pre-build ``n`` envs: ``InProcessBatch(factory, n)``.

    Slot ``i`` runs ``tasks[i]``; more tasks than envs grows the batch. An exception raised by an
    env's ``step`` ends that slot's episode truncated with ``truncation_reason="env error: ..."``.
    """

    def __init__(self, factory: Callable[[], TextEnv], n: int = 0) -> None:
        super().__init__(factory)
        self.envs = [factory() for _ in range(n)]


def make_batch(env: str, n_workers: int = 0, timeout_s: float = 120.0, plugins: Sequence[str] = (),
               **env_kwargs: Any) -> BatchEnv:
    """A batch env for registered env ``env``: a worker :class:`EnvPool` when ``n_workers > 0``, otherwise an
    in-process :class:`LocalEnvBatch`. ``plugins``: modules that register ``env`` (imported in every worker)."""
    factory = functools.partial(make_env, env, tuple(plugins), **env_kwargs)
    if n_workers > 0:
        return EnvPool(factory, n_workers=n_workers, timeout_s=timeout_s)
    return LocalEnvBatch(factory)
