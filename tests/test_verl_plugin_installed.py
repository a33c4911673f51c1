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
from hiper.integrations.verl import critic_heads  # noqa: E402
from hiper.integrations.verl.advantage import compute_row_advantages, read_row_values  # noqa: E402
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
        "import verl.utils.model as m\n"  # what the critic's engine worker calls: the three-head wrapper
        "print('wrapped', getattr(m.load_valuehead_model, '__hiper_original__', None) is not None)\n"
    )
    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "auto"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-4:-2] == [
        "hiper.integrations.verl.agent_loop.HiPERAgentLoop",
        "hiper.integrations.verl.trainer",
    ]
    assert lines[-2].startswith("guard") and "hiper_sync" in lines[-2]
    assert lines[-1] == "wrapped True"


def _tokenizer_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> tuple[Any, Path, int]:
    """(transformers, a fresh folder holding a copy of the real Qwen2.5 tokenizer, its vocabulary size)."""
    transformers = pytest.importorskip("transformers")
    if not TOKENIZER_DIR.exists():
        pytest.skip(f"Qwen2.5 tokenizer not found at {TOKENIZER_DIR} (set HIPER_SHARED)")
    out = tmp_path_factory.mktemp(name)
    for f in TOKENIZER_DIR.iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    return transformers, out, len(transformers.AutoTokenizer.from_pretrained(str(out)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local HF model folder verl's ``HFModelConfig`` accepts: the real Qwen2.5 tokenizer + a tiny Qwen2 config."""
    transformers, out, vocab = _tokenizer_folder(tmp_path_factory, "tiny_qwen2")
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
        # the stand-in critic below writes one value per position: the single-head path (the recipes' default
        # three-head path has its own tests further down)
        "hiper.critic_heads=1",
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


# ---------------------------------------------------------------------------------------------------------------
# the opt-in three-head critic (hiper.critic_heads=3): verl's critic builder, engine output chain, TransferQueue,
# hiper's advantage step and value loss, on the rows of the step above (copied to their own partition)


def test_three_head_recipe_override_is_a_valid_verl_config(model_dir: Path) -> None:
    """``hiper.critic_heads=3`` is the whole switch: ``configure_critic`` writes the critic's override_config and
    verl's ``validate_config`` and ``HFModelConfig`` accept the result (num_labels 3 in the critic's HF config)."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    import hiper.integrations.verl.plugin as plugin

    assert plugin.LAST_REPORT["critic_heads"].startswith("ok: "), plugin.LAST_REPORT
    cfg = _compose("alfworld_qwen2.5_1.5b", [
        f"actor_rollout_ref.model.path={model_dir}", f"critic.model.path={model_dir}", "hiper.critic_heads=3",
    ])  # fmt: skip
    assert hiper_settings(cfg)["critic_heads"] == 3
    assert critic_heads.configure_critic(cfg, 3) == {"num_labels": 3, "hiper_critic_heads": 3}
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    hf = omega_conf_to_dataclass(cfg.critic).model.hf_config  # what the critic worker builds its model from
    assert hf.num_labels == 3 and critic_heads.requested_heads(hf) == 3
    for bad, match in (
        (["critic.strategy=megatron"], "FSDP critic engine only"),
        (["+critic.model.override_config.num_labels=2"], "num_labels=2"),
    ):
        cfg = _compose("alfworld_qwen2.5_1.5b", [f"critic.model.path={model_dir}", "hiper.critic_heads=3", *bad])
        with pytest.raises(ValueError, match=match):
            critic_heads.configure_critic(cfg, 3)
    with pytest.raises(ValueError, match="set hiper.critic_heads=3"):  # a 3-channel critic read as one head
        critic_heads.configure_critic(
            _compose("alfworld_qwen2.5_1.5b", ["+critic.model.override_config.num_labels=3"]), 1
        )
    assert "supports verl==0.9.1 only (installed: verl 0.9.2)" in " ".join(critic_heads.critic_problems(cfg, 3, "0.9.2"))


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 *checkpoint* (weights, tied embeddings) + the real tokenizer: what verl's critic loads."""
    transformers, out, vocab = _tokenizer_folder(tmp_path_factory, "tiny_qwen2_weights")
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, architectures=["Qwen2ForCausalLM"], tie_word_embeddings=True,
    )).save_pretrained(out)  # fmt: skip
    return out


