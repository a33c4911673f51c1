"""hiper on a real verl 0.9.1 install, on CPU (skipped when verl is not importable: ``make test-verl``).

What runs here is verl's own code, not fakes of it:

* the ``verl.plugins`` entry point in a fresh interpreter, the recipes against verl's ``ppo_trainer`` schema and
  ``validate_config``;
* ``HiPERTrainer(config)`` built by verl's ``PPOTrainer.__init__`` (replay buffer, dataloader over the hiper task
  parquet through ``RLHFDataset``);
* ``AgentLoopWorkerTQ`` (verl's v1 agent-loop worker, run in-process) dispatching a real dataset batch to
  ``HiPERAgentLoop`` through verl's registry and hydra instantiation, against a fake LLM server returning verl's
  ``TokenOutput``; its post-processing writes the rows into a real local TransferQueue (Ray, CPU);
* verl's replay buffer sampling those rows, verl's padding rows, ``HiPERTrainer._compute_advantage`` on the
  TransferQueue, verl's metrics step and validation loop on the result;
* ``hae_ppo_loss`` / ``hae_value_loss`` called exactly as verl's engine calls a loss (keywords, micro-batch
  TensorDict with ``dp_size``/``batch_num_tokens``/``global_batch_size``, nested model outputs), with the real
  ``ActorConfig``/``CriticConfig`` dataclasses.

Only the GPU parts are missing: the LLM server (vLLM), the FSDP workers and the weight sync.

    make test-verl     # or: .venv-verl/bin/python -m pytest tests/test_verl_plugin_installed.py
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

verl = pytest.importorskip("verl", reason="verl is not installed (make venv-verl)")
torch = pytest.importorskip("torch")
ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")
hydra = pytest.importorskip("hydra")

from omegaconf import OmegaConf  # noqa: E402
from tensordict import TensorDict  # noqa: E402

from hiper.integrations.verl import agent_loop as al  # noqa: E402
from hiper.integrations.verl.advantage import compute_row_advantages  # noqa: E402
from hiper.integrations.verl.convert import VerlRows, parse_row_key  # noqa: E402
from hiper.integrations.verl.data import task_rows, write_parquet  # noqa: E402
from hiper.integrations.verl.losses import hae_ppo_loss, hae_value_loss, position_value_loss  # noqa: E402
from hiper.integrations.verl.trainer import HiPERTrainer, hiper_settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "verl"
SHARED = Path(os.environ.get("HIPER_SHARED", ROOT / ".." / "shared"))
TOKENIZER_DIR = SHARED / "models" / "qwen2.5-instruct-tokenizer"
N_TASKS, N_SESSIONS, MAX_TURNS, STEP = 2, 2, 3, 1
RESPONSES = (
    "<switch>SWITCH</switch><subgoal>explore the room</subgoal><action>look</action>",
    "<switch>KEEP</switch><subgoal>explore the room</subgoal><action>inventory</action>",
    "I am not sure what to do.",  # malformed: no role spans, invalid-action penalty
)


# ---------------------------------------------------------------------------------------------------------------
# no Ray needed


def test_version_pinned() -> None:
    assert verl.__version__ == "0.9.1", "hiper's adapter targets verl 0.9.1 exactly"


def test_entry_point_registers_in_a_fresh_interpreter() -> None:
    """``import verl`` alone (no hiper import) must register everything: the path verl's Ray workers take."""
    code = (
        "import verl\n"
        "from verl.experimental.agent_loop.agent_loop import _agent_loop_registry as loops\n"
        "from verl.trainer.ppo.v1 import get_trainer_cls\n"
        "from verl.trainer.ppo import core_algos\n"
        "print(loops['hiper_plan_execute']['_target_'])\n"
        "print(get_trainer_cls('hiper_sync').__module__)\n"
        "try:\n    core_algos.get_adv_estimator_fn('hae')()\nexcept RuntimeError as e:\n    print('guard', e)\n"
    )
    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "auto"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-3:-1] == [
        "hiper.integrations.verl.agent_loop.HiPERAgentLoop",
        "hiper.integrations.verl.trainer",
    ]
    assert lines[-1].startswith("guard") and "hiper_sync" in lines[-1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local HF model folder verl's ``HFModelConfig`` accepts: the real Qwen2.5 tokenizer + a tiny Qwen2 config."""
    transformers = pytest.importorskip("transformers")
    if not TOKENIZER_DIR.exists():
        pytest.skip(f"Qwen2.5 tokenizer not found at {TOKENIZER_DIR} (set HIPER_SHARED)")
    out = tmp_path_factory.mktemp("tiny_qwen2")
    for f in TOKENIZER_DIR.iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    vocab = len(transformers.AutoTokenizer.from_pretrained(str(out)))
    transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, architectures=["Qwen2ForCausalLM"],
    ).save_pretrained(out)  # fmt: skip
    return out


