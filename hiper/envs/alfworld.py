"""The real ALFWorld text environment (TextWorld PDDL games), with the paper's semantics.

Needs the ``alfworld`` extra (``pip install -e .[alfworld]``: ``alfworld==0.4.2``, ``textworld==1.7.0``
and ``fast-downward-textworld``) and the ALFWorld game files (see :func:`hiper.envs.data.alfworld_json_dir`
for where they are looked for). The game files are loaded directly with TextWorld's PDDL backend
and alfworld's ``AlfredDemangler``/``AlfredInfos`` wrappers; ``traj_data.json`` is not needed.

Semantics (spec §2.7, as in verl-agent's ``AlfredTWEnv``):

* at most ``max_steps = 50`` steps; the 50th step ends the episode, a failure unless won, and by default a
  *terminal* one (``step_limit="terminal"``), as TextWorld's limit wrapper and the official rollout deliver it;
* reward ``reward_scale * won`` (default 10) on the winning step, 0 otherwise; ``done`` when won;
* ``'help'`` is removed from the admissible actions; an inadmissible action gives "Nothing happens."
  and still counts as a step;
* splits ``train`` (3553 games), ``valid_seen`` (140), ``valid_unseen`` (134), ``valid_train`` (200);
  a task is ``TaskSpec("alfworld", split, index)`` where ``index`` points into the split's game files
  sorted by path (a stable order);
* the task type is the game folder's prefix, reported with the short names of the household env
  (``pick_and_place``, ``look_at_obj_in_light``, ``pick_clean_then_place``, ``pick_heat_then_place``,
  ``pick_cool_then_place``, ``pick_two_obj``).

The expert follows the game's stored ``walkthrough`` (a plan from the initial state) while the
agent follows it, and otherwise asks TextWorld's planner (fast-downward, the ``policy_commands`` of
TextWorld) for a new plan from the current state, lazily, only when :meth:`AlfWorldEnv.expert` is
called. (Asking TextWorld for ``policy_commands`` on every step instead costs ~15% of each step, and
the planner's search takes minutes on a few games, e.g. valid_seen ``pick_two_obj_and_place-Knife-
None-Drawer-18``.) :meth:`AlfWorldEnv.expert` returns the plan's next action and a canonical subgoal
derived from the remaining plan by :func:`plan_subgoal`.

One ``AlfWorldEnv`` holds one TextWorld env (with its own copy of fast-downward's library) for its
whole life and reloads game files into it, so memory stays flat over many episodes. Loading a game
takes about 1-2 s and a step about 0.1 s on one core: run many envs in :class:`hiper.envs.pool.EnvPool`
worker processes.
"""

from __future__ import annotations

import functools
import os
import random
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from hiper.envs.base import ALFWORLD_TASK_PREFIXES, TASK_TYPES, ExpertStep, TaskSpec, step_limit_flags
from hiper.envs.data import alfworld_json_dir
from hiper.envs.pool import EnvPool

#: ALFWorld game-folder prefix -> short task-type name (the household env's names).
TASK_TYPE_OF_PREFIX = ALFWORLD_TASK_PREFIXES
#: games per split in the standard ALFWorld release (json_2.1.1, movable/sliced and unsolvable excluded).
SPLIT_SIZES = {"train": 3553, "valid_seen": 140, "valid_unseen": 134, "valid_train": 200}
#: alfworld's own split names -> ours.
SPLIT_ALIASES = {
    "eval_in_distribution": "valid_seen",
    "eval_out_of_distribution": "valid_unseen",
    "seen": "valid_seen",
    "unseen": "valid_unseen",
}
#: receptacles an object goes *in* (subgoal text "put the X in the Y"); all others take "on".
IN_RECEPTACLES = frozenset(
    "cabinet drawer fridge microwave safe sinkbasin bathtubbasin garbagecan laundryhamper box "
    "bowl cup mug pot pan".split()
)
#: what :meth:`AlfWorldEnv.expert` returns once the task is won.
DONE = ExpertStep("the task is complete", "look")
#: returned when the planner finds no plan (never seen on the standard splits; recorded, not raised).
NO_PLAN = ExpertStep("look around", "look")