def _build_critic_engine(weights_dir: Path, heads: int, patched: bool = True) -> Any:
    """verl's ``FSDPEngineWithValueHead._build_module`` on CPU, fed the critic config the way verl's v1 trainer and
    ``TrainingWorker`` feed it. Stand-ins: no ``__init__`` (device mesh / NCCL) and, since flash-attn is GPU-only,
    the model class's ``from_pretrained`` gets ``attn_implementation="sdpa"``."""
    import transformers
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithValueHead

    cfg = _compose("alfworld_qwen2.5_1.5b", [
        f"critic.model.path={weights_dir}", f"hiper.critic_heads={heads}", "critic.model.use_remove_padding=false",
        "+critic.model.override_config.attn_implementation=sdpa",
    ])  # fmt: skip
    critic_heads.configure_critic(cfg, heads)
    critic_cfg = omega_conf_to_dataclass(cfg.critic)
    engine = FSDPEngineWithValueHead.__new__(FSDPEngineWithValueHead)
    engine.model_config, engine.engine_config, engine.device_mesh = critic_cfg.model, critic_cfg.engine, None
    engine.model_config.model_type = "value_model"  # TrainingWorker sets it from TrainingWorkerConfig
    engine.use_remove_padding, engine.ulysses_sequence_parallel_size, engine.use_ulysses_sp = False, 1, False
    engine.pad_to_length = False
    cls = transformers.Qwen2ForTokenClassification
    original = cls.from_pretrained.__func__

    def sdpa_from_pretrained(klass: Any, *args: Any, **kwargs: Any) -> Any:
        return original(klass, *args, **{**kwargs, "attn_implementation": "sdpa"})

    cls.from_pretrained = classmethod(sdpa_from_pretrained)
    if not patched:
        critic_heads.uninstall()  # verl 0.9.1 as shipped
    try:
        engine.module = engine._build_module()
    finally:
        del cls.from_pretrained
        critic_heads.install()
    return engine


@pytest.fixture(scope="module")
def critic3(weights_dir: Path) -> Any:
    return _build_critic_engine(weights_dir, 3)


def test_verl_builds_a_three_channel_critic_only_with_the_patch(critic3: Any, weights_dir: Path) -> None:
    assert critic3.module.config.num_labels == 3 and critic3.module.score.out_features == 3
    # verl 0.9.1 unpatched: _build_module forces num_labels = 1 over the override
    assert _build_critic_engine(weights_dir, 3, patched=False).module.score.out_features == 1
    assert _build_critic_engine(weights_dir, 1).module.score.out_features == 1  # the wrapper is inert at 1


def _critic_forward(engine: Any, data: Any, remove_padding: bool = False) -> Any:
    """The value half of verl's ``FSDPEngineWithLMHead.forward_step``: ``prepare_model_inputs`` -> module ->
    ``FSDPEngineWithValueHead.prepare_model_outputs`` (nested ``[B, prompt + response, channels]``)."""
    from verl.utils import tensordict_utils as tu

    tu.assign_non_tensor(data, use_remove_padding=remove_padding, temperature=1.0, pad_token_id=0)
    model_inputs, output_args = engine.prepare_model_inputs(micro_batch=data)
    raw = engine.module(**model_inputs, use_cache=False)
    return engine.prepare_model_outputs(
        output=raw, output_args=output_args, micro_batch=data, logits_processor_func=None
    )["values"]