def _compose(recipe: str, overrides: list[str]) -> Any:
    with hydra.initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        return hydra.compose(config_name=recipe, overrides=overrides)


@pytest.fixture(scope="module")
def verl_schema() -> Any:
    """verl 0.9.1's own ``ppo_trainer`` config (what the recipes compose onto)."""
    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with hydra.initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return hydra.compose(config_name="ppo_trainer")


def _leaf_paths(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out += _leaf_paths(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return out


@pytest.mark.parametrize("recipe", ["alfworld_qwen2.5_1.5b", "alfworld_qwen2.5_7b", "webshop_qwen2.5_1.5b",
                                    "webshop_qwen2.5_7b"])  # fmt: skip
def test_recipes_are_valid_verl_configs(recipe: str, model_dir: Path, verl_schema: Any) -> None:
    """Every verl key a recipe sets exists in verl's schema (a typo would be silently ignored), and verl's
    own ``validate_config`` accepts the composed config (it rejected ``ppo_mini_batch_size > train_batch_size``)."""
    import yaml
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    for name in ("hiper_base", recipe):
        tree = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
        tree = {k: v for k, v in tree.items() if k not in ("hydra", "defaults", "hiper")}
        for path in _leaf_paths(tree):
            if path.startswith("algorithm.hae."):
                continue  # hiper's own section, read by hiper_settings
            parent, _, key = path.rpartition(".")
            node = OmegaConf.select(verl_schema, parent)  # keys(): `in` is False for mandatory "???" values
            assert node is not None and key in node.keys(), f"{name}.yaml: {path} is not a verl 0.9.1 key"

    cfg = _compose(recipe, [f"actor_rollout_ref.model.path={model_dir}", f"critic.model.path={model_dir}"])
    assert cfg.trainer.use_v1 and cfg.trainer.v1.trainer_mode == "hiper_sync"
    assert cfg.actor_rollout_ref.rollout.agent.default_agent_loop == "hiper_plan_execute"
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    actor = omega_conf_to_dataclass(
        cfg.actor_rollout_ref.actor
    )  # FSDPActorConfig (validate built the critic's)
    assert (actor.loss_agg_mode, actor.kl_loss_coef, actor.use_dynamic_bsz) == ("token-mean", 0.01, True)
    assert cfg.critic.cliprange_value == 0.5 and cfg.critic.use_dynamic_bsz
    assert need_critic(cfg) and hiper_settings(cfg)["estimator"] == "hae"
    assert al.SessionConfig.from_config(cfg).max_turns in (15, 50)


# ---------------------------------------------------------------------------------------------------------------
# one rollout step through verl's v1 machinery on a local Ray + TransferQueue


class FakeLLMClient:
    """Stands in for verl's ``LLMServerClient``: same ``generate`` signature, returns verl's ``TokenOutput``
    with the weight version in ``extra_fields`` as verl's client sets it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.calls = tokenizer, []

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict, **kw: Any
    ) -> Any:
        from verl.workers.rollout.replica import TokenOutput

        await asyncio.sleep(0)
        turn = sum(1 for rid, _ in self.calls if rid == request_id)
        self.calls.append((request_id, dict(sampling_params)))
        session = int(request_id.rsplit("-", 1)[1])
        text = RESPONSES[(turn + session) % len(RESPONSES)]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        steps = STEP - 1  # sync mode: step g samples with the weights pushed at the end of step g - 1
        return TokenOutput(
            token_ids=ids, log_probs=[-0.05 * (i + 1) for i in range(len(ids))], num_preempted=0,
            extra_fields={"global_steps": steps, "min_global_steps": steps, "max_global_steps": steps},
        )  # fmt: skip


@pytest.fixture(scope="module")
def cluster() -> Any:
    """A local Ray (2 CPUs) with a TransferQueue controller and one storage unit."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024**2)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    yield
    tq.close()
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def step(cluster: Any, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """verl's sync trainer up to the advantage step, with hiper's agent loop producing the rows."""
    from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
    from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopWorkerTQ
    from verl.workers.utils.padding import response_from_nested

    data_dir = tmp_path_factory.mktemp("verl_data")
    write_parquet(task_rows("household", "train", n=N_TASKS), data_dir / "train.parquet")
    write_parquet(task_rows("household", "valid_seen", n=N_TASKS), data_dir / "val.parquet")
    cfg = _compose("alfworld_qwen2.5_1.5b", [
        f"actor_rollout_ref.model.path={model_dir}", f"critic.model.path={model_dir}",
        f"data.train_files={data_dir / 'train.parquet'}", f"data.val_files={data_dir / 'val.parquet'}",
        f"data.train_batch_size={N_TASKS}", "data.dataloader_num_workers=0",
        f"actor_rollout_ref.rollout.n={N_SESSIONS}", "actor_rollout_ref.rollout.response_length=64",
        f"hiper.max_turns={MAX_TURNS}", "trainer.n_gpus_per_node=1",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
    ])  # fmt: skip
    trainer = HiPERTrainer(config=cfg)  # verl's PPOTrainer.__init__: replay buffer, critic/ref flags
    trainer._init_tokenizer()
    trainer._init_dataloader()  # RLHFDataset over hiper's task parquet
    trainer.global_steps = STEP
    trainer._hiper = hiper_settings(cfg)  # what HiPERTrainer._setup does before building the GPU workers
    tokenizer = trainer.tokenizer

    client = FakeLLMClient(tokenizer)
    worker = AgentLoopWorkerTQ.__ray_actor_class__(cfg, client)  # verl's v1 worker, in this process
    recorded: list[tuple[str, int, list[Any]]] = []
    original_run = al.HiPERAgentLoop.run

    async def recording_run(self: Any, sampling_params: dict, **kwargs: Any) -> list[Any]:
        outputs = await original_run(self, sampling_params, **kwargs)
        recorded.append((str(kwargs["uid"]), int(kwargs["session_id"]), outputs))
        return outputs

    class InProcessManager:  # AgentLoopManagerTQ.generate_sequences, minus the Ray actor hop
        def generate_sequences(self, batch: Any) -> None:
            async def run() -> None:
                await worker.generate_sequences(batch)
                await asyncio.gather(*list(worker.background_tasks))

            asyncio.run(run())

    trainer.agent_loop_manager = InProcessManager()
    al.HiPERAgentLoop.run = recording_run
    try:
        trainer._add_batch_to_generate()  # dataloader -> TQ prompt tags -> worker -> HiPERAgentLoop -> TQ rows
    finally:
        al.HiPERAgentLoop.run = original_run
    prompt_status = {
        k: t.get("status") for k, t in tq.kv_list("train")["train"].items() if t.get("is_prompt")
    }
    batch, _ = trainer.replay_buffer.sample(global_steps=STEP, partition_id="train", batch_size=N_TASKS)
    n_real = len(batch)
    batch = upsample_batch_to_divisible_size(batch, n_real + 3, tokenizer.eos_token_id)  # verl's padding rows

    # stand-ins for the GPU workers' outputs, written back the way verl's trainer writes them
    data = tq.kv_batch_get(
        keys=batch.keys, partition_id="train", select_fields=["input_ids", "response_mask"]
    )
    gen = torch.Generator().manual_seed(0)
    seq_lens = data["input_ids"].offsets().diff().tolist()

    def per_token(scale: float, shift: float) -> Any:
        full = [torch.randn(n, generator=gen) * scale + shift for n in seq_lens]
        return torch.nested.as_nested_tensor(full, layout=torch.jagged)

    written = {
        "values": response_from_nested(per_token(1.0, 0.0), data["response_mask"]),
        "old_log_probs": response_from_nested(per_token(0.1, -1.0), data["response_mask"]),
        "ref_log_prob": response_from_nested(per_token(0.1, -1.0), data["response_mask"]),
    }
    tq.kv_batch_put(keys=batch.keys, partition_id="train", fields=TensorDict(written, batch_size=len(batch)))
    metrics: dict[str, float] = {}
    after = trainer._compute_advantage(batch, metrics)
    return SimpleNamespace(
        cfg=cfg, trainer=trainer, tokenizer=tokenizer, client=client, worker=worker, recorded=recorded,
        batch=batch, after=after, n_real=n_real, values=dict(zip(batch.keys, written["values"].unbind())),
        metrics=metrics, seq_lens=seq_lens, gen=gen, prompt_status=prompt_status,
    )  # fmt: skip


def test_hiper_sync_takes_verl_sync_code_paths(step: SimpleNamespace) -> None:
    """verl compares ``trainer_mode`` with "sync"; as ``hiper_sync`` it used the async replay buffer and forced
    ``data.gen_batch_size=1``."""
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    trainer = step.trainer
    assert trainer.trainer_mode == "sync" and trainer.registered_trainer_mode == "hiper_sync"
    assert type(trainer.replay_buffer) is ReplayBuffer and trainer.replay_buffer.trainer_mode == "sync"
    assert trainer.parameter_sync_step == 1 and step.cfg.data.get("gen_batch_size") is None
    assert trainer.use_critic


def test_agent_loop_rows_in_transfer_queue(step: SimpleNamespace) -> None:
    """What verl's v1 worker stored for hiper's sessions: one row per turn under ``{uid}_{session}_{turn}``."""
    real = [(k, t) for k, t in zip(step.batch.keys, step.batch.tags) if not t.get("is_padding")]
    expected = {f"{uid}_{s}_{i}" for uid, s, outs in step.recorded for i in range(len(outs))}
    assert len(step.recorded) == N_TASKS * N_SESSIONS and {k for k, _ in real} == expected
    for _, tag in real:  # verl's metrics step casts these to int
        assert tag["status"] == "success" and tag["min_global_steps"] == tag["max_global_steps"] == STEP - 1
    keys = [k for k, _ in real]
    data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=[
        "responses", "response_mask", "rollout_log_probs", "rm_scores", "extra_fields", "num_turns", "session_id",
    ])  # fmt: skip
    final = {(u, s): outs[-1] for u, s, outs in step.recorded}
    for key, resp, lp, rm, ef, turns in zip(
        keys, data["responses"].unbind(), data["rollout_log_probs"].unbind(), data["rm_scores"].unbind(),
        list(data["extra_fields"]), list(data["num_turns"]),
    ):  # fmt: skip
        uid, session, turn = parse_row_key(key)
        assert ef["turn_idx"] == turn and turns == 2 * (turn + 1) and lp.shape == resp.shape
        # verl copies the final row's reward into every row, at its last token: per-turn rewards live in ef
        score = final[(uid, session)].reward_score
        assert float(rm[-1]) == score and float(rm[:-1].abs().sum()) == 0.0
        assert ef["reward_extra_info"]["acc"] == ef["reward_extra_info"]["success"]
        assert "turn_reward" in ef and "masks" in ef
    # one request id per session, every turn; the protocol's stop rules reach the server
    assert {rid for rid, _ in step.client.calls} == {f"{u}-{s}" for u, s, _ in step.recorded}
    assert all(p["stop"] == ["</action>"] and p["include_stop_str_in_output"] for _, p in step.client.calls)
    assert step.prompt_status == {
        u: "finished" for u, _, _ in step.recorded
    }  # before the replay buffer took them


def test_advantage_step_on_transfer_queue_equals_hiper_advantage(step: SimpleNamespace) -> None:
    """``HiPERTrainer._compute_advantage`` on verl's TransferQueue rows (nested tensors, NonTensorStack
    extra_fields, verl's padding rows) writes what ``compute_row_advantages`` gives for the agent loop's outputs
    (itself checked against ``hiper.advantage`` in test_verl_integration.py)."""
    keys, prompts, responses, extras = [], [], [], []
    for uid, session, outputs in step.recorded:
        for i, out in enumerate(outputs):
            keys.append(f"{uid}_{session}_{i}")
            prompts.append(out.prompt_ids)
            responses.append(out.response_ids)
            extras.append(out.extra_fields)
    n_pad = len(step.batch) - step.n_real
    assert n_pad == 3 and sum(bool(t.get("is_padding")) for t in step.after.tags) == n_pad
    rows = VerlRows(
        keys + [f"pad_{i}_0" for i in range(n_pad)], prompts + [[0]] * n_pad, responses + [[0]] * n_pad,
        extras + [{}] * n_pad, values=[step.values[k] for k in keys] + [torch.zeros(1)] * n_pad,
        is_padding=[False] * len(keys) + [True] * n_pad,
    )  # fmt: skip
    s = step.trainer._hiper
    want = compute_row_advantages(
        rows, s["estimator"], s["estimator_config"], reward_scale=s["reward_scale"], critic_heads=s["critic_heads"],
        value_coefs=s["value_coefs"], pad_token_id=step.tokenizer.pad_token_id,
    )  # fmt: skip
    names = ["advantages", "hae_loss_mask", "loss_mask", "hae_value_pos", "hae_value_target", "hae_value_weight",
             "response_mask", "responses"]  # fmt: skip
    assert set(names) <= set(step.after.fields)
    got = tq.kv_batch_get(keys=step.batch.keys, partition_id="train", select_fields=names)
    col = {n: got[n].unbind() for n in names}
    where = {k: i for i, k in enumerate(step.batch.keys)}
    for i, key in enumerate(keys):
        j = where[key]
        assert torch.allclose(col["advantages"][j], want.advantages[i], atol=1e-6), key
        assert torch.equal(col["hae_loss_mask"][j].bool(), want.loss_mask[i])
        assert torch.equal(col["loss_mask"][j], col["hae_loss_mask"][j])
        assert torch.equal(col["response_mask"][j], torch.ones_like(col["responses"][j]))  # never overwritten
        assert torch.equal(col["hae_value_pos"][j], want.value_pos[i])
        assert torch.allclose(col["hae_value_target"][j], want.value_target[i])
        assert torch.allclose(col["hae_value_weight"][j], want.value_weight[i])
    for key, tag in zip(step.batch.keys, step.batch.tags):
        if tag.get("is_padding"):
            j = where[key]
            assert float(col["advantages"][j].abs().sum()) == 0 and int(col["hae_loss_mask"][j].sum()) == 0
            assert float(col["hae_value_weight"][j].sum()) == 0
    assert (
        step.metrics["hiper/padding_rows"] == 3.0 and float(sum(a.abs().sum() for a in want.advantages)) > 0
    )


def test_verl_metrics_step_accepts_hiper_rows(step: SimpleNamespace) -> None:
    """verl's ``_compute_metrics`` over the step (it casts the rows' min/max_global_steps tags to int)."""
    trainer = step.trainer
    trainer.resource_pool_manager = SimpleNamespace(get_n_gpus=lambda: 1)  # the GPU pool verl would own
    metrics = dict(step.metrics)
    trainer._compute_metrics(step.after, metrics, {"step": 1.0, "gen": 0.5}, global_steps=STEP, epoch=0)
    assert metrics["training/num_turns/max"] == 2 * MAX_TURNS
    assert metrics["training/off_policy/trajectory_staleness/mean"] == 0
    assert metrics["hiper/batch/n_traj"] == N_TASKS * N_SESSIONS and "critic/returns/mean" in metrics


def _engine_micro_batch(step: SimpleNamespace) -> Any:
    """The TensorDict verl's engine hands a loss: every stored field plus the global batch info it assigns."""
    from verl.utils import tensordict_utils as tu

    data = tq.kv_batch_get(keys=step.batch.keys, partition_id="train")
    tu.assign_non_tensor(
        data, dp_size=1, batch_num_tokens=int(data["loss_mask"].sum()), global_batch_size=len(step.batch)
    )
    return data


def _full_sequence(step: SimpleNamespace, scale: float, shift: float) -> tuple[Any, Any]:
    """A nested [B, prompt+response] model output with a leaf to take gradients from (as the engine emits)."""
    flat = torch.cat([torch.randn(n, generator=step.gen) * scale + shift for n in step.seq_lens])
    leaf = flat.clone().requires_grad_(True)
    offsets = torch.tensor([0, *step.seq_lens]).cumsum(0)
    return leaf, torch.nested.nested_tensor_from_jagged(leaf, offsets)


def _response_positions(step: SimpleNamespace, mask_rows: list[Any]) -> Any:
    """Flat model-output indices of response positions where ``mask_rows`` is set (model output at token t-1
    scores response token t, verl's left shift)."""
    out, start = [], 0
    for n, m in zip(step.seq_lens, mask_rows):
        first = start + n - len(m) - 1
        out += [first + int(k) for k in m.nonzero().flatten()]
        start += n
    return torch.tensor(out, dtype=torch.long)


def test_actor_loss_called_like_verl_engine(step: SimpleNamespace) -> None:
    from verl.utils.config import omega_conf_to_dataclass

    data = _engine_micro_batch(step)
    config = omega_conf_to_dataclass(step.cfg.actor_rollout_ref.actor)  # FSDPActorConfig
    leaf, log_probs = _full_sequence(step, 0.1, -1.0)
    entropy = torch.nested.nested_tensor_from_jagged(
        torch.rand(leaf.shape[0], generator=step.gen), log_probs.offsets()
    )
    loss_fn = partial(hae_ppo_loss, config=config)
    loss, metrics = loss_fn(
        model_output={"log_probs": log_probs, "entropy": entropy}, data=data, dp_group=None
    )
    loss.backward()
    masks = [m.bool() for m in data["hae_loss_mask"].unbind()]
    allowed = torch.zeros_like(leaf, dtype=torch.bool)
    allowed[_response_positions(step, masks)] = True
    assert bool((leaf.grad[~allowed] == 0).all()), "gradient outside hae_loss_mask"
    assert int((leaf.grad[allowed] != 0).sum()) == int(allowed.sum()) > 0
    # token-mean over the role tokens: PPO-clip with ratio exp(logp - old), entropy bonus, low-var KL
    lp = log_probs.values().detach()[_response_positions(step, masks)]
    old = torch.cat([o[m] for o, m in zip(data["old_log_probs"].unbind(), masks)])
    ref = torch.cat([r[m] for r, m in zip(data["ref_log_prob"].unbind(), masks)])
    adv = torch.cat([a[m] for a, m in zip(data["advantages"].unbind(), masks)])
    ent = entropy.values()[_response_positions(step, masks)]
    ratio = torch.exp(lp - old)
    clipped = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - 0.2, 1 + 0.2))
    pg = torch.where(adv < 0, torch.minimum(clipped, -adv * 3.0), clipped).mean()
    kl = (torch.exp(ref - lp) - (ref - lp) - 1).clamp(-10, 10).mean()
    expected = pg - config.entropy_coeff * ent.mean() + config.kl_loss_coef * kl
    assert abs(float(loss.detach()) - float(expected)) < 1e-5 and "actor/pg_loss" in metrics