_TASK_RE = re.compile(r"Your task is to:\s*(.*)", re.S)
_NUMBERED = re.compile(r"\s+\d+$")
_WITH_RE = re.compile(r"^(clean|heat|cool|slice) (.+?) with (.+)$")
_TAKE_RE = re.compile(r"^take (.+?) from (.+)$")
_PUT_RE = re.compile(r"^(?:move (.+?) to (.+)|put (.+?) (?:in/on|in|on) (.+))$")
_NAV_VERBS = ("go to ", "open ", "close ")


def canonical_split(split: str) -> str:
    """Our split name for ``split`` (accepts alfworld's ``eval_in_distribution`` etc.)."""
    name = SPLIT_ALIASES.get(split, split)
    if name not in SPLIT_SIZES:
        raise ValueError(f"unknown ALFWorld split {split!r}; known: {sorted(SPLIT_SIZES)} (or {sorted(SPLIT_ALIASES)})")
    return name


def task_type_of(game_path: str | os.PathLike[str]) -> str:
    """Short task type of a game file from its folder name (``pick_two_obj_and_place-CD-None-Safe-308``)."""
    parts = Path(game_path).parts
    for part in reversed(parts):
        prefix = part.split("-", 1)[0]
        if prefix in TASK_TYPE_OF_PREFIX:
            return TASK_TYPE_OF_PREFIX[prefix]
    raise ValueError(f"cannot tell the ALFWorld task type of {game_path}: no folder starts with one of "
                     f"{sorted(TASK_TYPE_OF_PREFIX)}")


@functools.lru_cache(maxsize=16)
def _game_files(json_dir: str, split: str) -> tuple[str, ...]:
    root = Path(json_dir) / split
    if not root.is_dir():
        raise FileNotFoundError(f"ALFWorld split folder {root} does not exist")
    files = []
    for path in sorted(root.glob("*/*/game.tw-pddl")):
        rel = path.relative_to(root).as_posix()
        # alfworld's own loader skips these (movable-receptacle and sliced-object tasks) ...
        if "movable" in rel or "Sliced" in rel:
            continue
        # ... and games its checker marked unsolvable ('"solvable": false' in the JSON).
        if b'"solvable": false' in path.read_bytes():
            continue
        files.append(str(path))
    if not files:
        raise FileNotFoundError(f"no game.tw-pddl files under {root}/<task>/<trial>/")
    expected = SPLIT_SIZES[split]
    if len(files) != expected:
        warnings.warn(
            f"ALFWorld split {split!r} at {root} has {len(files)} games, the standard release has {expected}",
            stacklevel=3,
        )
    return tuple(files)


