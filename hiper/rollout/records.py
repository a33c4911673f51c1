"""The pipeline's data contract: one :class:`TurnRecord` per env turn, one :class:`Trajectory` per episode, and the
:class:`TurnRequest` a policy answers. Written by :class:`hiper.rollout.manager.EnvManager`, read by the turn batch
(:mod:`hiper.batch`), evaluation, the viewer and the verl agent loop.

The switch decision has one name from parser to loss: ``switch`` is the boundary flag q_t (a new segment starts at
this turn: the parser's ``ParsedResponse.switch_flag``); ``decision`` is what the model wrote (KEEP / SWITCH /
INVALID).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hiper.envs.base import TaskSpec
from hiper.protocol.grammar import ParsedResponse, Switch


def is_admissible(action: str, admissible: Sequence[str]) -> bool:
    """``action`` is in ``admissible`` or fills one of its templates (``verb[<placeholder>]`` admits ``verb[...]``)."""
    if action in admissible:
        return True
    for entry in admissible:
        head, sep, rest = entry.partition("[<")
        if sep and rest.endswith(">]") and action.startswith(head + "[") and action.endswith("]"):
            return len(action) > len(head) + 2
    return False


@dataclass
class TurnRecord:
    """One turn of one env: the prompt the policy saw, what it answered, and what the env did.

    ``observation`` is the env text the prompt was rendered from (the state *before* the action; its
    exact text is the GiGPO state key, see :attr:`state_key`). ``current_subgoal`` is the subgoal in
    force before the turn (``None`` at turn 0) and ``subgoal`` the one after KEEP semantics.
    ``reward``/``done``/``won``/``score``/``truncated`` describe the transition caused by ``action``.
    ``extras`` holds whatever the policy attached (engine ``prompt_ids``, ``response_ids``,
    ``logprobs`` ...); the trainer may add more. ``history_dropped``: how many of the oldest history pairs the
    manager left out of ``prompt`` so that it fits the prompt budget (``rollout.max_prompt_length``).
    """

    task: TaskSpec
    turn: int
    prompt: str
    observation: str
    admissible: list[str]
    response: str
    parsed: ParsedResponse
    current_subgoal: str | None
    subgoal: str | None
    keep_inconsistent: bool
    action: str
    next_observation: str
    reward: float
    done: bool
    truncated: bool
    truncation_reason: str | None
    valid: bool
    won: bool
    score: float
    task_type: str
    slot: int = -1
    group: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    history_dropped: int = 0

    @property
    def decision(self) -> Switch:
        """What the model wrote in ``<switch>``: KEEP, SWITCH or INVALID (``ParsedResponse.decision``)."""
        return self.parsed.decision

    @property
    def switch(self) -> bool:
        """The switch flag q_t: a new segment starts at this turn (SWITCH with a subgoal; spec §2.5 b).

        The same flag, under the same name, reaches the loss: ``TurnBatch.switch`` -> ``AdvantageInputs.switch``.
        """
        return self.parsed.switch

    @property
    def admissible_action(self) -> bool:
        """Whether the executed action matches the admissible list (well-formed != admissible).

        A template entry such as WebShop's ``search[<your query>]`` admits any ``search[...]``.
        """
        return is_admissible(self.action, self.admissible)

    @property
    def state_key(self) -> str:
        """GiGPO anchor-state id: the exact observation text the prompt was rendered from."""
        return self.observation


@dataclass
class Trajectory:
    """All turns of one episode of one env, plus its task and group (envs reset on the same task)."""

    task: TaskSpec
    slot: int
    group: int | None = None
    turns: list[TurnRecord] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Number of turns (== env steps) taken."""
        return len(self.turns)

    @property
    def finished(self) -> bool:
        """The episode is over (won, env terminal, or truncated)."""
        return bool(self.turns) and self.turns[-1].done

    @property
    def won(self) -> bool:
        """``info['won']`` at the last recorded step."""
        return bool(self.turns) and self.turns[-1].won

    @property
    def score(self) -> float:
        """``info['score']`` at the last recorded step (WebShop raw reward, 1.0/0.0 for binary tasks)."""
        return float(self.turns[-1].score) if self.turns else 0.0

    @property
    def total_reward(self) -> float:
        """Sum of env rewards over the episode (undiscounted)."""
        return float(sum(t.reward for t in self.turns))

    @property
    def truncated(self) -> bool:
        """The episode was cut (step limit, crashed worker) rather than finished."""
        return bool(self.turns) and self.turns[-1].truncated

    @property
    def truncation_reason(self) -> str | None:
        return self.turns[-1].truncation_reason if self.turns else None

    @property
    def task_type(self) -> str:
        return self.turns[-1].task_type if self.turns else ""

    @property
    def n_switches(self) -> int:
        """Turns with the switch flag (SWITCH with a subgoal: a new segment starts)."""
        return sum(t.switch for t in self.turns)

    @property
    def n_invalid(self) -> int:
        """Turns whose response was not well-formed (``valid`` False)."""
        return sum(not t.valid for t in self.turns)

    @property
    def n_keep_inconsistent(self) -> int:
        """KEEP turns whose subgoal text differed from the current subgoal."""
        return sum(t.keep_inconsistent for t in self.turns)

    @property
    def n_inadmissible(self) -> int:
        """Turns whose executed action was not in the admissible list."""
        return sum(not t.admissible_action for t in self.turns)

    @property
    def switch_rate(self) -> float:
        return self.n_switches / self.length if self.turns else 0.0

    @property
    def invalid_rate(self) -> float:
        return self.n_invalid / self.length if self.turns else 0.0