def test_value_loss_called_like_verl_engine(step: SimpleNamespace) -> None:
    from verl.utils.config import omega_conf_to_dataclass

    data = _engine_micro_batch(step)
    config = omega_conf_to_dataclass(step.cfg.critic)  # FSDPCriticConfig
    leaf, values = _full_sequence(step, 1.0, 0.0)
    loss_fn = partial(hae_value_loss, config=config, critic_heads=1)
    loss, metrics = loss_fn(model_output={"values": values}, data=data, dp_group=None)
    loss.backward()
    pos = data["hae_value_pos"].to_padded_tensor(0)
    weight = data["hae_value_weight"].to_padded_tensor(0.0)
    target = data["hae_value_target"].to_padded_tensor(0.0)
    width = max(len(m) for m in data["response_mask"].unbind())
    vpred = torch.zeros(len(step.batch), width)
    old = data["values"].to_padded_tensor(0.0)
    marks = []
    for b, (m, w) in enumerate(zip(data["response_mask"].unbind(), weight)):
        row = torch.zeros(len(m), dtype=torch.bool)
        row[pos[b][w > 0]] = True
        marks.append(row)
    for b, idx in enumerate(_response_positions(step, [torch.ones(len(m)) for m in data["response_mask"].unbind()])
                            .split([len(m) for m in data["response_mask"].unbind()])):  # fmt: skip
        vpred[b, : len(idx)] = leaf.detach()[idx]
    want, _ = position_value_loss(
        vpred, old, pos, target, weight, config.cliprange_value, float(len(step.batch))
    )
    assert abs(float(loss) - float(want)) < 1e-5 and "critic/low_vpred_mean" in metrics
    allowed = torch.zeros_like(leaf, dtype=torch.bool)
    allowed[_response_positions(step, marks)] = True
    assert bool((leaf.grad[~allowed] == 0).all()) and int((leaf.grad != 0).sum()) > 0


def test_verl_validation_reports_hiper_success(step: SimpleNamespace) -> None:
    """verl's ``_validate`` loop (val partition, final row per session) reads hiper's ``reward_extra_info``."""
    trainer = step.trainer
    trainer.reward_loop_manager = SimpleNamespace(reward_loop_worker_handles=[])  # rewards come from the rows
    metrics = trainer._validate()
    core = {k: v for k, v in metrics.items() if k.startswith("val-core/hiper/household/acc/mean@")}
    assert core and all(0.0 <= v <= 1.0 for v in core.values()), sorted(metrics)
    assert (
        "val-aux/hiper/household/turns/mean@1" in metrics
        and metrics["val-aux/num_turns/max"] <= 2 * MAX_TURNS
    )