def game_files(split: str, data_dir: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """Absolute paths of the split's ``game.tw-pddl`` files, sorted by path (index order of tasks)."""
    return _game_files(str(alfworld_json_dir(data_dir)), canonical_split(split))


# --------------------------------------------------------------------------------------------------
# expert subgoals
# --------------------------------------------------------------------------------------------------


def _kind(name: str) -> str:
    """``"alarmclock 1"`` -> ``"alarmclock"`` (the object or receptacle type, instance number dropped)."""
    return _NUMBERED.sub("", name.strip())


def _is_nav(action: str) -> bool:
    return action.startswith(_NAV_VERBS)


def plan_subgoal(plan: list[str], task_type: str, n_placed: int = 0) -> str:
    """Canonical subgoal of ``plan[0]`` given the remaining expert ``plan`` (a list of commands).

    The plan is cut into stages, each ending at its first non-navigation action (the *key*);
    navigation (``go to``/``open``/``close``) belongs to the stage of the next key:

    ============================== ==================================================================
    next key action                subgoal (nav before it / the key itself)
    ============================== ==================================================================
    ``take X from R``              ``find the X`` / ``take the X``
    ``clean|heat|cool X with R``   ``clean|heat|cool the X`` (both)
    ``move X to R`` (= put)        ``put the X in|on the R`` (both; "in" for containers)
    ``use L`` (look tasks)         ``find the L`` / ``use the L``
    anything else                  the action itself
    ============================== ==================================================================

    For ``pick_two_obj`` tasks, after ``n_placed >= 1`` objects were put, ``the X`` becomes
    ``the second X``. These match the household env's expert subgoals, so SFT data from both envs
    share one vocabulary. Empty plan -> ``"look around"``.
    """
    if not plan:
        return NO_PLAN.subgoal
    key_index = next((i for i, a in enumerate(plan) if not _is_nav(a)), None)
    if key_index is None:  # only navigation left (does not happen with fast-downward plans)
        return plan[0]
    key = plan[key_index]
    at_key = key_index == 0

    def label(obj: str) -> str:
        second = task_type == "pick_two_obj" and n_placed >= 1
        return f"the second {_kind(obj)}" if second else f"the {_kind(obj)}"

    if m := _TAKE_RE.match(key):
        return f"{'take' if at_key else 'find'} {label(m.group(1))}"
    if m := _WITH_RE.match(key):
        return f"{m.group(1)} {label(m.group(2))}"
    if m := _PUT_RE.match(key):
        obj, recep = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        recep_kind = _kind(recep)
        prep = "in" if recep_kind in IN_RECEPTACLES else "on"
        return f"put {label(obj)} {prep} the {recep_kind}"
    if key.startswith("use "):
        return f"{'use' if at_key else 'find'} the {_kind(key[4:])}"
    return key


# --------------------------------------------------------------------------------------------------
# the env
# --------------------------------------------------------------------------------------------------

#: entries of TextWorld's global intern table kept before it is cleared (see _trim_textworld_caches).
MEMENTO_CACHE_MAX = 20_000


def _trim_textworld_caches(max_entries: int | None = None) -> None:
    """Clear TextWorld's global intern table of ``Proposition``/``Signature`` objects when it is large.

    ``textworld.logic`` interns every Proposition and Signature ever built in ``mementos``' module-level
    dict and never evicts, so each newly loaded game adds ~500-900 entries (~1 MB) that are never freed
    (RSS grew by ~0.9 MB per game, unbounded, before this). Both classes compare and hash by value, so dropping the
    table only costs re-creating objects; it is cleared before loading a game once it is this big.
    """
    try:
        from mementos import core as mementos_core
    except ImportError:  # pragma: no cover - textworld always depends on mementos
        return
    cache = getattr(mementos_core, "_memento_cache", None)
    limit = MEMENTO_CACHE_MAX if max_entries is None else max_entries
    if isinstance(cache, dict) and len(cache) > limit:
        cache.clear()


#: translated PDDL problems kept per process (one game's two translations take ~1.4 MB).
SAS_CACHE_SIZE = 8


def _memoize_pddl2sas() -> None:
    """Memoize ``fast_downward.pddl2sas`` (a pure text -> (task, SAS text) translation) in this process.

    TextWorld translates a game's PDDL twice in ``load`` and twice again in every ``reset`` (about
    0.5 s each); the result only depends on the (domain, problem) text and is only read afterwards,
    so caching it makes ``load + reset`` about 40% cheaper and a re-``reset`` of the loaded game
    (grouped rollouts) nearly free. Idempotent.
    """
    import fast_downward

    if getattr(fast_downward.pddl2sas, "_hiper_memo", False):
        return
    translate = fast_downward.pddl2sas

    @functools.lru_cache(maxsize=SAS_CACHE_SIZE)
    def cached(domain: str, problem: str, verbose: bool = False, optimize: bool = False) -> Any:
        return translate(domain, problem, verbose=verbose, optimize=optimize)

    def pddl2sas(domain: str, problem: str, verbose: bool = False, optimize: bool = False) -> Any:
        return cached(domain, problem, bool(verbose), bool(optimize))

    pddl2sas._hiper_memo = True  # type: ignore[attr-defined]
    pddl2sas.cache_info = cached.cache_info  # type: ignore[attr-defined]
    fast_downward.pddl2sas = pddl2sas


class AlfWorldEnv:
    """One ALFWorld game at a time, with the :class:`~hiper.envs.base.TextEnv` contract.

    Args:
        max_steps: step limit per episode (paper: 50); the last step ends the episode.
        step_limit: ``"terminal"`` (default: TextWorld's limit wrapper returns ``done`` at the limit and the
            official rollout stores it, so a failed episode ends terminal) or ``"truncated"`` (a time limit,
            ``truncation_reason = "max_steps"``); see :data:`hiper.envs.base.STEP_LIMITS`.
        reward_scale: reward on the winning step (paper: 10).
        data_dir: folder holding ``json_2.1.1/`` (or ``json_2.1.1`` itself); default: discovery
            (``$ALFWORLD_DATA``, then the unpacked cache of the shared archive).
        expert_plan: whether :meth:`expert` is available (it costs nothing until called: the
            stored walkthrough is followed and the planner only runs after a deviation).
    """

    family = "household"
    env_name = "alfworld"
    #: EnvPool recycles a worker after this many episodes: fast-downward's native code keeps ~1 MB
    #: per loaded game that no Python-side cleanup can free (measured in docs/envs_alfworld.md).
    max_episodes_per_worker = 200

    def __init__(
        self,
        max_steps: int = 50,
        reward_scale: float = 10.0,
        data_dir: str | os.PathLike[str] | None = None,
        expert_plan: bool = True,
        step_limit: str = "terminal",
    ) -> None:
        if int(max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        step_limit_flags(step_limit, False)  # validates the value
        self.step_limit = step_limit
        self.max_steps = int(max_steps)
        self.reward_scale = float(reward_scale)
        self.data_dir = data_dir
        self.expert_plan = bool(expert_plan)
        self.json_dir = alfworld_json_dir(data_dir)
        self._tw: Any = None  # the wrapped TextWorld PddlEnv, built on first reset
        self._loaded: str | None = None  # game file currently loaded in self._tw
        self._state: Any = None
        self.task: TaskSpec | None = None
        self.game_file: str | None = None
        self.task_type = ""
        self.task_text = ""
        self._step = 0
        self._won = False
        self._done = False
        self._n_placed = 0
        self._plan: list[str] | None = None
        #: how many times the planner was asked (after deviations from the walkthrough)
        self.n_replans = 0

    # ------------------------------------------------------------------ task panels
    @classmethod
    def tasks(
        cls,
        split: str,
        n: int | None = None,
        seed: int = 0,
        task_type: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        **_: Any,
    ) -> list[TaskSpec]:
        """The fixed task list of ``split``: all games in index order, or a balanced panel of ``n``.

        With ``n``, tasks are taken round-robin over the task types (in :data:`TASK_TYPES` order),
        each type's games in index order (``seed=0``) or shuffled by ``random.Random(seed)``, so any
        ``n >= 6`` covers every type; the result is sorted by index. ``task_type`` keeps one type only.
        ``seed`` is also stored in each TaskSpec (the games themselves are deterministic).
        """
        name = canonical_split(split)
        files = game_files(name, data_dir)
        if task_type is not None and task_type not in TASK_TYPES:
            raise ValueError(f"unknown task_type {task_type!r}; known: {TASK_TYPES}")
        by_type: dict[str, list[int]] = {t: [] for t in TASK_TYPES}
        for i, f in enumerate(files):
            by_type[task_type_of(f)].append(i)
        types = [task_type] if task_type else list(TASK_TYPES)
        pool_size = sum(len(by_type[t]) for t in types)
        if n is None:
            indices = sorted(i for t in types for i in by_type[t])
        else:
            if not 0 <= n <= pool_size:
                raise ValueError(f"split {name!r} has {pool_size} tasks{' of ' + task_type if task_type else ''}, asked for {n}")
            queues = []
            for t in types:
                q = list(by_type[t])
                if seed:
                    random.Random(f"{seed}-{t}").shuffle(q)
                queues.append(q)
            picked: list[int] = []
            depth = 0
            while len(picked) < n:
                for q in queues:
                    if depth < len(q) and len(picked) < n:
                        picked.append(q[depth])
                depth += 1
            indices = sorted(picked)
        return [TaskSpec(cls.env_name, name, i, seed) for i in indices]

    # ------------------------------------------------------------------ episode
    def _make_textworld_env(self) -> Any:
        _memoize_pddl2sas()
        try:
            import textworld
            from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
            from textworld.envs.pddl.pddl import PddlEnv
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise ImportError(
                "AlfWorldEnv needs the alfworld extra: pip install -e '.[alfworld]' "
                f"(alfworld==0.4.2, textworld==1.7.0, fast-downward-textworld); import failed: {exc}"
            ) from exc
        infos = textworld.EnvInfos(won=True, admissible_commands=True)
        return AlfredInfos(AlfredDemangler(PddlEnv(infos), shuffle=False))

    def reset(self, task: TaskSpec) -> tuple[str, dict[str, Any]]:
        """Load ``task``'s game (skipped when it is already loaded) and start the episode."""
        if not isinstance(task, TaskSpec):
            raise TypeError(f"reset expects a TaskSpec, got {type(task).__name__}")
        if task.env != self.env_name:
            raise ValueError(f"AlfWorldEnv got a task of env {task.env!r}: {task}")
        files = game_files(task.split, self.json_dir)
        if not 0 <= task.index < len(files):
            raise ValueError(f"task index {task.index} out of range for split {task.split!r} (size {len(files)})")
        path = files[task.index]
        if self._tw is None:
            self._tw = self._make_textworld_env()
        if self._loaded != path:
            self._loaded = None
            _trim_textworld_caches()
            self._tw.load(path)
            self._loaded = path
        self._state = self._tw.reset()
        self.task = task
        self.game_file = path
        self.task_type = task_type_of(path)
        obs = str(self._state.feedback)
        m = _TASK_RE.search(obs)
        self.task_text = m.group(1).strip() if m else ""
        self._step = 0
        self._won = False
        self._done = False
        self._n_placed = 0
        walkthrough = getattr(self._pddl_env(), "walkthrough", None)
        self._plan = list(walkthrough) if walkthrough else None  # None: replan on demand
        return obs, self._info()

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Execute ``action``; return ``(obs, reward, done, info)``."""
        if self._state is None:
            raise RuntimeError("call reset(task) before step()")
        if self._done:
            raise RuntimeError(f"episode {self.task} is over (won={self._won}, step={self._step}); call reset(task)")
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        self._state, _, _ = self._tw.step(action)
        obs = str(self._state.feedback)
        if self._plan and action.strip() == self._plan[0] and obs != "Nothing happens.":
            self._plan.pop(0)  # still on the expert's plan
        else:
            self._plan = None  # off plan (or plan used up): the planner is asked at the next expert()
        self._step += 1
        if obs.startswith("You move") or obs.startswith("You put"):
            self._n_placed += 1
        self._won = bool(self._state["won"])
        limit = not self._won and self._step >= self.max_steps
        self._done = self._won or limit
        reward = self.reward_scale if self._won else 0.0
        return obs, reward, self._done, self._info(*step_limit_flags(self.step_limit, limit))

    def _info(self, truncated: bool = False, reason: str | None = None) -> dict[str, Any]:
        admissible = [a for a in self._state["admissible_commands"] if a != "help"]
        return {
            "admissible": admissible,
            "task": self.task_text,
            "task_type": self.task_type,
            "won": self._won,
            "score": 1.0 if self._won else 0.0,
            "truncated": truncated,
            "truncation_reason": reason,
            "step": self._step,
            "gamefile": self.game_file,
        }

    def _pddl_env(self) -> Any:
        inner = self._tw
        while inner is not None and not hasattr(inner, "_pddl_state"):
            inner = getattr(inner, "_wrapped_env", None)
        return inner

    def expert_plan_commands(self) -> list[str]:
        """The expert's remaining plan from the current state (the walkthrough's rest, or a new plan).

        A new plan is what TextWorld's ``policy_commands`` would be: ``PddlState.replan`` with the
        game's (demangled) entity names.
        """
        if self._state is None:
            raise RuntimeError("call reset(task) before expert()")
        if not self.expert_plan:
            raise RuntimeError("this AlfWorldEnv was built with expert_plan=False; no expert available")
        if not self._plan:
            pddl = self._pddl_env()
            self._plan = list(pddl._pddl_state.replan(pddl._entity_infos) or [])
            self.n_replans += 1
        return list(self._plan)

    def expert(self) -> ExpertStep:
        """The planner's next action and its canonical subgoal (:func:`plan_subgoal`)."""
        if self._won:
            return DONE
        plan = self.expert_plan_commands()
        if not plan:
            return NO_PLAN
        return ExpertStep(plan_subgoal(plan, self.task_type, self._n_placed), plan[0])

    @property
    def done(self) -> bool:
        return self._done

    def close(self) -> None:
        """Drop the TextWorld env.

        Its fast-downward library copy is deliberately *not* ``dlclose``d (``fast_downward.close_lib``):
        the library leaves exit handlers behind and the process then segfaults at exit.
        """
        self._tw, self._state, self._loaded = None, None, None


def per_type_counts(split: str, data_dir: str | os.PathLike[str] | None = None) -> dict[str, int]:
    """Number of games of each task type in ``split``."""
    counts = Counter(task_type_of(f) for f in game_files(split, data_dir))
    return {t: counts.get(t, 0) for t in TASK_TYPES}


# --------------------------------------------------------------------------------------------------
# expert replay (env fidelity check)
# --------------------------------------------------------------------------------------------------


def replay_expert(
    split: str,
    n_workers: int = 2,
    n: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    max_steps: int = 50,
    wave: int = 16,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Play the planner expert on ``split`` (all games, or the balanced panel of ``n``) in an EnvPool.

    Every game should be won (the expert is the fast-downward planner); anything less is an env
    fidelity bug. Returns ``{"split", "n_games", "won", "success", "mean_steps", "seconds",
    "n_workers", "per_type": {type: {"n", "won", "success"}}, "failures": [{"index", "game",
    "reason"}]}``.
    """
    import time

    data_dir = alfworld_json_dir(data_dir)  # resolve (and unpack) once, here, not in every worker
    task_list = AlfWorldEnv.tasks(split, n=n, data_dir=data_dir)
    files = game_files(split, data_dir)
    factory = functools.partial(AlfWorldEnv, max_steps=max_steps, data_dir=data_dir)
    per_type = {t: {"n": 0, "won": 0} for t in TASK_TYPES}
    failures: list[dict[str, Any]] = []
    steps_total = 0
    t0 = time.perf_counter()
    with EnvPool(factory, n_workers=n_workers, timeout_s=timeout_s) as pool:
        faults = pool.faults  # worker crashes/timeouts (recovered); reported, not hidden
        for start in range(0, len(task_list), wave):
            chunk = task_list[start : start + wave]
            first = pool.reset(chunk)
            last_info = {slot: info for slot, (_, info) in enumerate(first)}
            active = {slot for slot, (_, info) in enumerate(first) if not info["truncated"]}
            while active:
                plans = pool.expert(sorted(active))
                for slot, res in pool.step({s: plans[s].action for s in sorted(active)}).items():
                    last_info[slot] = res.info
                    if res.done:
                        active.discard(slot)
            for slot, task in enumerate(chunk):
                info = last_info[slot]
                kind = task_type_of(files[task.index])
                per_type[kind]["n"] += 1
                steps_total += int(info.get("step", 0))
                if info.get("won"):
                    per_type[kind]["won"] += 1
                else:
                    failures.append(
                        {"index": task.index, "game": files[task.index], "reason": info.get("truncation_reason")}
                    )
    n_games = len(task_list)
    won = sum(v["won"] for v in per_type.values())
    return {
        "split": canonical_split(split),
        "n_games": n_games,
        "won": won,
        "success": won / n_games if n_games else 0.0,
        "mean_steps": steps_total / n_games if n_games else 0.0,
        "seconds": round(time.perf_counter() - t0, 1),
        "n_workers": n_workers,
        "per_type": {t: {**v, "success": v["won"] / v["n"] if v["n"] else None} for t, v in per_type.items()},
        "failures": failures,
        "worker_faults": [reason for _, _, reason in faults],
    }


def format_replay_table(result: dict[str, Any]) -> str:
    """A markdown table of :func:`replay_expert`'s result (one row per task type, then All)."""
    rows = ["| task type | games | won | success |", "|---|---:|---:|---:|"]
    for t, v in result["per_type"].items():
        if v["n"]:
            rows.append(f"| {t} | {v['n']} | {v['won']} | {100 * v['success']:.1f}% |")
    rows.append(f"| **all** | {result['n_games']} | {result['won']} | {100 * result['success']:.1f}% |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m hiper.envs.alfworld [--split S ...] [--workers N] [--n K]``: expert replay tables."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m hiper.envs.alfworld", description="replay the ALFWorld expert")
    p.add_argument("--split", nargs="+", default=["valid_unseen", "valid_seen"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--n", type=int, default=None, help="balanced panel of n games (default: all)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    ok = True
    for split in args.split:
        res = replay_expert(split, n_workers=args.workers, n=args.n, data_dir=args.data_dir)
        print(f"## {res['split']}: {res['won']}/{res['n_games']} won, mean {res['mean_steps']:.2f} steps, "
              f"{res['seconds']} s with {res['n_workers']} workers\n")
        print(format_replay_table(res) + "\n")
        print(json.dumps({k: v for k, v in res.items() if k != "per_type"}))
        ok = ok and res["won"] == res["n_games"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
