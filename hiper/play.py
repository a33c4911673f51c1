"""``hiper play``: type the model's part yourself, one turn at a time.

Each turn shows the task, the observation, the current subgoal and the numbered admissible actions
(``--full-prompt`` shows the exact rendered user prompt instead), then reads one line:

* a full response ``<switch>KEEP</switch><subgoal>...</subgoal><action>...</action>`` (anything that
  contains ``<`` is parsed as is, so malformed responses can be tried too);
* a shorthand ``k|subgoal|action`` (KEEP) or ``s|subgoal|action`` (SWITCH); an empty subgoal after
  ``k`` repeats the current subgoal (``k||go to desk 1``), and an action may be given by its number
  in the list (``s|find the key|3``);
* ``:prompt`` (show the rendered prompt), ``:expert`` (show what the env's expert would do, if it has
  one), ``:help``, ``:quit``.

The response goes through the same parser and KEEP semantics as training (:class:`EnvManager`); the
parse result (switch, subgoal, action, valid, reason codes) and the env's reply are printed. End of
input (Ctrl-D, or no TTY) ends the session cleanly with exit status 0.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from hiper.envs import ENV_FAMILIES, ENV_REGISTRY, make_batch, task_panel
from hiper.evaluate import DEFAULT_SPLIT, _kv
from hiper.protocol import Switch, format_response
from hiper.rollout.loop import advance, episodes
from hiper.rollout.manager import EnvManager
from hiper.rollout.records import TurnRecord, TurnRequest

HELP = (
    "answer with  k|subgoal|action  (KEEP) or  s|subgoal|action  (SWITCH); 'k||action' keeps the current "
    "subgoal; the action may be its number in the list; or type a full <switch>..</switch><subgoal>..</subgoal>"
    "<action>..</action> response. Commands: :prompt  :expert  :help  :quit"
)


def expand_shorthand(line: str, request: TurnRequest) -> str:
    """The response text for one input line (see the module docstring); raises ``ValueError`` if unusable."""
    text = line.strip()
    if "<" in text:
        return text
    parts = text.split("|")
    if len(parts) != 3 or parts[0].strip().lower() not in ("k", "keep", "s", "switch"):
        raise ValueError(f"not a response: {text!r}. {HELP}")
    kind, subgoal, action = (p.strip() for p in parts)
    switch = Switch.KEEP if kind.lower() in ("k", "keep") else Switch.SWITCH
    if not subgoal and switch is Switch.KEEP and request.current_subgoal:
        subgoal = request.current_subgoal
    if action.isdigit() and 1 <= int(action) <= len(request.admissible):
        action = request.admissible[int(action) - 1]
    return format_response(switch, subgoal, action)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", choices=sorted(ENV_REGISTRY), default="household")
    parser.add_argument("--split", default=None, help="task split (default: the env's eval split)")
    parser.add_argument("--task-index", type=int, default=0, help="index of the task in the split's panel")
    parser.add_argument("--seed", type=int, default=0, help="task-panel seed")
    parser.add_argument("--max-steps", type=int, default=None, help="episode horizon (env kwarg max_steps)")
    parser.add_argument("--history-length", type=int, default=2)
    parser.add_argument(
        "--full-prompt", action="store_true", help="show the exact rendered prompt every turn"
    )
    parser.add_argument("--strict", action="store_true", help="parse in strict mode")
    parser.add_argument(
        "--env-kwarg", action="append", default=[], metavar="K=V", help="env constructor kwarg"
    )


def _show_turn(out: Any, request: TurnRequest, full_prompt: bool) -> None:
    out.rule(f"turn {request.turn + 1}")
    if full_prompt:
        out.print(request.prompt, markup=False, highlight=False)
        return
    out.print(f"[bold]task:[/bold] {_esc(request.task)}")
    out.print(f"[bold]observation:[/bold] {_esc(request.observation)}")
    out.print(f"[bold]current subgoal:[/bold] {_esc(request.current_subgoal or 'None')}")
    out.print("[bold]admissible actions:[/bold]")
    for i, action in enumerate(request.admissible, 1):
        out.print(f"  {i:>2}. {_esc(action)}", highlight=False)


def _show_record(out: Any, rec: TurnRecord) -> None:
    p = rec.parsed
    flags = "valid" if rec.valid else f"INVALID ({', '.join(p.errors)})"
    if getattr(p, "warnings", ()):
        flags += f"; warnings: {', '.join(p.warnings)}"
    out.print(
        f"[bold]parsed:[/bold] switch={p.decision} subgoal={_esc(repr(p.subgoal))} action={_esc(repr(rec.action))} -> {flags}"
    )
    notes = []
    if rec.keep_inconsistent:
        notes.append("KEEP with an altered subgoal (the current subgoal is kept)")
    if not rec.admissible_action:
        notes.append("action not in the admissible list")
    if notes:
        out.print("[yellow]" + "; ".join(notes) + "[/yellow]")
    out.print(f"[bold]env:[/bold] {_esc(rec.next_observation)}")
    out.print(f"reward {rec.reward:g} | done {rec.done} | won {rec.won} | score {rec.score:g}")


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(str(text))


def play(args: argparse.Namespace, stdin: TextIO | None = None, console: Any = None) -> int:
    """Run one interactive episode reading responses from ``stdin``; returns the exit status."""
    from rich.console import Console


    stdin = stdin if stdin is not None else sys.stdin
    out = console or Console(highlight=False)
    split = args.split or DEFAULT_SPLIT.get(args.env, "test")
    try:
        panel = task_panel(args.env, split, n=args.task_index + 1, seed=args.seed)
    except ValueError as exc:
        panel, error = [], str(exc)
    else:
        error = f"the split has {len(panel)} tasks"
    if args.task_index < 0 or args.task_index >= len(panel):
        out.print(
            f"[red]task index {args.task_index} is out of range for {args.env}/{split}: {_esc(error)}[/red]"
        )
        return 2
    task = panel[args.task_index]
    kwargs = dict(_kv(kv) for kv in args.env_kwarg)
    if args.max_steps is not None:
        kwargs["max_steps"] = args.max_steps
    manager = EnvManager(
        make_batch(args.env, **kwargs),
        family=ENV_FAMILIES[args.env],
        history_length=args.history_length,
        strict_parse=args.strict,
    )
    records: list[TurnRecord] = []
    episode = episodes(manager, [task], on_turn=records.extend)  # THE rollout loop, one send per typed response
    try:
        requests = advance(episode)
        out.print(f"[bold]hiper play[/bold] {task}   ({HELP})", highlight=False)
        show = True
        while requests:
            (request,) = requests
            if show:
                _show_turn(out, request, args.full_prompt)
            show = False
            out.print("[bold cyan]your response>[/bold cyan] ", end="")
            line = stdin.readline()
            if not line:  # EOF: no TTY or Ctrl-D
                out.print("\n(end of input: episode left unfinished)")
                return 0
            line = line.strip()
            if not line:
                continue
            if line in (":quit", ":q", ":exit"):
                out.print("(quit)")
                return 0
            if line == ":help":
                out.print(HELP)
                continue
            if line == ":prompt":
                out.print(request.prompt, markup=False, highlight=False)
                continue
            if line == ":expert":
                try:
                    step = manager.expert([request.slot])[request.slot]
                    out.print(f"expert: subgoal={step.subgoal!r} action={step.action!r}", markup=False)
                except (TypeError, AttributeError, NotImplementedError) as exc:
                    out.print(f"no expert for this env: {exc}", markup=False)
                continue
            try:
                response = expand_shorthand(line, request)
            except ValueError as exc:
                out.print(f"[red]{_esc(str(exc))}[/red]")
                continue
            records.clear()
            requests = advance(episode, ({request.slot: response}, None))
            _show_record(out, records[0])
            show = True
        (traj,) = manager.trajectories()
        out.rule("episode over")
        reason = f" (truncated: {traj.truncation_reason})" if traj.truncated else ""
        out.print(
            f"won {traj.won} | score {traj.score:g} | {traj.length} turns | {traj.n_switches} switches | "
            f"{traj.n_invalid} invalid{reason}"
        )
        return 0
    finally:
        episode.close()
        manager.close()


def main(args: argparse.Namespace) -> int:
    return play(args)


__all__ = ["add_arguments", "expand_shorthand", "main", "play"]
