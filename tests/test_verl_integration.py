"""hiper.integrations.verl on CPU without verl: agent loop vs a fake LLM server on the household env, rows <->
turn batch round trips, the advantage step == hiper.advantage, position-read value losses, plugin registration.

Tests that need verl itself live in ``tests/test_verl_plugin_installed.py`` (skipped when verl is absent).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hiper import advantage  # noqa: E402
from hiper.advantage.from_batch import to_rows, turn_mask  # noqa: E402
from hiper.batch import TurnBatch  # noqa: E402
from hiper.envs import (  # noqa: E402
    InProcessBatch,  # noqa: E402
    make_env,
    task_panel,
)
from hiper.integrations.verl import agent_loop as al  # noqa: E402
from hiper.integrations.verl.advantage import compute_row_advantages, estimator_config  # noqa: E402
from hiper.integrations.verl.convert import (  # noqa: E402
    TURN_KEYS,
    VerlRows,
    mask_to_runs,
    parse_row_key,
    row_key,
    rows_from_tensordict,
    rows_to_turn_batch,
    runs_to_mask,
    turn_batch_to_rows,
)
from hiper.integrations.verl.losses import gather_head_values, position_value_loss  # noqa: E402
from hiper.losses import value_loss_terms  # noqa: E402
from hiper.protocol import chat_prompt, format_response  # noqa: E402
from hiper.protocol.spans import TokenByteTable  # noqa: E402
from hiper.rollout.manager import EnvManager  # noqa: E402
from hiper.rollout.policies import ExpertPolicy  # noqa: E402

MAX_TURNS = 6


@pytest.fixture(scope="module")
def table(tokenizer: Any) -> TokenByteTable:
    return TokenByteTable.from_tokenizer(tokenizer)


class ExpertServer:
    """A fake verl LLM server: answers each turn with the env expert's protocol response + ``<|im_end|>``.

    It follows the env the session created (``env_factory`` records it), so the episode is the expert's.
    ``log_probs`` are deterministic fakes of the right length. Async, like ``LLMServerClient.generate``.
    """

    def __init__(self, tokenizer: Any, mistakes: dict[int, str] | None = None) -> None:
        self.tokenizer, self.envs, self.requests = tokenizer, [], []
        self.subgoal: str | None = None
        self.mistakes = mistakes or {}  # turn -> raw text to answer instead (malformed / KEEP-inconsistent)

    def factory(self) -> Any:
        env = make_env("household")
        self.envs.append(env)
        return env

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any]
    ) -> Any:
        await asyncio.sleep(0)
        turn = len(self.requests)
        self.requests.append((request_id, list(prompt_ids), dict(sampling_params)))
        step = self.envs[-1].expert()
        if turn in self.mistakes:
            text = self.mistakes[turn]
        else:
            keep = self.subgoal is not None and step.subgoal == self.subgoal
            text = format_response("KEEP" if keep else "SWITCH", step.subgoal, step.action)
            self.subgoal = step.subgoal
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return SimpleNamespace(token_ids=ids, log_probs=[-0.01 * (i + 1) for i in range(len(ids))])


def _run(
    tokenizer: Any,
    table: Any,
    task: Any,
    server: ExpertServer,
    max_turns: int = MAX_TURNS,
    info: dict[str, Any] | None = None,
) -> list[Any]:
    cfg = al.SessionConfig(max_turns=max_turns, max_new_tokens=64, env_threads=2)

    async def generate(rid: str, prompt_ids: list[int], params: dict[str, Any]) -> Any:
        out = await server.generate(rid, prompt_ids=prompt_ids, sampling_params=params)
        return (out.token_ids, out.log_probs) if info is None else (out.token_ids, out.log_probs, info)

    return asyncio.run(
        al.run_session(
            task,
            generate=generate,
            tokenizer=tokenizer,
            table=table,
            config=cfg,
            env_factory=server.factory,
            sampling_params={"temperature": 1.0, "top_p": 1.0, "logprobs": True},
            request_id="uid0-0",
            default_global_steps=7,
        )  # fmt: skip
    )


def _rows(turn_rows_by_traj: dict[tuple[str, int], list[Any]]) -> VerlRows:
    keys, prompts, responses, efs, lps = [], [], [], [], []
    for (uid, session), trs in turn_rows_by_traj.items():
        for t, tr in enumerate(trs):
            keys.append(row_key(uid, session, t))
            prompts.append(tr.prompt_ids)
            responses.append(tr.response_ids)
            efs.append(tr.extra_fields)
            lps.append(tr.response_logprobs)
    return VerlRows(keys, prompts, responses, efs)


# ---------------------------------------------------------------------------------------------------------------
# agent loop


def test_session_rows_against_fake_server(tokenizer: Any, table: Any) -> None:
    task = task_panel("household", "train", n=1)[0]
    server = ExpertServer(tokenizer)
    rows = _run(tokenizer, table, task, server, max_turns=50)
    assert rows, "the session produced no turn"
    assert [r.extra_fields["turn_idx"] for r in rows] == list(range(len(rows)))
    for i, r in enumerate(rows):
        ef = r.extra_fields
        assert set(TURN_KEYS) <= set(ef)
        assert len(r.response_logprobs) == len(r.response_ids)
        assert ef["valid"] and all(ef["masks"][role] for role in ("switch", "subgoal", "action"))
        assert 0 < ef["v_low_pos"] < len(r.response_ids)
        assert ef["done"] == (i == len(rows) - 1)
        assert tokenizer.decode(r.prompt_ids).rstrip().endswith("<|im_start|>assistant")
    last = rows[-1]
    assert last.extra_fields["won"] and last.reward_score == 1.0
    info = last.extra_fields["reward_extra_info"]
    assert info["success"] == 1.0 and info["turns"] == len(rows) and info["episode_return"] > 0
    assert all(r.reward_score is None for r in rows[:-1])
    # verl sampling params pass through; the protocol's stop rules are added
    rid, _, params = server.requests[0]
    assert params["stop"] == ["</action>"] and params["include_stop_str_in_output"]
    assert params["max_tokens"] == 64 and params["temperature"] == 1.0
    # one request id for the whole session (verl routes it to one server), every turn
    assert {r[0] for r in server.requests} == {"uid0-0"}
    # verl copies these into the TransferQueue tags and casts them to int in its metrics step
    assert {(r.extra_fields["min_global_steps"], r.extra_fields["max_global_steps"]) for r in rows} == {
        (7, 7)
    }
    assert info["acc"] == info["success"]


def test_session_takes_weight_version_and_preemption_from_the_server(tokenizer: Any, table: Any) -> None:
    task = task_panel("household", "train", n=1)[0]
    info = {"min_global_steps": 3, "max_global_steps": 4, "num_preempted": 2, "global_steps": 4}
    rows = _run(tokenizer, table, task, ExpertServer(tokenizer), max_turns=2, info=info)
    assert [(r.extra_fields["min_global_steps"], r.extra_fields["max_global_steps"]) for r in rows] == [
        (3, 4)
    ] * 2
    assert [r.num_preempted for r in rows] == [2, 2] and all(r.generate_seconds >= 0 for r in rows)


def test_trainer_reports_sync_mode_to_verl() -> None:
    """verl's PPOTrainer branches on trainer_mode == "sync"; the registered name must not switch it to async."""
    from hiper.integrations.verl.trainer import HiPERTrainer, unsupported_settings

    trainer = object.__new__(HiPERTrainer)
    trainer.trainer_mode = "hiper_sync"  # what PPOTrainer.__init__ does
    assert trainer.trainer_mode == "sync" and trainer.registered_trainer_mode == "hiper_sync"
    assert unsupported_settings({"algorithm": {"use_kl_in_reward": False}}) == []
    bad = {
        "algorithm": {
            "use_kl_in_reward": True,
            "rollout_correction": {"rollout_is": "token", "rollout_rs": None},
        },
        "distillation": {"enabled": True},
    }
    problems = unsupported_settings(bad)
    assert len(problems) == 3 and "rollout_is=token" in problems[1]