@dataclass(frozen=True)
class TurnRequest:
    """What a policy needs to answer one active env this turn."""

    slot: int
    prompt: str  # user-message text (not chat-templated)
    admissible: list[str]
    current_subgoal: str | None
    task: str  # task text
    task_spec: TaskSpec
    observation: str
    turn: int
    group: int | None = None


def episode_stats(trajectories: Sequence[Trajectory]) -> dict[str, Any]:
    """Summary numbers of finished episodes: success, score, length, format and switch rates.

    Rates over turns (``invalid_rate``, ``switch_rate``, ``keep_inconsistent_rate``,
    ``inadmissible_rate``) are pooled over all turns of all episodes; ``success``/``score``/``length``
    are means over episodes. ``per_type`` has ``n``, ``success`` and ``score`` per task type.
    """
    n = len(trajectories)
    turns = sum(t.length for t in trajectories)

    def rate(count: int) -> float:
        return count / turns if turns else 0.0

    per_type: dict[str, dict[str, float]] = {}
    for tr in trajectories:
        d = per_type.setdefault(tr.task_type or "?", {"n": 0, "success": 0.0, "score": 0.0})
        d["n"] += 1
        d["success"] += tr.won
        d["score"] += tr.score
    for d in per_type.values():
        d["success"] /= d["n"]
        d["score"] /= d["n"]
    return {
        "n_episodes": n,
        "n_turns": turns,
        "success": sum(t.won for t in trajectories) / n if n else 0.0,
        "score": sum(t.score for t in trajectories) / n if n else 0.0,
        "length": turns / n if n else 0.0,
        "truncated": sum(t.truncated for t in trajectories) / n if n else 0.0,
        "invalid_rate": rate(sum(t.n_invalid for t in trajectories)),
        "switch_rate": rate(sum(t.n_switches for t in trajectories)),
        "keep_inconsistent_rate": rate(sum(t.n_keep_inconsistent for t in trajectories)),
        "inadmissible_rate": rate(sum(t.n_inadmissible for t in trajectories)),
        "per_type": dict(sorted(per_type.items())),
    }


__all__ = ["Trajectory", "TurnRecord", "TurnRequest", "episode_stats", "is_admissible"]