class EngineCriticWorkerGroup:
    """``critic_wg`` for verl's ``_compute_values``: the real engine chain + ``postprocess_batch_func`` on the
    batch's TransferQueue rows, written back under ``values`` as verl's ``tqbridge`` writes a worker's output."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def infer_batch(self, batch: Any) -> Any:
        from verl.utils import tensordict_utils as tu
        from verl.workers.engine.utils import postprocess_batch_func

        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                               select_fields=["input_ids", "position_ids"])  # fmt: skip
        with torch.no_grad():
            values = _critic_forward(self.engine, data)
        tu.assign_non_tensor(data, use_dynamic_bsz=False)
        out = postprocess_batch_func([{"model_output": {"values": values}, "loss": 0.0, "metrics": {}}], None, data)
        fields = TensorDict({"values": out["model_output"]["values"]}, batch_size=len(batch.keys))
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)
        return SimpleNamespace(futures=[])


@pytest.fixture(scope="module")
def step3(step: SimpleNamespace, critic3: Any) -> SimpleNamespace:
    """The step's rows in partition ``train3``; verl's ``_compute_values`` with the 3-channel critic, then
    ``HiPERTrainer._compute_advantage`` with ``hiper.critic_heads=3``."""
    import copy

    data = tq.kv_batch_get(keys=step.batch.keys, partition_id="train")
    data = data.exclude("values", *[k for k in step.after.fields if k.startswith("hae_")], "advantages", "returns")
    batch = tq.kv_batch_put(keys=step.batch.keys, partition_id="train3", fields=data, tags=step.batch.tags)
    trainer = copy.copy(step.trainer)
    trainer._hiper = hiper_settings(OmegaConf.merge(step.cfg, {"hiper": {"critic_heads": 3}}))
    trainer.critic_wg = EngineCriticWorkerGroup(critic3)
    trainer._compute_values(batch, {})  # verl's: critic_wg.infer_batch, then response_from_nested
    metrics: dict[str, float] = {}
    after = trainer._compute_advantage(batch, metrics)
    return SimpleNamespace(trainer=trainer, batch=batch, after=after, metrics=metrics)


def test_three_channel_values_reach_transfer_queue(step3: SimpleNamespace, critic3: Any) -> None:
    """Per row ``[L, 3]`` = the module's logits at the response positions (verl's left shift), every channel."""
    got = tq.kv_batch_get(keys=step3.batch.keys, partition_id="train3",
                          select_fields=["values", "input_ids", "responses"])  # fmt: skip
    for v, ids, resp in zip(got["values"].unbind(), got["input_ids"].unbind(), got["responses"].unbind()):
        with torch.no_grad():
            logits = critic3.module(input_ids=ids[None]).logits[0]  # [prompt + response, 3]
        assert v.shape == (len(resp), 3)
        assert torch.allclose(v, logits[len(ids) - len(resp) - 1 : len(ids) - 1], atol=1e-5)


def test_three_head_advantage_step_reads_each_channel(step: SimpleNamespace, step3: SimpleNamespace) -> None:
    """``_compute_advantage`` with 3 heads == ``compute_row_advantages`` on the TransferQueue values; it differs
    from the single-head reading of the same values (the channels are really read separately)."""
    got = tq.kv_batch_get(keys=step3.batch.keys, partition_id="train3",
                          select_fields=["prompts", "responses", "extra_fields", "values", "advantages",
                                         "hae_value_target"])  # fmt: skip
    from hiper.integrations.verl.convert import rows_from_tensordict

    rows = rows_from_tensordict(got, step3.batch.keys, step3.batch.tags)
    s = step3.trainer._hiper
    kw = dict(reward_scale=s["reward_scale"], value_coefs=s["value_coefs"], pad_token_id=step.tokenizer.pad_token_id)
    want = compute_row_advantages(rows, s["estimator"], s["estimator_config"], critic_heads=3, **kw)
    for a, b in zip(got["advantages"].unbind(), want.advantages):
        assert torch.allclose(a, b, atol=1e-6)
    # the channel map of spec §3.4: low = channel 0 after </subgoal>, high = 1 and term = 2 at position 0
    read = read_row_values(rows, want.index, want.batch.v_low_pos, 3)
    for b, r in enumerate(want.index.verl_row.tolist()):
        v, pos = rows.values[r], int(want.batch.v_low_pos[b])
        assert (float(read["low"][b]), float(read["high"][b]), float(read["term"][b])) == pytest.approx(
            (float(v[pos, 0]), float(v[0, 1]), float(v[0, 2]))
        )
    assert torch.allclose(got["hae_value_target"].to_padded_tensor(0.0), want.value_target)
    # the same rows read as one head (channel 0 everywhere) give other advantages
    rows.values = [v[:, 0] for v in rows.values]
    single = compute_row_advantages(rows, s["estimator"], s["estimator_config"], critic_heads=1, **kw)
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(single.advantages, want.advantages))
    with pytest.raises(ValueError, match="critic_heads=3"):  # a one-channel critic under hiper.critic_heads=3
        compute_row_advantages(rows, s["estimator"], s["estimator_config"], critic_heads=3, **kw)


def test_three_head_value_loss_through_engine_chain(step3: SimpleNamespace, critic3: Any) -> None:
    """``hae_value_loss(critic_heads=3)`` on the engine's own (grad-carrying) output for the micro-batch verl's
    engine would hand it: the hand-computed per-head clipped loss, and each head's channel of the score layer
    gets a gradient."""
    from verl.utils import tensordict_utils as tu
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.utils.padding import no_padding_2_padding

    data = tq.kv_batch_get(keys=step3.batch.keys, partition_id="train3")
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(data["loss_mask"].sum()),
                         global_batch_size=len(step3.batch))  # fmt: skip
    config = omega_conf_to_dataclass(step3.trainer.config.critic)
    critic3.module.zero_grad()
    values = _critic_forward(critic3, data)
    loss, metrics = hae_value_loss(config=config, model_output={"values": values}, data=data, critic_heads=3)
    loss.backward()
    fields = data.select("values", "hae_value_pos", "hae_value_target", "hae_value_weight").to_padded_tensor()
    want, _ = position_value_loss(
        no_padding_2_padding(values, data).detach(), fields["values"], fields["hae_value_pos"],
        fields["hae_value_target"], fields["hae_value_weight"], config.cliprange_value, float(len(step3.batch)), 3,
    )  # fmt: skip
    assert abs(float(loss) - float(want)) < 1e-6 and {"critic/low_vpred_mean", "critic/term_vpred_mean"} <= set(
        metrics
    )
    grad = critic3.module.score.weight.grad  # [3 channels, hidden]
    trained = fields["hae_value_weight"].sum(0) > 0  # heads with a loss term in this batch
    assert bool(trained.all()) and bool((grad.abs().sum(1) > 0).all())


def test_three_head_metrics_step(step3: SimpleNamespace) -> None:
    """verl's ``compute_data_metrics`` cannot read [B, R, 3] values; ``HiPERTrainer._compute_metrics`` logs them
    per channel instead."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    trainer = step3.trainer
    trainer.resource_pool_manager = SimpleNamespace(get_n_gpus=lambda: 1)
    metrics = dict(step3.metrics)
    trainer._compute_metrics(step3.after, metrics, {"step": 1.0, "gen": 0.5}, global_steps=STEP, epoch=0)
    assert {f"critic/values/{h}/mean" for h in ("low", "high", "term")} <= set(metrics)
    assert "critic/values/mean" not in metrics and "critic/returns/mean" in metrics
    with pytest.raises(RuntimeError):  # verl's own metrics step on three channels
        PPOTrainer._compute_metrics(trainer, step3.after, {}, {"step": 1.0, "gen": 0.5}, global_steps=STEP, epoch=0)


def test_three_head_remove_padding_output_keeps_channels(step3: SimpleNamespace, critic3: Any) -> None:
    """verl's remove-padding branch (the GPU default) packs ``[total_tokens, 3]`` into ``[B, seq, 3]`` too."""
    data = tq.kv_batch_get(keys=step3.batch.keys, partition_id="train3", select_fields=["input_ids", "position_ids"])
    with torch.no_grad():
        values = _critic_forward(critic3, data, remove_padding=True)
    assert [tuple(v.shape) for v in values.unbind()] == [(len(i), 3) for i in data["input_ids"].unbind()]
