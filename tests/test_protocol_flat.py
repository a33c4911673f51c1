"""The flat (ReAct) protocol of the prompt ablation: parser decision table, spans, renderers, the expert, training."""

from __future__ import annotations

import pytest
import torch
from test_trainer import tiny_config

from hiper.config import ConfigError, load_config
from hiper.envs import make_batch, task_panel
from hiper.models.tokenizer import household_tokenizer
from hiper.protocol import (
    PROMPT_PROTOCOL,
    REASON_CODES,
    RENDERERS,
    compact_flat_renderer,
    format_flat,
    parse_flat,
    parse_response,
    render_flat_prompt,
)
from hiper.protocol.spans import TokenByteTable, token_spans
from hiper.rollout.loop import run_episodes
from hiper.rollout.manager import EnvManager
from hiper.rollout.policies import ExpertPolicy
from hiper.trainer.trainer import Trainer

GOOD = "<think>the mug is on the table</think>\n<action>take mug 1 from table 1</action>"


@pytest.mark.parametrize("text,errors,warnings", [
    (GOOD, (), ()),
    ("  " + GOOD + "\n", (), ()),
    ("<action>go to fridge 1</action>", ("missing_think",), ()),
    ("<think>x</think>", ("missing_action",), ()),
    ("<think>x</think><action>go to fridge 1", ("unclosed_action",), ()),
    ("<think>x</think><action>  </action>", ("empty_action",), ()),
    ("<think>x<action>a</action>", ("unclosed_think",), ("text_outside_blocks",)),
    ("<action>a</action><think>x</think>", ("wrong_order",), ("text_outside_blocks",)),
    ("<think>x</think><action>a</action><action>b</action>", ("duplicate_action",), ("text_outside_blocks",)),
    ("<switch>KEEP</switch><think>x</think><action>a</action>", ("plan_execute_blocks",), ("text_outside_blocks",)),
    ("<think>拿杯子</think><action>a</action>", ("cjk",), ()),
    ("ok: <think>x</think><action>a</action>", (), ("text_outside_blocks",)),
    ("<THINK>x</THINK><action>a</action>", (), ("tag_case",)),
])  # fmt: skip
def test_parse_flat_decision_table(text: str, errors: tuple, warnings: tuple) -> None:
    p = parse_flat(text)
    assert (p.errors, p.warnings, p.valid) == (errors, warnings, not errors)
    assert set(p.errors) | set(p.warnings) <= set(REASON_CODES)
    # every flat turn is its own segment and there is never a subgoal: no KEEP turn, no KEEP penalty
    assert p.switch and p.subgoal is None and p.switch_span is None and p.subgoal_span is None
    if warnings:  # strict mode turns the tolerated deviations into errors
        assert not parse_flat(text, strict=True).valid


def test_action_and_span_cover_the_whole_answer() -> None:
    p = parse_flat("  " + GOOD + "  ")
    assert p.action == "take mug 1 from table 1"
    assert p.action_span == (2, 2 + len(GOOD))
    assert not parse_response(GOOD).valid  # a flat answer is malformed under Plan-Execute, and vice versa
    assert not parse_flat("<switch>SWITCH</switch>\n<subgoal>get mug</subgoal>\n<action>take mug</action>").valid


def test_format_flat_round_trip_and_refusals() -> None:
    p = parse_flat(format_flat(" look around ", "Go To Fridge 1"), strict=True)
    assert p.valid and p.action == "go to fridge 1"
    for think, action in (("x", ""), ("<action>", "a"), ("x", "<think>a"), ("拿", "a")):
        with pytest.raises(ValueError):
            format_flat(think, action)


@pytest.fixture(scope="module")
def tokenizer():
    return household_tokenizer("household", {"difficulty": "tiny"})


def test_flat_spans_train_every_answer_token(tokenizer) -> None:
    table = TokenByteTable.from_tokenizer(tokenizer)
    ids = [tokenizer.encode(GOOD, add_special_tokens=False), tokenizer.encode("no tags at all", add_special_tokens=False)]
    flat = token_spans(table, ids, protocol="flat")
    assert flat.valid_flags.tolist() == [True, False] and flat.boundary_flags.tolist() == [True, True]
    n = len(ids[0])
    assert flat.action_mask[0, :n].all() and not flat.subgoal_mask.any() and not flat.switch_mask.any()
    pe = token_spans(table, ids)  # the same tokens under Plan-Execute: invalid, only the fallback action mask
    assert pe.valid_flags.tolist() == [False, False]
    with pytest.raises(ValueError, match="unknown protocol"):
        token_spans(table, ids, protocol="react")


def test_flat_renderers_have_no_subgoal_and_ask_for_think_then_act() -> None:
    kw = dict(task="put a mug in the fridge", observation="You see a mug.", admissible=["take mug", "help"],
              current_subgoal="find the mug", history=[("o1", "a1"), ("o2", "a2"), ("o3", "a3")], step=3)
    full = render_flat_prompt("household", **kw)
    assert "<think>" in full and "<action>" in full and "sub-goal" not in full.lower() and "switch" not in full
    assert "Step 2 action: a2" in full and "Step 3 action: a3" in full and "a1" not in full  # the last 2 steps
    compact = compact_flat_renderer("household", **kw)
    assert "subgoal" not in compact and "take mug" in compact and "help" not in compact
    assert {PROMPT_PROTOCOL[name] for name in RENDERERS} == {"plan_execute", "flat"}


def test_expert_writes_flat_answers_that_solve_the_tasks() -> None:
    tasks = task_panel("household", "train", n=4, seed=0, difficulty="tiny")
    manager = EnvManager(make_batch("household", difficulty="tiny"), family="household", history_length=3,
                         renderer=RENDERERS["flat"], protocol="flat")
    trajs = run_episodes(manager, ExpertPolicy(manager), tasks)
    turns = [t for traj in trajs for t in traj.turns]
    assert all(t.parsed.valid and t.response.startswith("<think>") for t in turns)
    assert all(traj.turns[-1].reward > 0 for traj in trajs)
    assert all(t.current_subgoal in (None, "", "None") for t in turns)  # the flat protocol has no subgoal
    late = [t for t in turns if t.turn >= 3]
    # history_length=3 reaches the renderer: turn t shows steps t-2..t (the renderer's own default is 2)
    assert late and all(f"Step {t.turn - 2} action" in t.prompt for t in late)


@pytest.mark.parametrize("estimator", ["gae", "grpo", "gigpo"])
def test_flat_training_iteration(estimator: str, tokenizer) -> None:
    cfg = tiny_config(estimator, sft={"enabled": True, "episodes": 4, "epochs": 1, "lr": 1e-3, "batch_size": 8})
    cfg["env"]["prompt"] = "compact_flat"
    trainer = Trainer(cfg, tokenizer=tokenizer)
    assert trainer.sft()["sft/steps"] > 0
    metrics = trainer.iteration()
    batch = trainer.last.batch
    assert metrics["perf/turn_samples"] > 0
    # the flat protocol trains every generated token of a turn
    assert torch.equal(batch.action_mask, batch.response_mask)


def test_hae_needs_the_plan_execute_prompt() -> None:
    with pytest.raises(ConfigError, match="adv_estimator=hae needs the Plan-Execute answer.*env.prompt=flat"):
        load_config("cpu_demo", ["env.prompt=flat"])
    assert load_config("cpu_demo", ["env.prompt=compact_flat", "algorithm.adv_estimator=gae"]).env.prompt == (
        "compact_flat")