def test_session_rows_equal_builtin_trainer_batch(tokenizer: Any, table: Any) -> None:
    """The agent loop's rows convert to exactly the TurnBatch the built-in trainer builds for the same episode."""
    task = task_panel("household", "train", n=2)[1]
    rows = _run(tokenizer, table, task, ExpertServer(tokenizer))
    batch, _ = rows_to_turn_batch(_rows({("uid0", 0): rows}), pad_token_id=tokenizer.pad_token_id)

    envs = InProcessBatch(lambda: make_env("household"), 1)
    manager = EnvManager(envs, history_length=2, max_turns=MAX_TURNS)
    manager.reset([task])
    expert = ExpertPolicy(manager)
    while manager.active:
        reqs = manager.requests()
        texts = expert.act(reqs)
        extras = {}
        for r in reqs:
            p = tokenizer(chat_prompt(tokenizer, r.prompt), add_special_tokens=False)["input_ids"]
            resp = tokenizer(texts[r.slot], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            extras[r.slot] = {"prompt_ids": p, "response_ids": resp}
        manager.step(texts, extras)
    ref = TurnBatch.from_trajectories(manager.trajectories(), table, tokenizer.pad_token_id)
    _assert_batches_equal(batch, ref)


def test_agent_loop_class_run_rows_with_fake_server_manager(tokenizer: Any, table: Any) -> None:
    server = ExpertServer(tokenizer)
    loop = object.__new__(al.HiPERAgentLoop)  # verl's __init__ needs a live worker; set what run_rows reads
    loop.server_manager, loop.tokenizer = server, tokenizer
    loop.config = {
        "hiper": {"max_turns": 3, "env_threads": 2},
        "actor_rollout_ref": {"rollout": {"response_length": 48}},
    }
    orig = al.run_session

    async def patched(task: Any, **kw: Any) -> Any:
        return await orig(task, env_factory=server.factory, table=table, **kw)

    al.run_session = patched
    try:
        extra_info = {"env": "household", "split": "train", "index": 0, "seed": 0}
        rows = asyncio.run(
            loop.run_rows({"temperature": 0.5}, extra_info=extra_info, uid="u7", session_id=2, global_steps=5)
        )
    finally:
        al.run_session = orig
    assert 1 <= len(rows) <= 3
    # the fake server reports no weight version: the prompt's global_steps stands in
    assert rows[0].extra_fields["min_global_steps"] == rows[0].extra_fields["max_global_steps"] == 5
    assert server.requests[0][0] == "u7-2" and server.requests[0][2]["max_tokens"] == 48
    with pytest.raises(ValueError, match="extra_info lacks"):
        al.task_from_extra_info({"env": "household"})


def test_session_malformed_and_inconsistent_turns(tokenizer: Any, table: Any) -> None:
    task = task_panel("household", "train", n=1)[0]
    mistakes = {
        1: "I will just look around.",
        2: "<switch>KEEP</switch><subgoal>something else</subgoal><action>look</action>",
    }
    rows = _run(tokenizer, table, task, ExpertServer(tokenizer, mistakes), max_turns=4)
    assert len(rows) == 4
    bad = rows[1].extra_fields
    assert not bad["valid"] and not bad["masks"]["subgoal"] and bad["action_fallback"]
    assert rows[2].extra_fields["keep_inconsistent"] and not rows[2].extra_fields["switch"]
    assert (
        rows[-1].extra_fields["truncated"] and rows[-1].extra_fields["reward_extra_info"]["truncated"] == 1.0
    )


def test_session_config_from_verl_config() -> None:
    cfg = al.SessionConfig.from_config(
        {"hiper": {"max_turns": 15, "history_length": 3, "env_kwargs": {"webshop": {"x": 1}}},
         "actor_rollout_ref": {"rollout": {"response_length": 256, "prompt_length": 1024}}}
    )  # fmt: skip
    assert (cfg.max_turns, cfg.history_length, cfg.max_new_tokens, cfg.max_prompt_tokens) == (
        15,
        3,
        256,
        1024,
    )
    assert cfg.env_kwargs == {"webshop": {"x": 1}}
    assert al.SessionConfig.from_config(None) == al.SessionConfig()


# ---------------------------------------------------------------------------------------------------------------
# conversion


def _assert_batches_equal(a: Any, b: Any) -> None:
    for f in fields(TurnBatch):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert x.shape == y.shape and torch.equal(x, y), f.name
        else:
            assert x == y, f.name


@pytest.fixture(scope="module")
def group_rows(tokenizer: Any, table: Any) -> VerlRows:
    """Two prompts x two sessions; session 1 of each prompt makes mistakes (different lengths and rewards)."""
    tasks = task_panel("household", "train", n=2)
    by_traj = {}
    for u, task in enumerate(tasks):
        for s in range(2):
            mistakes = {0: "look"} if s else None
            by_traj[(f"uid{u}", s)] = _run(
                tokenizer, table, task, ExpertServer(tokenizer, mistakes), 4 + u + s
            )
    return _rows(by_traj)


def test_rows_turn_batch_round_trip(group_rows: VerlRows) -> None:
    batch, index = rows_to_turn_batch(group_rows)
    assert batch.n_traj == 4 and batch.group.tolist() == [0, 0, 1, 1]
    back = turn_batch_to_rows(batch, traj_keys=index.traj_keys)
    order = index.verl_row.tolist()
    assert back.keys == [group_rows.keys[r] for r in order]
    assert back.prompt_ids == [group_rows.prompt_ids[r] for r in order]
    assert back.response_ids == [group_rows.response_ids[r] for r in order]
    for ef_back, r in zip(back.extra_fields, order):
        ef = group_rows.extra_fields[r]
        assert {k: ef_back[k] for k in TURN_KEYS} == {k: ef[k] for k in TURN_KEYS}
    again, _ = rows_to_turn_batch(back)
    _assert_batches_equal(batch, again)


def test_row_order_and_padding_rows_do_not_matter(group_rows: VerlRows) -> None:
    batch, _ = rows_to_turn_batch(group_rows)
    perm = list(range(len(group_rows)))
    random.Random(0).shuffle(perm)
    pad_ef = dict(group_rows.extra_fields[0])  # verl copies row 0's fields into its padding rows
    shuffled = VerlRows(
        keys=[group_rows.keys[i] for i in perm] + ["padabc_0_0", "padabc_1_0"],
        prompt_ids=[group_rows.prompt_ids[i] for i in perm] + [[1] * 5] * 2,
        response_ids=[group_rows.response_ids[i] for i in perm] + [[2]] * 2,
        extra_fields=[group_rows.extra_fields[i] for i in perm] + [pad_ef, pad_ef],
        is_padding=[False] * len(perm) + [True, True],
    )  # fmt: skip
    batch2, index2 = rows_to_turn_batch(shuffled)
    _assert_batches_equal(batch, batch2)
    assert index2.batch_row[-2:].tolist() == [-1, -1]


def test_conversion_errors(group_rows: VerlRows) -> None:
    drop = [i for i, k in enumerate(group_rows.keys) if not k.endswith("_1")]  # lose every turn 1
    gap = VerlRows(
        *[
            [getattr(group_rows, n)[i] for i in drop]
            for n in ("keys", "prompt_ids", "response_ids", "extra_fields")
        ]
    )
    with pytest.raises(ValueError, match="left-aligned"):
        rows_to_turn_batch(gap)
    bad = VerlRows(
        group_rows.keys[:1], group_rows.prompt_ids[:1], group_rows.response_ids[:1], [{"turn_idx": 0}]
    )
    with pytest.raises(ValueError, match="hiper_plan_execute"):
        rows_to_turn_batch(bad)
    with pytest.raises(ValueError, match="uid"):
        parse_row_key("nounderscore")
    assert parse_row_key("a_b_3_4") == ("a_b", 3, 4)


def test_mask_runs_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        m = torch.rand(17, generator=gen) > 0.5
        assert torch.equal(runs_to_mask(mask_to_runs(m), 17), m)
    assert mask_to_runs(torch.zeros(0, dtype=torch.bool)) == []
    with pytest.raises(ValueError):
        runs_to_mask([[3, 9]], 5)


def test_rows_from_tensordict_nested_and_padded(group_rows: VerlRows) -> None:
    n = 3
    nested = lambda xs: torch.nested.as_nested_tensor([torch.tensor(x) for x in xs], layout=torch.jagged)  # noqa: E731
    data = {
        "prompts": nested(group_rows.prompt_ids[:n]),
        "responses": nested(group_rows.response_ids[:n]),
        "response_mask": nested([[1] * len(r) for r in group_rows.response_ids[:n]]),
        "extra_fields": group_rows.extra_fields[:n],
        "values": nested([[0.5] * len(r) for r in group_rows.response_ids[:n]]),
    }
    rows = rows_from_tensordict(data, group_rows.keys[:n], tags=[{}, {"is_padding": True}, {}])
    assert rows.response_ids == group_rows.response_ids[:n] and rows.prompt_ids == group_rows.prompt_ids[:n]
    assert rows.is_padding == [False, True, False] and rows.values[0].shape == (len(rows.response_ids[0]),)


# ---------------------------------------------------------------------------------------------------------------
# advantage step == hiper.advantage


def _values(rows: VerlRows, seed: int, channels: int = 0) -> list[Any]:
    gen = torch.Generator().manual_seed(seed)
    shape = (lambda n: (n, channels)) if channels else (lambda n: (n,))
    return [torch.randn(shape(len(r)), generator=gen) * 3 for r in rows.response_ids]


def _reference(rows: VerlRows, name: str, config: Any, heads: int = 1) -> tuple[Any, Any, Any, Any]:
    """hiper.advantage on hand-built padded tensors (independent of the integration's plumbing)."""
    batch, index = rows_to_turn_batch(rows)
    n = batch.n_traj
    vals = [rows.values[r] for r in index.verl_row.tolist()] if rows.values is not None else None

    def pad(x: Any, fill: Any = 0) -> Any:
        return advantage.pad_turns(x, batch.traj_index, batch.turn_index, n, batch.t_max, fill)

    v = {}
    if vals is not None:
        pos = batch.v_low_pos.tolist()
        if heads == 1:
            v["low"] = torch.tensor([float(x[p]) for x, p in zip(vals, pos)])
            v["high"] = v["term"] = v["turn"] = torch.tensor([float(x[0]) for x in vals])
        else:
            v["low"] = torch.tensor([float(x[p, 0]) for x, p in zip(vals, pos)])
            v["high"] = torch.tensor([float(x[0, 1]) for x in vals])
            v["term"] = torch.tensor([float(x[0, 2]) for x in vals])
            v["turn"] = v["high"]
    keys: dict[str, int] = {}
    sid = torch.tensor([keys.setdefault(k, len(keys)) for k in batch.state_keys])
    inputs = advantage.AdvantageInputs(
        rewards=pad(batch.rewards), dones=pad(batch.dones, False), turn_mask=turn_mask(batch),
        switch=pad(batch.switch, False), valid=pad(batch.valid, True),
        keep_inconsistent=pad(batch.keep_inconsistent, False), group=batch.group, state_id=pad(sid, -1),
        # spec 3.9: subgoal / switch advantages are whitened over the turns that have those spans
        has_subgoal_span=pad(batch.subgoal_mask.any(1), False), has_switch_span=pad(batch.switch_mask.any(1), False),
        **{f"v_{h}": pad(x) for h, x in v.items()},
    )  # fmt: skip
    out = advantage.get(name)(inputs, config)
    unp = lambda x: advantage.unpad(x, batch.traj_index, batch.turn_index)  # noqa: E731
    tok, mask = advantage.to_token_level(
        unp(out.adv_action), unp(out.adv_subgoal), unp(out.adv_switch), unp(out.subgoal_in_loss).bool(),
        batch.action_mask, batch.subgoal_mask, batch.switch_mask, batch.response_mask,
    )  # fmt: skip
    return batch, index, out, (tok, mask)


@pytest.mark.parametrize("name", ["hae", "gae", "grpo", "rloo", "gigpo"])
def test_advantage_step_equals_hiper_advantage(group_rows: VerlRows, name: str) -> None:
    rows = VerlRows(group_rows.keys, group_rows.prompt_ids, group_rows.response_ids, group_rows.extra_fields,
                    values=_values(group_rows, 1))  # fmt: skip
    cfg = estimator_config(
        name, {"gamma": 1.0, "lam": 1.0, "hae": {"lam_seg": 0.9, "keep_penalty": -0.3}}, invalid_penalty=0.1
    )
    res = compute_row_advantages(rows, name, cfg)
    batch, index, out, (tok, mask) = _reference(rows, name, cfg)
    for b, r in enumerate(index.verl_row.tolist()):
        n = len(rows.response_ids[r])
        assert torch.allclose(res.advantages[r], tok[b, :n].float(), atol=1e-6)
        assert torch.equal(res.loss_mask[r], mask[b, :n])
    # the value targets are hiper's returns at the head positions, trained on hiper's value masks
    def unp(padded: Any) -> Any:
        return to_rows(batch, padded)
    for h, c in (("low", 0), ("high", 1), ("term", 2)):
        key = "turn" if name == "gae" and h == "high" else h
        if key not in out.returns:
            assert float(res.value_weight[:, c].abs().sum()) == 0.0
            continue
        m = unp(out.value_mask[key]).bool()
        rows_b = index.verl_row
        assert torch.allclose(res.value_target[rows_b, c][m], unp(out.returns[key])[m])
        assert torch.equal(res.value_weight[rows_b, c] > 0, m)
    assert res.metrics["hiper/loss_tokens"] == float(mask.sum())


def test_hae_bootstraps_across_turns_and_three_head_values(group_rows: VerlRows) -> None:
    """With lam=1, gamma=1, no shaping: A_low of a turn = (segment reward-to-go + V_high of the next boundary) - V_low."""
    rows = VerlRows(group_rows.keys, group_rows.prompt_ids, group_rows.response_ids, group_rows.extra_fields,
                    values=_values(group_rows, 2, channels=3))  # fmt: skip
    cfg = advantage.HAEConfig(norm_adv=False)
    res = compute_row_advantages(rows, "hae", cfg, critic_heads=3)
    batch, index, out, _ = _reference(rows, "hae", cfg, heads=3)
    raw = to_rows(batch, out.adv_action)
    assert torch.allclose(res.output.adv_action, out.adv_action)
    # a turn's action advantage depends on later turns' values: change the next boundary's V_high and it moves
    vals2 = [v.clone() for v in rows.values]
    traj0 = [r for r in index.verl_row.tolist() if parse_row_key(rows.keys[r])[:2] == ("uid0", 0)]
    for r in traj0[1:]:
        vals2[r][0, 1] += 5.0
    res2 = compute_row_advantages(VerlRows(rows.keys, rows.prompt_ids, rows.response_ids, rows.extra_fields, vals2),
                                  "hae", cfg, critic_heads=3)  # fmt: skip
    moved = (res2.output.adv_action - res.output.adv_action).abs()[0, : len(traj0) - 1]
    assert bool((moved > 0).any()), "no cross-turn bootstrap seen"
    assert raw.shape[0] == len(batch)
    with pytest.raises(ValueError, match="critic_heads"):
        compute_row_advantages(rows, "hae", cfg, critic_heads=1)


def test_estimator_config_mapping() -> None:
    cfg = estimator_config("hae", {"gamma": 0.99, "lam": 0.95, "hae": {"lam_seg": 0.9, "keep_penalty": -3.5,
                                                                        "bootstrap_truncated": False}},
                           invalid_penalty=0.1)  # fmt: skip
    assert (cfg.gamma, cfg.lam, cfg.lam_seg, cfg.keep_penalty, cfg.bootstrap_truncated) == (
        0.99,
        0.95,
        0.9,
        -3.5,
        False,
    )
    assert cfg.invalid_penalty == 0.1
    # a baseline reads only its own section: HAE's KEEP shaping does not leak into it (as in the built-in trainer)
    grpo = estimator_config(
        "grpo", {"hae": {"lam_seg": 0.9, "keep_penalty": -0.3}, "grpo": {"norm_by_std": False}}
    )
    assert grpo.keep_penalty == 0.0 and grpo.norm_by_std is False
    grpo = estimator_config("grpo", {"grpo": {"keep_penalty": -0.3}})
    assert grpo.keep_penalty == -0.3
    with pytest.raises(ValueError, match="lam_sge"):
        estimator_config("hae", {"hae": {"lam_sge": 0.9}})


# ---------------------------------------------------------------------------------------------------------------
# losses


def test_single_head_position_read_values() -> None:
    values = torch.arange(12.0).view(2, 6)
    pos = torch.tensor([[3, 0, 0], [5, 0, 0]])
    assert gather_head_values(values, pos, 1).tolist() == [[3.0, 0.0, 0.0], [11.0, 6.0, 6.0]]
    three = torch.arange(36.0).view(2, 6, 3)
    assert gather_head_values(three, pos, 3).tolist() == [[9.0, 1.0, 2.0], [33.0, 19.0, 20.0]]
    with pytest.raises(ValueError):
        gather_head_values(values, pos, 3)


def test_position_value_loss_equals_per_head_clipped_means(group_rows: VerlRows) -> None:
    rows = VerlRows(group_rows.keys, group_rows.prompt_ids, group_rows.response_ids, group_rows.extra_fields,
                    values=_values(group_rows, 3))  # fmt: skip
    coefs = {"low": 1.0, "high": 0.5, "term": 2.0}
    res = compute_row_advantages(rows, "hae", advantage.HAEConfig(), value_coefs=coefs)
    width = max(len(r) for r in rows.response_ids)
    old = torch.zeros(len(rows), width)
    for i, v in enumerate(rows.values):
        old[i, : len(v)] = v
    new = old + torch.randn(old.shape, generator=torch.Generator().manual_seed(4))
    loss, stats = position_value_loss(
        new, old, res.value_pos, res.value_target, res.value_weight, 0.5, float(len(rows))
    )
    ref = 0.0
    for c, h in enumerate(("low", "high", "term")):
        m = res.value_weight[:, c] > 0
        v_new = new.gather(1, res.value_pos[:, c : c + 1]).squeeze(1)
        v_old = old.gather(1, res.value_pos[:, c : c + 1]).squeeze(1)
        s, _ = value_loss_terms(v_new, v_old, res.value_target[:, c], m, 0.5, scale=0.5)  # verl's 0.5
        ref += coefs[h] * float(s) / int(m.sum())
    assert abs(float(loss) - ref) < 1e-5
    assert "critic/low_vpred_mean" in stats and "critic/high_clipfrac" in stats


# ---------------------------------------------------------------------------------------------------------------
# plugin


def test_plugin_registers_with_fake_registries() -> None:
    from hiper.integrations.verl import plugin
    from hiper.integrations.verl.trainer import HiPERTrainer

    loops, trainers, ests = {}, {}, {"gae": object(), "gigpo": object()}

    def reg(store: dict) -> Any:
        return lambda name: lambda obj: store.__setitem__(name, obj) or obj

    report = plugin.register_all(
        register_agent_loop=reg(loops), register_trainer=reg(trainers), register_adv_est=reg(ests),
        known_estimators=lambda: dict(ests),
    )  # fmt: skip
    assert set(report.values()) == {"ok"}  # the patch's own entry (real verl only) survives a re-registration
    assert {k: v for k, v in plugin.LAST_REPORT.items() if k != "critic_heads"} == report
    assert loops == {"hiper_plan_execute": al.HiPERAgentLoop}
    assert trainers == {"hiper_sync": HiPERTrainer}
    assert callable(ests["hae"]) and not callable(ests["gigpo"])  # an existing name is left alone
    with pytest.raises(RuntimeError, match="hiper_sync"):
        ests["hae"](token_level_rewards=None)

    def broken(name: str) -> Any:
        raise RuntimeError("registry closed")

    report = plugin.register_all(register_agent_loop=broken, register_trainer=reg(trainers),
                                 register_adv_est=reg(ests), known_estimators=lambda: ests)  # fmt: skip
    assert (
        report["agent_loop:hiper_plan_execute"].startswith("RuntimeError")
        and report["trainer:hiper_sync"] == "ok"
    )


def test_entry_point_declared() -> None:
    import tomllib

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    eps = tomllib.loads(text)["project"]["entry-points"]["verl.plugins"]
    assert eps == {"hiper": "hiper.integrations.verl.plugin"}


def test_task_rows() -> None:
    from hiper.integrations.verl.data import task_rows

    rows = task_rows("household", "train", n=3, seed=1)
    assert [r["extra_info"]["index"] for r in rows] == [0, 1, 2]
    assert {r["agent_name"] for r in rows} == {"hiper_plan_execute"}
    task = al.task_from_extra_info(rows[2]["extra_info"])
    assert (task.env, task.split, task.index, task.seed) == ("household", "train", 2, 1)


# ---------------------------------------------------------------------------------------------------------------
# recipes


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.parametrize(
    "recipe, keep, consistency, bootstrap, turns",
    [("alfworld_qwen2.5_1.5b", -0.3, -0.3, True, 50), ("alfworld_qwen2.5_7b", -0.3, -0.3, True, 50),
     ("webshop_qwen2.5_1.5b", -3.5, -0.1, False, 15), ("webshop_qwen2.5_7b", -3.5, -0.1, False, 15)],
)  # fmt: skip
def test_recipe_settings_match_spec(
    recipe: str, keep: float, consistency: float, bootstrap: bool, turns: int
) -> None:
    import yaml

    from hiper.integrations.verl.trainer import hiper_settings

    root = Path(__file__).resolve().parents[1] / "recipes" / "verl"
    base = yaml.safe_load((root / "hiper_base.yaml").read_text())
    top = yaml.safe_load((root / f"{recipe}.yaml").read_text())
    assert top["defaults"] == ["ppo_trainer", "hiper_base", "_self_"]
    cfg = _deep_merge(base, {k: v for k, v in top.items() if k not in ("hydra", "defaults")})
    s = hiper_settings(cfg)
    hae = s["estimator_config"]
    assert s["estimator"] == "hae" and s["critic_heads"] == 3  # the paper's three-head critic by default
    assert (hae.gamma, hae.lam, hae.lam_seg, hae.invalid_penalty) == (1.0, 1.0, 0.95, 0.1)
    assert (hae.keep_penalty, hae.keep_consistency_penalty, hae.bootstrap_truncated) == (
        keep,
        consistency,
        bootstrap,
    )
    session = al.SessionConfig.from_config(cfg)
    assert session.max_turns == turns and session.history_length == 2
    actor = cfg["actor_rollout_ref"]["actor"]
    assert (actor["optim"]["lr"], actor["kl_loss_coef"], actor["entropy_coeff"]) == (1.0e-6, 0.01, 0.001)
    assert cfg["critic"]["optim"]["lr"] == 1.0e-5 and cfg["critic"]["cliprange_value"] == 0.5
    assert cfg["trainer"]["v1"]["trainer_mode"] == "hiper_sync"
    assert cfg["actor_rollout_ref"]["rollout"]["agent"]["default_agent_loop"] == "hiper_plan_execute"


def test_paper_switch_mode_refused_up_front() -> None:
    """``algorithm.hae.switch_mode=paper`` needs beta and V^low on the KEEP continuation (extra forward passes the
    verl trainer does not run): ``HiPERTrainer._setup`` refuses it before any worker is built."""
    from hiper.integrations.verl.trainer import HiPERTrainer, unsupported_settings

    config = {"algorithm": {"adv_estimator": "hae", "hae": {"switch_mode": "paper"}}, "hiper": {}}
    assert any("switch_mode=paper" in p and "hiper train" in p for p in unsupported_settings(config))
    trainer = HiPERTrainer.__new__(HiPERTrainer)
    trainer.config, trainer.use_critic = config, True
    with pytest.raises(ValueError, match=r"switch_mode=paper.*built-in trainer \(hiper train"):
        trainer._setup()
    for ok in ({"adv_estimator": "hae", "hae": {"switch_mode": "code"}}, {"adv_estimator": "hae"},
               {"adv_estimator": "grpo", "hae": {"switch_mode": "paper"}}):  # fmt: skip
        assert unsupported_settings({"algorithm": ok}) == [], ok


def test_critic_heads_settings_without_verl() -> None:
    """``hiper.critic_heads``: 1 or 3; 3 needs verl 0.9.1 and an FSDP critic; a 3-channel override with 1 head is
    an error (it would be read as one head)."""
    from hiper.integrations.verl.critic_heads import critic_problems
    from hiper.integrations.verl.trainer import hiper_settings

    with pytest.raises(ValueError, match="critic_heads must be 1"):
        hiper_settings({"hiper": {"critic_heads": 2}, "algorithm": {}})
    assert hiper_settings({"hiper": {"critic_heads": 3}, "algorithm": {}})["critic_heads"] == 3
    fsdp = {"critic": {"strategy": "fsdp", "model": {"override_config": {}}}}
    assert critic_problems(fsdp, 3, "0.9.1") == [] and critic_problems(fsdp, 1, "0.9.1") == []
    (msg,) = critic_problems(fsdp, 3, "0.10.0")
    assert "verl==0.9.1 only (installed: verl 0.10.0)" in msg and "hiper.critic_heads=1" in msg
    (msg,) = critic_problems({"critic": {"strategy": "megatron"}}, 3, "0.9.1")
    assert "critic.strategy=megatron" in msg
    three = {"critic": {"strategy": "fsdp", "model": {"override_config": {"num_labels": 3}}}}
    assert critic_problems(three, 3, "0.9.1") == [] and "set hiper.critic_heads=3" in critic_problems(three, 1)[0]


def test_token_gae_is_sent_to_verls_own_gae() -> None:
    """hiper's ``token_gae`` is verl's native ``gae`` on turn rows: the hiper trainer mode refuses it with that
    pointer, and the row adapter refuses it instead of reading a per-token critic it does not have."""
    from hiper.integrations.verl.trainer import unsupported_settings

    problems = unsupported_settings({"algorithm": {"adv_estimator": "token_gae"}})
    assert any("algorithm.adv_estimator=gae" in p for p in problems)
    with pytest.raises(ValueError, match="verl's own"):
        compute_row_advantages([], "token_gae")
