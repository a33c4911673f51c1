"""World generation and simulation of the embedded household world.

A :class:`World` is one episode's mutable state: receptacles (some openable), objects in/on
them, the agent's location and the object it holds (at most one, as in ALFWorld), and what the
agent has seen. :func:`generate` builds a world deterministically from ``(config, split, index,
seed)``. :meth:`World.actions` returns the admissible actions of the current state as a dict
``action text -> operation`` and :meth:`World.apply` executes one operation and returns the
feedback text. Everything is plain Python lists and ints so that one step costs microseconds.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

from hiper.envs.household.config import BASE_TASK_TYPES, CHAIN, HouseholdConfig
from hiper.envs.household.vocab import (
    ADJECTIVE,
    APPLIANCE_FOR,
    CAN,
    LAMP_HOSTS,
    LAMPS,
    RECEPTACLES,
    ROOMS,
    ROOMS_FOR_TASK,
    VERB_RECEPTACLES,
    indefinite,
    join_list,
)

WELCOME = "-= Welcome to TextWorld, ALFRED! =-"
NOTHING_HAPPENS = "Nothing happens."

#: object property bits set by clean / heat / cool.
FLAG = {"clean": 1, "heat": 2, "cool": 4}

# operation codes of admissible actions: (code, a, b)
GOTO, OPEN, CLOSE, TAKE, PUT, CLEAN, HEAT, COOL, USE, EXAMINE_R, EXAMINE_O, INVENTORY, LOOK = range(13)
_VERB_OP = {"clean": CLEAN, "heat": HEAT, "cool": COOL}
_OP_VERB = {CLEAN: "clean", HEAT: "heat", COOL: "cool"}


@dataclass(frozen=True)
class GoalPart:
    """``count`` objects of ``obj_type`` (each ``verb``-ed if ``verb``) in one ``recep_type`` receptacle."""

    obj_type: str
    verb: str | None  # "clean" | "heat" | "cool" | None
    recep_type: str
    count: int = 1

    @property
    def flag(self) -> int:
        return FLAG[self.verb] if self.verb else 0


@dataclass(frozen=True)
class Goal:
    """What must hold for the task to be won. ``look_obj``/``lamp_type`` only for look tasks."""

    task_type: str
    text: str  # "put a clean apple in fridge." (after "Your task is to: ")
    parts: tuple[GoalPart, ...] = ()
    look_obj: str | None = None
    lamp_type: str | None = None


def _part_text(part: GoalPart, variant: int) -> str:
    prep = RECEPTACLES[part.recep_type].preposition
    o, r = part.obj_type, part.recep_type
    if part.count == 2:
        return (f"put two {o} {prep} {r}", f"find two {o} and put them {prep} {r}")[variant]
    if part.verb is None:
        return (f"put a {o} {prep} {r}", f"put some {o} {prep} {r}")[variant]
    adj = ADJECTIVE[part.verb]
    return (f"put a {adj} {o} {prep} {r}", f"{part.verb} some {o} and put it {prep} {r}")[variant]


class World:
    """Mutable state of one episode. Indices: receptacles ``r`` and objects ``o``; ``-1`` = none."""

    __slots__ = (
        "room",
        "goal",
        "r_name",
        "r_type",
        "r_openable",
        "r_open",
        "r_contents",
        "r_known",
        "o_name",
        "o_type",
        "o_loc",
        "o_flags",
        "o_lamp",
        "o_on",
        "agent",
        "held",
        "s_goto",
        "s_open",
        "s_close",
        "s_examine",
        "part_targets",
        "lamp_ids",
        "_ops",
        "_won",
    )

    def __init__(
        self, room: str, goal: Goal, receptacles: list[tuple[str, int]], objects: list[tuple[str, int, int]]
    ):
        """``receptacles``: (type, number) in listing order; ``objects``: (type, number, receptacle index)."""
        self.room = room
        self.goal = goal
        self.r_type = [t for t, _ in receptacles]
        self.r_name = [f"{t} {i}" for t, i in receptacles]
        self.r_openable = [RECEPTACLES[t].openable for t in self.r_type]
        self.r_open = [False] * len(receptacles)
        self.r_contents: list[list[int]] = [[] for _ in receptacles]
        self.r_known = [False] * len(receptacles)
        self.o_type = [t for t, _, _ in objects]
        self.o_name = [f"{t} {i}" for t, i, _ in objects]
        self.o_loc = [r for _, _, r in objects]
        self.o_flags = [0] * len(objects)
        self.o_lamp = [t in LAMPS for t in self.o_type]
        self.o_on = [False] * len(objects)
        for o, r in enumerate(self.o_loc):
            self.r_contents[r].append(o)
        self.agent = -1
        self.held = -1
        self.s_goto = [f"go to {n}" for n in self.r_name]
        self.s_open = [f"open {n}" for n in self.r_name]
        self.s_close = [f"close {n}" for n in self.r_name]
        self.s_examine = [f"examine {n}" for n in self.r_name]
        self.part_targets = [[r for r, t in enumerate(self.r_type) if t == p.recep_type] for p in goal.parts]
        self.lamp_ids = [o for o, t in enumerate(self.o_type) if t == goal.lamp_type]
        self._ops: dict[str, tuple[int, int, int]] | None = None
        self._won = False

    # ------------------------------------------------------------------ observation text
    def visible(self, r: int) -> bool:
        """Contents of receptacle ``r`` can be seen and reached (not a closed openable)."""
        return self.r_open[r] or not self.r_openable[r]

    def describe(self, r: int) -> str:
        items = join_list([indefinite(self.o_name[o]) for o in self.r_contents[r]])
        if self.r_openable[r]:
            if self.r_open[r]:
                return f"The {self.r_name[r]} is open. In it, you see {items}."
            return f"The {self.r_name[r]} is closed."
        return f"On the {self.r_name[r]}, you see {items}."

    def look_text(self) -> str:
        if self.agent < 0:
            return (
                "You are in the middle of a room. Looking quickly around you, you see "
                f"{join_list([indefinite(n) for n in self.r_name])}."
            )
        return f"You are facing the {self.r_name[self.agent]}. Next to it, you see nothing."

    def intro(self) -> str:
        return f"{WELCOME}\n\n{self.look_text()}\n\nYour task is to: {self.goal.text}"

    def _examine_object(self, o: int) -> str:
        f, n = self.o_flags[o], self.o_name[o]
        if f & 1 and f & 2:
            return f"This is a hot and clean {n}."
        if f & 1 and f & 4:
            return f"This is a cool and clean {n}."
        if f & 2:
            return f"This is a hot {n}."
        if f & 1:
            return f"This is a clean {n}."
        if f & 4:
            return f"This is a cold {n}."
        return f"There's nothing special about {n}."

    # ------------------------------------------------------------------ actions
    def actions(self) -> dict[str, tuple[int, int, int]]:
        """Admissible actions of the current state: ``text -> (op, a, b)`` (cached until the next change)."""
        if self._ops is not None:
            return self._ops
        ops: dict[str, tuple[int, int, int]] = {}
        here, held = self.agent, self.held
        for r, s in enumerate(self.s_goto):
            if r != here:
                ops[s] = (GOTO, r, 0)
        if here >= 0:
            rtype = self.r_type[here]
            if self.r_openable[here]:
                if self.r_open[here]:
                    ops[self.s_close[here]] = (CLOSE, here, 0)
                else:
                    ops[self.s_open[here]] = (OPEN, here, 0)
            if self.visible(here):
                rname = self.r_name[here]
                if held < 0:
                    for o in self.r_contents[here]:
                        if not self.o_lamp[o]:
                            ops[f"take {self.o_name[o]} from {rname}"] = (TAKE, o, here)
                else:
                    ops[f"put {self.o_name[held]} in/on {rname}"] = (PUT, held, here)
                for o in self.r_contents[here]:
                    if self.o_lamp[o]:
                        ops[f"use {self.o_name[o]}"] = (USE, o, 0)
            if held >= 0:
                for verb, types in VERB_RECEPTACLES.items():
                    if rtype in types and self.o_type[held] in CAN[verb]:
                        ops[f"{verb} {self.o_name[held]} with {self.r_name[here]}"] = (
                            _VERB_OP[verb],
                            held,
                            here,
                        )
            ops[self.s_examine[here]] = (EXAMINE_R, here, 0)
        if held >= 0:
            ops[f"examine {self.o_name[held]}"] = (EXAMINE_O, held, 0)
        ops["inventory"] = (INVENTORY, 0, 0)
        ops["look"] = (LOOK, 0, 0)
        self._ops = ops
        return ops

    def apply(self, op: tuple[int, int, int]) -> str:
        """Execute one admissible operation; return its feedback text."""
        code, a, b = op
        if code == GOTO:
            self.agent = a
            self._ops = None
            if self.visible(a):
                self.r_known[a] = True
            return f"You arrive at {self.r_name[a]}. {self.describe(a)}"
        if code == OPEN:
            self.r_open[a] = True
            self.r_known[a] = True
            self._ops = None
            return f"You open the {self.r_name[a]}. {self.describe(a)}"
        if code == CLOSE:
            self.r_open[a] = False
            self._ops = None
            return f"You close the {self.r_name[a]}."
        if code == TAKE:
            self.r_contents[b].remove(a)
            self.o_loc[a] = -1
            self.held = a
            self._ops = None
            return f"You pick up the {self.o_name[a]} from the {self.r_name[b]}."
        if code == PUT:
            self.r_contents[b].append(a)
            self.o_loc[a] = b
            self.held = -1
            self._ops = None
            return f"You put the {self.o_name[a]} in/on the {self.r_name[b]}."
        if code in _OP_VERB:
            verb = _OP_VERB[code]
            self.o_flags[a] |= FLAG[verb]
            return f"You {verb} the {self.o_name[a]} using the {self.r_name[b]}."
        if code == USE:
            self.o_on[a] = not self.o_on[a]
            return f"You turn {'on' if self.o_on[a] else 'off'} the {self.o_name[a]}."
        if code == EXAMINE_R:
            if self.visible(a):
                self.r_known[a] = True
            return self.describe(a)
        if code == EXAMINE_O:
            return self._examine_object(a)
        if code == INVENTORY:
            if self.held < 0:
                return "You are not carrying anything."
            return f"You are carrying: {indefinite(self.o_name[self.held])}."
        if code == LOOK:
            return self.look_text()
        raise ValueError(f"unknown operation {op!r}")

    # ------------------------------------------------------------------ goal
    def part_progress(self, i: int) -> tuple[int, int]:
        """(objects satisfying part ``i`` in its best receptacle, that receptacle) -- best = most, then open, then first."""
        part = self.goal.parts[i]
        best, best_r, best_key = 0, -1, None
        for r in self.part_targets[i]:
            n = 0
            for o in self.r_contents[r]:
                if self.o_type[o] == part.obj_type and (self.o_flags[o] & part.flag) == part.flag:
                    n += 1
            key = (-n, not self.visible(r), r)
            if best_key is None or key < best_key:
                best, best_r, best_key = n, r, key
        return best, best_r

    def satisfies(self, i: int, o: int) -> bool:
        part = self.goal.parts[i]
        return self.o_type[o] == part.obj_type and (self.o_flags[o] & part.flag) == part.flag

    def lamp_lit_here(self) -> bool:
        here = self.agent
        return here >= 0 and any(self.o_on[o] and self.o_loc[o] == here for o in self.lamp_ids)

    def won(self) -> bool:
        g = self.goal
        if g.look_obj is not None:
            return self.held >= 0 and self.o_type[self.held] == g.look_obj and self.lamp_lit_here()
        return all(self.part_progress(i)[0] >= p.count for i, p in enumerate(g.parts))


# ---------------------------------------------------------------------- generation
def _heldout(key: str, every: int) -> bool:
    return every > 0 and zlib.crc32(key.encode()) % every == 0


def _choose(rng: random.Random, combos: list, keys: list[str], split: str, every: int):
    """Pick a combination, honouring the seen/unseen hold-out (falls back to all if none qualifies)."""
    want_heldout = split == "valid_unseen"
    ok = [c for c, k in zip(combos, keys) if _heldout(k, every) == want_heldout]
    return rng.choice(ok or combos)


def _pick_part(
    rng: random.Random, room: str, verb: str | None, count: int, used: set[str], split: str, every: int
):
    spec = ROOMS[room]
    objs: dict[str, tuple[str, ...]] = spec["objects"]  # type: ignore[assignment]
    rtypes: tuple[str, ...] = spec["receptacles"]  # type: ignore[assignment]
    combos, keys = [], []
    for o, allowed in objs.items():
        if o in used or (verb is not None and o not in CAN[verb]):
            continue
        for t in allowed:
            if t not in rtypes or (verb is not None and t in VERB_RECEPTACLES[verb]):
                continue
            if not any(s != t and s in rtypes for s in allowed):
                continue  # the object needs somewhere else to start
            combos.append((o, t))
            keys.append(f"{verb or ('two' if count == 2 else 'pick')}|{o}|{t}")
    if not combos:
        return None
    o, t = _choose(rng, combos, keys, split, every)
    return GoalPart(o, verb, t, count)


def _make_goal(rng: random.Random, cfg: HouseholdConfig, task_type: str, room: str, split: str) -> Goal:
    every = cfg.heldout_every
    variant = rng.randrange(2)
    if task_type == "look_at_obj_in_light":
        spec = ROOMS[room]
        rtypes = spec["receptacles"]
        combos, keys = [], []
        for lamp in LAMPS:
            if not any(h in rtypes for h in LAMP_HOSTS[lamp]):  # type: ignore[operator]
                continue
            for o in spec["objects"]:  # type: ignore[union-attr,attr-defined]
                combos.append((o, lamp))
                keys.append(f"look|{o}|{lamp}")
        o, lamp = _choose(rng, combos, keys, split, every)
        text = (f"look at {o} under the {lamp}.", f"examine the {o} with the {lamp}.")[variant]
        return Goal(task_type, text, (), o, lamp)
    if task_type == CHAIN:
        parts: list[GoalPart] = []
        used: set[str] = set()
        for _ in range(cfg.chain_length):
            part = None
            while part is None:  # some verbs may run out of fresh object types; retry with another verb
                part = _pick_part(
                    rng, room, rng.choice((None, "clean", "heat", "cool")), 1, used, split, every
                )
            used.add(part.obj_type)
            parts.append(part)
        text = ", then ".join(_part_text(p, rng.randrange(2)) for p in parts) + "."
        return Goal(task_type, text, tuple(parts))
    verb = {
        "pick_clean_then_place": "clean",
        "pick_heat_then_place": "heat",
        "pick_cool_then_place": "cool",
    }.get(task_type)
    count = 2 if task_type == "pick_two_obj" else 1
    part = _pick_part(rng, room, verb, count, set(), split, every)
    assert part is not None, (task_type, room)
    return Goal(task_type, _part_text(part, variant) + ".", (part,))


def generate(cfg: HouseholdConfig, split: str, index: int, seed: int) -> World:
    """Build the world of task ``(split, index, seed)`` under ``cfg`` (pure function of its inputs)."""
    # str seeds hash with sha512 inside random: stable across processes and PYTHONHASHSEED.
    rng = random.Random(f"household|{split}|{index}|{seed}")
    task_type = cfg.task_types[index % len(cfg.task_types)]
    if task_type not in BASE_TASK_TYPES and task_type != CHAIN:
        raise ValueError(f"unknown task type {task_type!r}")
    room = rng.choice(ROOMS_FOR_TASK[task_type])
    spec = ROOMS[room]
    rtypes: tuple[str, ...] = spec["receptacles"]  # type: ignore[assignment]
    objs: dict[str, tuple[str, ...]] = spec["objects"]  # type: ignore[assignment]
    goal = _make_goal(rng, cfg, task_type, room, split)

    # ---- receptacles: the ones the task needs, then fillers
    counts: dict[str, int] = {}
    sources: dict[str, tuple[str, ...]] = {}  # goal object type -> receptacle types it may start in

    def need(t: str) -> None:
        counts[t] = max(counts.get(t, 0), 1)

    for p in goal.parts:
        need(p.recep_type)
        if p.verb:
            need(APPLIANCE_FOR[p.verb])
        sources[p.obj_type] = tuple(s for s in objs[p.obj_type] if s in rtypes and s != p.recep_type)
    host = None
    if goal.look_obj is not None:
        sources[goal.look_obj] = tuple(s for s in objs[goal.look_obj] if s in rtypes)
        host = rng.choice([h for h in LAMP_HOSTS[goal.lamp_type] if h in rtypes])  # type: ignore[index]
        need(host)
    for srcs in sources.values():
        if not any(s in counts for s in srcs):
            need(rng.choice(srcs))
    n_target = max(rng.randint(*cfg.n_receptacles), sum(counts.values()))
    openable = [t for t in rtypes if RECEPTACLES[t].openable]
    fixed = [t for t in rtypes if not RECEPTACLES[t].openable]
    while sum(counts.values()) < n_target:
        first, second = (openable, fixed) if rng.random() < cfg.openable_fraction else (fixed, openable)
        pool = [t for t in first if counts.get(t, 0) < RECEPTACLES[t].max_count]
        pool = pool or [t for t in second if counts.get(t, 0) < RECEPTACLES[t].max_count]
        if not pool:
            break
        t = rng.choice(pool)
        counts[t] = counts.get(t, 0) + 1
    receptacles = [(t, i) for t in sorted(counts) for i in range(1, counts[t] + 1)]
    by_type: dict[str, list[int]] = {}
    for r, (t, _) in enumerate(receptacles):
        by_type.setdefault(t, []).append(r)

    # ---- objects: goal objects, the lamp, distractors
    cap = cfg.max_objects_per_receptacle
    load = [0] * len(receptacles)
    placements: list[tuple[str, int]] = []

    def place(obj_type: str, allowed: tuple[str, ...], force: bool) -> None:
        cands = [r for t in allowed for r in by_type.get(t, ())]
        roomy = [r for r in cands if load[r] < cap]
        if not roomy and not (force and cands):
            return
        r = rng.choice(roomy or cands)
        load[r] += 1
        placements.append((obj_type, r))

    for p in goal.parts:
        extra = 1 if rng.random() < cfg.extra_goal_object_prob else 0
        for _ in range(p.count + extra):
            place(p.obj_type, sources[p.obj_type], force=True)
    if goal.look_obj is not None:
        place(goal.look_obj, sources[goal.look_obj], force=True)
        lamp_r = rng.choice(by_type[host])  # type: ignore[index]
        load[lamp_r] += 1
        placements.append((goal.lamp_type, lamp_r))  # type: ignore[arg-type]
    goal_types = {p.obj_type for p in goal.parts} | {goal.look_obj}
    pool_types = [t for t in objs if t not in goal_types]
    for _ in range(rng.randint(*cfg.n_distractors)):
        t = rng.choice(pool_types)
        place(t, objs[t], force=False)

    # number instances in a shuffled order so "apple 1" is not always the goal object
    rng.shuffle(placements)
    numbers: dict[str, int] = {}
    objects = []
    for t, r in placements:
        numbers[t] = numbers.get(t, 0) + 1
        objects.append((t, numbers[t], r))
    return World(room, goal, receptacles, objects)
