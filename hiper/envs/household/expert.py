"""Handcoded expert of the household world: a canonical subgoal and the next action.

The expert knows the task and *what the agent has seen* (``World.r_known``: receptacles whose
contents were observed; since only the agent moves objects, what it saw stays true), not where
unseen objects are. Like ALFWorld's handcoded expert it explores: to find an object it first
goes to seen receptacles holding one, otherwise it visits unseen receptacles of the types that
object can be in (fixed receptacles before openable ones, then listing order), opening closed
ones. It never fails: the object is always somewhere unseen or known.

Subgoals are canonical strings that stay the same across all actions serving them and change
only when a stage completes, so expert trajectories have SWITCH exactly at stage boundaries:

- ``find the X`` (go to / open until an X is visible here), ``take the X`` (one action),
- ``clean|heat|cool the X`` (go to the appliance, apply it),
- ``put the X in|on the Y`` (go to Y, open it if closed, put),
- ``find the desklamp`` / ``use the desklamp`` (look tasks),
- ``put down the X`` (only when started from a state where the agent holds an unneeded object),
- for the second object of ``pick_two_obj``: ``find the second X``, ``take the second X``,
  ``put the second X in the Y``.
"""

from __future__ import annotations

from hiper.envs.base import ExpertStep
from hiper.envs.household.vocab import APPLIANCE_FOR, LAMP_HOSTS, RECEPTACLES, ROOMS, VERB_RECEPTACLES
from hiper.envs.household.world import World

DONE = ExpertStep("the task is complete", "look")


def _explore(w: World, subgoal: str, plausible_types: tuple[str, ...], known_here: list[int]) -> ExpertStep:
    """Step toward the best receptacle in ``known_here`` (seen to hold the thing) or else an unseen one."""
    here = w.agent
    if known_here:
        # prefer a receptacle we need not open, then listing order
        r = min(known_here, key=lambda r: (not w.visible(r), r))
        if r == here:
            return ExpertStep(subgoal, w.s_open[r])  # seen earlier, closed since
        return ExpertStep(subgoal, w.s_goto[r])
    unseen = [r for r in range(len(w.r_name)) if not w.r_known[r]]
    if not unseen:
        raise RuntimeError(f"expert: nothing left to explore for {subgoal!r}; the world is inconsistent")
    likely = [r for r in unseen if w.r_type[r] in plausible_types] or unseen
    if here in likely:  # arrived at a closed unseen receptacle worth searching
        return ExpertStep(subgoal, w.s_open[here])
    r = min(likely, key=lambda r: (w.r_openable[r], r))
    return ExpertStep(subgoal, w.s_goto[r])


def _go_and_put(w: World, subgoal: str, r: int) -> ExpertStep:
    if w.agent != r:
        return ExpertStep(subgoal, w.s_goto[r])
    if not w.visible(r):
        return ExpertStep(subgoal, w.s_open[r])
    return ExpertStep(subgoal, f"put {w.o_name[w.held]} in/on {w.r_name[r]}")


def _put_down(w: World) -> ExpertStep:
    """Holding something the task does not need: put it where we stand (or on the first fixed receptacle)."""
    subgoal = f"put down the {w.o_type[w.held]}"
    here = w.agent
    if here >= 0:
        return _go_and_put(w, subgoal, here)
    fixed = [r for r in range(len(w.r_name)) if not w.r_openable[r]]
    return _go_and_put(w, subgoal, fixed[0] if fixed else 0)


def _find_take(w: World, obj_type: str, label: str, candidates: list[int]) -> ExpertStep:
    here = w.agent
    if here >= 0 and w.visible(here):
        for o in w.r_contents[here]:
            if o in candidates:
                return ExpertStep(f"take {label}", f"take {w.o_name[o]} from {w.r_name[here]}")
    known = sorted({w.o_loc[o] for o in candidates if w.o_loc[o] >= 0 and w.r_known[w.o_loc[o]]})
    plausible = ROOMS[w.room]["objects"].get(obj_type, ())  # type: ignore[union-attr,attr-defined]
    return _explore(w, f"find {label}", plausible, known)


def _part_step(w: World, i: int) -> ExpertStep:
    part = w.goal.parts[i]
    x = part.obj_type
    n_done, target = w.part_progress(i)
    label = f"the second {x}" if part.count == 2 and n_done >= 1 else f"the {x}"
    if w.held >= 0:  # holding an object of this part's type
        if part.verb and not w.o_flags[w.held] & part.flag:
            subgoal = f"{part.verb} {label}"
            here = w.agent
            if here >= 0 and w.r_type[here] in VERB_RECEPTACLES[part.verb]:
                return ExpertStep(subgoal, f"{part.verb} {w.o_name[w.held]} with {w.r_name[here]}")
            app = [r for r, t in enumerate(w.r_type) if t == APPLIANCE_FOR[part.verb]]
            app = app or [r for r, t in enumerate(w.r_type) if t in VERB_RECEPTACLES[part.verb]]
            return ExpertStep(subgoal, w.s_goto[app[0]])
        prep = RECEPTACLES[part.recep_type].preposition
        return _go_and_put(w, f"put {label} {prep} the {part.recep_type}", target)
    candidates = [
        o
        for o, t in enumerate(w.o_type)
        if t == x and w.o_loc[o] >= 0 and not (w.o_loc[o] == target and w.satisfies(i, o))
    ]
    return _find_take(w, x, label, candidates)


def _look_step(w: World) -> ExpertStep:
    g = w.goal
    x, lamp = g.look_obj, g.lamp_type
    if w.held >= 0 and w.o_type[w.held] != x:
        return _put_down(w)
    if w.held < 0:
        return _find_take(w, x, f"the {x}", [o for o, t in enumerate(w.o_type) if t == x and w.o_loc[o] >= 0])  # type: ignore[arg-type]
    here = w.agent
    lamps_here = [o for o in w.lamp_ids if w.o_loc[o] == here] if here >= 0 else []
    if lamps_here:
        return ExpertStep(f"use the {lamp}", f"use {w.o_name[lamps_here[0]]}")
    known = sorted({w.o_loc[o] for o in w.lamp_ids if w.r_known[w.o_loc[o]]})
    return _explore(w, f"find the {lamp}", LAMP_HOSTS[lamp], known)  # type: ignore[index]


def expert_step(w: World) -> ExpertStep:
    """The expert's (subgoal, action) in the current state of ``w``; ``DONE`` if already won."""
    if w.won():
        return DONE
    g = w.goal
    if g.look_obj is not None:
        return _look_step(w)
    unsat = [i for i, p in enumerate(g.parts) if w.part_progress(i)[0] < p.count]
    if w.held >= 0:
        held_type = w.o_type[w.held]
        mine = [i for i in unsat if g.parts[i].obj_type == held_type]
        return _part_step(w, mine[0]) if mine else _put_down(w)
    return _part_step(w, unsat[0])
