"""FSDP2 (tempo_pl.strategies): 2 processes on gloo against 1 process, sharded resume, export, gather-once generation.

The multi-process part runs this file as a script (``python tests/test_strategies.py OUT``): Lightning's launcher
re-executes it for rank 1, so pytest never forks itself. One launch does everything the 2-process tests read
(a straight 4-step run that checkpoints after its first epoch, a run resumed from that sharded checkpoint, reference
outputs of the trained sharded models, all-gather counts of generation, a rank-0 initialisation, and a shared-QLoRA
run that saves a DCP checkpoint after every RL step and is resumed from one); the tests compare it with a 1-process
run done in the test process. Rollouts of the first runs are a deterministic function of the prompt (no sampling), so
1 rank and 2 ranks see exactly the same responses and the comparison isolates the sharding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback

from _tiny_run import (ROOT, build, finish_worker, rollout_records, subprocess_env,
                       tiny_config)
from _rollouts import rollout_from_tokens

pytestmark = pytest.mark.filterwarnings("ignore")

STEPS_PER_EPOCH = 2
EPOCHS = 2
PROMPTS_PER_STEP = 4
LOSS_NAMES = {"E": ("critic/loss",), "M": ("policy/loss", "policy/pg_loss")}
"""Losses each phase logs (a metric key is the name, or ends with ``/`` + the name)."""
PROBE = [[7, 23, 41, 5, 66, 12, 30, 3], [40, 41, 42, 43, 44, 45, 46, 47]]
"""Fixed token ids every trained model is evaluated on (policy logits, critic values)."""
WORKER_TIMEOUT_S = 420
FSDP2_TINY = ROOT / "configs" / "fsdp2_tiny.yaml"


# ----------------------------------------------------------------------------------------- the shared experiment


def deterministic_rollout(self, prompts):
    """``TempoModule.rollout`` replacement: responses are a function of the prompt text, whatever the rank.

    Response k of a prompt has 3 + (seed + k) % 5 tokens drawn from a generator seeded by the prompt's CRC32; even k
    end with EOS, odd k are truncated.
    """
    tok, n = self.tokenizer, self.sampling.n
    eos, pad = tok.eos_token_id, tok.pad_token_id
    prompt_rows, response_rows = [], []
    for text in prompts.prompts:
        seed = zlib.crc32(text.encode())
        ids = tok(text, add_special_tokens=False)["input_ids"][-24:]
        gen = torch.Generator().manual_seed(seed)
        for k in range(n):
            length = 3 + (seed + k) % 5
            body = torch.randint(4, len(tok), (length,), generator=gen).tolist()
            if k % 2 == 0:
                body[-1] = eos
            prompt_rows.append(ids)
            response_rows.append(body)
    return rollout_from_tokens(prompts, n, prompt_rows, response_rows, pad_id=pad,
                               texts=tok.batch_decode(response_rows, skip_special_tokens=True),
                               truncated=[k % 2 == 1 for _ in prompts.prompts for k in range(n)],
                               extra={"num_dropped": 0})


def experiment_config(out: Path, devices: int, epochs: int = EPOCHS) -> dict:
    """configs/tiny.yaml with the same global batch split over ``devices`` ranks, FSDP2 when devices > 1."""

    def edit(cfg: dict) -> None:
        trainer, init = cfg["trainer"], cfg["model"]["init_args"]
        trainer["devices"] = devices
        trainer["max_epochs"] = epochs
        if devices > 1:  # the strategy of configs/fsdp2_tiny.yaml: float32, activation checkpointing
            trainer["strategy"] = yaml.safe_load(FSDP2_TINY.read_text())["trainer"]["strategy"]
        # SGD: weights move by the gradients themselves. Adam's first steps move every weight by about its lr
        # whatever the gradient's size, so float rounding in a near-zero gradient (the LM head's chunks differ with
        # the rows per pass) would show in the trained models as if the sharding were wrong
        for name in ("policy_optimizer", "critic_optimizer"):
            init[name] = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}}
        cfg["data"]["init_args"]["batch_size"] = PROMPTS_PER_STEP // devices
        # one optimizer step per RL step on every rank: the per-rank mini-batch is the rank's whole batch
        init["training"].update(mini_batch_size=PROMPTS_PER_STEP // devices, micro_batch_size=64)
        # per-rank whitening would differ from whitening the global batch; the sharding is what is under test
        init["algorithm"]["whiten_advantages"] = False

    return tiny_config(out, edit, steps=STEPS_PER_EPOCH)


class SaveAfterFirstEpoch(Callback):
    """A checkpoint at the end of epoch 0: a DCP folder (one file per rank) under FSDP2, a file on one process."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            trainer.save_checkpoint(self.path)


def probe_outputs(module) -> dict[str, torch.Tensor]:
    """Policy logits and critic values on :data:`PROBE` (every rank must call this under FSDP2)."""
    ids = torch.tensor(PROBE)
    with torch.no_grad():
        logits = module.policy(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
        values = module.critic(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
    return {"logits": logits, "values": values}


def count_all_gathers(fn) -> int:
    """Number of FSDP2 parameter all-gathers ``fn()`` issues."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group

    original = _fsdp_param_group.foreach_all_gather
    calls = 0

    def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    _fsdp_param_group.foreach_all_gather = counting
    try:
        fn()
    finally:
        _fsdp_param_group.foreach_all_gather = original
    return calls


def run_experiment(out: Path, devices: int) -> None:
    """Straight run (checkpoint after epoch 0, probe outputs, final checkpoint), then the resumed run."""
    out.mkdir(parents=True, exist_ok=True)
    sharded = devices > 1
    mid = out / ("epoch0" if sharded else "epoch0.ckpt")
    cfg = experiment_config(out / "straight", devices)
    (out / "straight").mkdir(exist_ok=True)
    cli = build(cfg, out / "straight")
    cli.trainer.callbacks.append(SaveAfterFirstEpoch(mid))
    module = cli.model
    module.rollout = types.MethodType(deterministic_rollout, module)
    cli.trainer.fit(module, datamodule=cli.datamodule)
    outputs = probe_outputs(module)
    cli.trainer.save_checkpoint(out / ("final" if sharded else "final.ckpt"))

    counts = generation_gathers(module, next(iter(cli.datamodule.streams.unlabeled)))

    resumed_cfg = experiment_config(out / "resumed", devices)
    (out / "resumed").mkdir(exist_ok=True)
    resumed = build(resumed_cfg, out / "resumed")
    resumed.model.rollout = types.MethodType(deterministic_rollout, resumed.model)
    resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path=str(mid))

    rank0 = rank0_init_check(resumed.trainer, out) if sharded else None
    if cli.trainer.is_global_zero:
        torch.save(outputs, out / "probe.pt")
        (out / "gathers.json").write_text(json.dumps(counts))
        (out / "rank0_init.json").write_text(json.dumps(rank0))


def rank0_init_check(trainer, out: Path) -> dict:
    """FSDP2Recipe.rank0_init: under the strategy's init context rank 1 builds on the meta device, and after
    sharding every rank holds rank 0's weights (the sharded model computes rank 0's unsharded logits)."""
    import torch.distributed as dist

    from tempo_pl.models.builders import ModelSpec, build_policy
    from tempo_pl.models.fsdp2 import FSDP2Recipe, shard_model
    from tempo_pl.models.tiny import BUILTIN_CHAR, tiny_qwen3_config

    strategy = trainer.strategy
    recipe = FSDP2Recipe(param_dtype=None, activation_checkpointing=False, rank0_init=True)
    strategy.recipe = recipe
    # rank 1 would draw other weights from another seed: rank 0's must be what everyone ends up with
    spec = ModelSpec(config=tiny_qwen3_config(vocab_size=100), tokenizer=BUILTIN_CHAR, seed=strategy.global_rank)
    with strategy.tensor_init_context():
        policy = build_policy(spec)
    on_meta = all(p.is_meta for p in policy.parameters())
    ids = torch.tensor(PROBE)
    expected = None
    if not on_meta:
        with torch.no_grad():
            expected = policy(input_ids=ids).logits
    shard_model(policy, strategy.device_mesh["data_parallel"], recipe)
    with torch.no_grad():
        logits = policy(input_ids=ids).logits
    meta_by_rank = [None] * dist.get_world_size()
    dist.all_gather_object(meta_by_rank, on_meta)
    diff = float((logits - expected).abs().max()) if expected is not None else None
    return {"meta_by_rank": meta_by_rank, "max_logit_diff": diff, **_rank0_init_from_checkpoint(trainer, recipe, out)}


def _rank0_init_from_checkpoint(trainer, recipe, out: Path) -> dict:
    """The same from a checkpoint folder (a hub model's layout): policy and critic (fresh head) built on the meta
    device on rank 1, which reads only the config; the sharded models compute what rank 0 loaded."""
    import torch.distributed as dist

    from tempo_pl.models.builders import CriticSpec, ModelSpec, build_critic, build_policy, build_tokenizer
    from tempo_pl.models.fsdp2 import shard_model
    from tempo_pl.models.tiny import BUILTIN_CHAR, tiny_qwen3_config

    strategy = trainer.strategy
    folder = out / "rank0_init_checkpoint"
    if strategy.global_rank == 0:
        source = ModelSpec(config=tiny_qwen3_config(vocab_size=100), tokenizer=BUILTIN_CHAR, seed=7)
        build_policy(source).save_pretrained(folder)
        build_tokenizer(source).save_pretrained(folder)
    dist.barrier()
    spec = ModelSpec(name_or_path=str(folder))
    with strategy.tensor_init_context():
        policy = build_policy(spec)
        critic = build_critic(CriticSpec(init_from_policy=True, head_init_std=0.5, seed=strategy.global_rank), spec)
    on_meta = [all(p.is_meta for p in m.parameters()) for m in (policy, critic)]
    ids = torch.tensor(PROBE)
    expected = None
    if not any(on_meta):
        with torch.no_grad():
            expected = [policy(input_ids=ids).logits, critic(input_ids=ids).logits]
    for model in (policy, critic):
        shard_model(model, strategy.device_mesh["data_parallel"], recipe)
    with torch.no_grad():
        outputs = [policy(input_ids=ids).logits, critic(input_ids=ids).logits]
    meta_by_rank = [None] * dist.get_world_size()
    dist.all_gather_object(meta_by_rank, on_meta)
    diffs = None if expected is None else [float((a - b).abs().max()) for a, b in zip(outputs, expected)]
    return {"checkpoint_meta_by_rank": meta_by_rank, "checkpoint_max_diffs": diffs,
            "critic_values_spread": float(outputs[1].std())}


def generation_gathers(module, prompts) -> dict[str, int]:
    """All-gathers of one ``generate`` call under gathered_for_generation, and of 3 plain forwards without it.

    (A plain ``generate`` without the context is not measured: its per-token all-gathers are collectives, and ranks
    whose rows stop at different lengths would wait for each other forever.)
    """
    from torch.distributed.fsdp import FSDPModule

    from tempo_pl.models.hf import hf_model
    from tempo_pl.models.fsdp2 import gathered_for_generation

    fsdp_modules = [m for m in module.policy.modules() if isinstance(m, FSDPModule)]
    forwards = 0

    def count_forward(*_):
        nonlocal forwards
        forwards += 1

    def generate() -> None:
        with gathered_for_generation(module.policy):
            module.engine.generate(module.policy, prompts, 2)

    def three_forwards() -> None:
        ids = torch.tensor(PROBE)
        with torch.no_grad():
            for _ in range(3):
                module.policy(input_ids=ids)

    hook = hf_model(module.policy).register_forward_pre_hook(count_forward)
    counts = {"fsdp_modules": len(fsdp_modules)}
    for name, fn in (("generate", generate), ("three_forwards", three_forwards)):
        for m in fsdp_modules:  # start from sharded parameters, as after an optimizer step
            m.reshard()
        forwards = 0
        counts[name] = count_all_gathers(fn)
        counts[f"{name}_forwards"] = forwards
    hook.remove()
    return counts


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp2")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(out)],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=WORKER_TIMEOUT_S,
    )
    if proc.returncode != 0:
        pytest.fail(f"2-process FSDP2 worker failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return out


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    run_experiment(out, devices=1)
    return out


def _records(folder: Path, rank: int) -> list[dict]:
    return rollout_records(folder / "rollouts", rank)


def _loss(record: dict, name: str) -> float:
    keys = [k for k in record["metrics"] if k == name or k.endswith("/" + name)]
    assert len(keys) == 1, f"step {record['rl_step']} ({record['phase']}): no single {name} metric in {sorted(record['metrics'])}"
    return record["metrics"][keys[0]]


# ------------------------------------------------------------------------------------------------ 2-process tests


@pytest.mark.slow
def test_two_process_fsdp2_matches_one_process_losses(two_process_run: Path, one_process_run: Path) -> None:
    single = _records(one_process_run / "straight", 0)
    ranks = [_records(two_process_run / "straight", r) for r in (0, 1)]
    assert [r["phase"] for r in single] == ["E", "M", "E", "M"]
    assert [r["rl_step"] for r in ranks[0]] == [r["rl_step"] for r in ranks[1]] == [0, 1, 2, 3]
    for step, one in enumerate(single):
        # the two ranks split the step's 4 prompts: together they are the 1-process batch
        assert sorted(ranks[0][step]["prompt_ids"] + ranks[1][step]["prompt_ids"]) == sorted(one["prompt_ids"])
        for name in LOSS_NAMES[one["phase"]]:
            # each rank's loss is the mean over its half of the rows and FSDP averages the gradients: the mean of the
            # two ranks' losses is the 1-process loss, and equal updates keep it so at the later steps
            mean = (_loss(ranks[0][step], name) + _loss(ranks[1][step], name)) / 2
            assert mean == pytest.approx(_loss(one, name), rel=1e-4, abs=2e-6), f"step {step} {name}"
    # the updates did something: the critic's loss moved between its two E-steps, the policy's between M-steps
    assert _loss(single[2], "critic/loss") != pytest.approx(_loss(single[0], "critic/loss"), rel=1e-5)
    assert _loss(single[3], "policy/loss") != pytest.approx(_loss(single[1], "policy/loss"), rel=1e-5)


@pytest.mark.slow
def test_sharded_checkpoint_resumes_where_the_straight_run_went(two_process_run: Path) -> None:
    assert (two_process_run / "epoch0").is_dir()  # a DCP folder, one shard file per rank
    assert len(list((two_process_run / "epoch0").glob("*.distcp"))) == 2
    for rank in (0, 1):
        straight = _records(two_process_run / "straight", rank)
        resumed = _records(two_process_run / "resumed", rank)
        assert [r["rl_step"] for r in resumed] == [2, 3]
        for a, b in zip(straight[2:], resumed):
            assert a["prompt_ids"] == b["prompt_ids"] and a["phase"] == b["phase"]
            for name in LOSS_NAMES[a["phase"]]:
                assert _loss(b, name) == pytest.approx(_loss(a, name), abs=1e-6), f"rank {rank} step {a['rl_step']}"


@pytest.mark.slow
def test_two_process_trained_models_match_one_process(two_process_run: Path, one_process_run: Path) -> None:
    sharded = torch.load(two_process_run / "probe.pt")
    single = torch.load(one_process_run / "probe.pt")
    torch.testing.assert_close(sharded["logits"], single["logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sharded["values"], single["values"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_generation_gathers_parameters_once_per_call(two_process_run: Path) -> None:
    counts = json.loads((two_process_run / "gathers.json").read_text())
    # the FSDP modules of the policy: its 2 decoder layers and the root (embeddings, norm, LM head)
    assert counts["fsdp_modules"] == 3
    # generate ran prefill + one forward per further token (24 new tokens at most) ...
    assert 2 <= counts["generate_forwards"] <= 24
    # ... on a single all-gather per FSDP module for the whole call
    assert counts["generate"] == 3
    # without the context every forward gathers each layer again (2 x 3); the root keeps its parameters (1)
    assert counts["three_forwards_forwards"] == 3
    assert counts["three_forwards"] == 2 * 3 + 1


@pytest.mark.slow
def test_rank0_init_builds_once_and_broadcasts(two_process_run: Path) -> None:
    result = json.loads((two_process_run / "rank0_init.json").read_text())
    assert result["meta_by_rank"] == [False, True]
    assert result["max_logit_diff"] == pytest.approx(0.0, abs=1e-5)
    # from a checkpoint folder: rank 1 builds policy and critic on meta, and gets rank 0's weights and fresh head
    assert result["checkpoint_meta_by_rank"] == [[False, False], [True, True]]
    assert result["checkpoint_max_diffs"] == pytest.approx([0.0, 0.0], abs=1e-5)
    assert result["critic_values_spread"] > 0.01  # a non-zero head, so the critic comparison compares something


@pytest.mark.slow
def test_qlora_shared_base_trains_every_adapter_on_two_ranks(two_process_run: Path) -> None:
    # policy and critic as two LoRA adapters on one NF4 base, sharded by FSDP2 over 2 ranks, 4 E/M steps with a DCP
    # checkpoint after each: every LoRA tensor of both adapters and the critic's head moved (full values)
    for rank in (0, 1):
        result = _qlora_result(two_process_run, rank)
        assert result["world"] == 2 and result["sharded"] == "DTensor"
        assert result["linear4bit"] == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 decoder layers
        assert result["critic_is_view_of_policy_base"]
        _assert_every_trainable_tensor_moved(result["moved"])


@pytest.mark.slow
def test_qlora_shared_base_checkpoints_every_step_and_trains_on_after_a_save(two_process_run: Path) -> None:
    # RLStepCheckpoint saved after each of the 4 steps; between the first save (after the E-step 0) and the end, the
    # policy trained at steps 1 and 3 and the critic at step 2: every trainable tensor of both, head included, moved
    assert sorted(p.name for p in (two_process_run / "qlora" / "checkpoints").iterdir()) == [
        "last.ckpt", "step000001.ckpt", "step000002.ckpt", "step000003.ckpt", "step000004.ckpt"]
    assert len(list((two_process_run / "qlora" / "checkpoints" / "step000001.ckpt").glob("*.distcp"))) == 2
    for rank in (0, 1):
        result = _qlora_result(two_process_run, rank)
        assert result["saves"] == [1, 2, 3, 4] and result["all_sharded_at_saves"]
        _assert_every_trainable_tensor_moved(result["moved_after_first_save"])


@pytest.mark.slow
def test_qlora_shared_base_resumes_from_its_checkpoint_as_the_straight_run_went(two_process_run: Path) -> None:
    # resumed from step000002.ckpt: every tensor of policy (base and adapter) and critic (adapter and head) as the
    # straight run saved it, and after steps 2 and 3 the same weights, bit for bit, as the straight run
    for rank in (0, 1):
        result = _qlora_result(two_process_run, rank)
        assert result["resumed_saves"] == [3, 4]
        for key in ("restored_differ", "resumed_final_differ"):
            differ = result[key]
            assert differ["policy"] == differ["critic"] == [], f"rank {rank} {key}"
            assert differ["critic_total"] == 2 * 7 * 2 + 2 and differ["policy_total"] > 2 * 7 * 2
        straight = _records(two_process_run / "qlora", rank)
        resumed = _records(two_process_run / "qlora" / "resumed", rank)
        assert [r["rl_step"] for r in resumed] == [2, 3]
        for a, b in zip(straight[2:], resumed):
            assert (a["phase"], a["prompt_ids"]) == (b["phase"], b["prompt_ids"])
            for name in LOSS_NAMES[a["phase"]]:
                assert _loss(b, name) == _loss(a, name), f"rank {rank} step {a['rl_step']} {name}"


def _qlora_result(two_process_run: Path, rank: int) -> dict:
    return json.loads((two_process_run / "qlora" / f"qlora_rank{rank}.json").read_text())


def _assert_every_trainable_tensor_moved(moved: dict) -> None:
    assert len(moved["policy"]) == moved["policy_total"] == 2 * 7 * 2  # lora_A and lora_B per linear
    assert len(moved["critic"]) == moved["critic_total"] == 2 * 7 * 2 + 2  # and the head's weight and bias
    assert {n for n in moved["critic"] if "lora_" not in n} == {"score.weight", "score.bias"}


def test_export_of_full_single_process_checkpoint(one_process_run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tempo_pl.run.export import export_hf

    written = export_hf(one_process_run / "final.ckpt", tmp_path / "hf", save_critic=False)
    assert sorted(written) == ["policy"]
    probe = torch.load(one_process_run / "probe.pt")
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(written["policy"])(input_ids=torch.tensor(PROBE)).logits
    torch.testing.assert_close(logits, probe["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_export_of_sharded_checkpoint_gives_the_same_logits(two_process_run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    from tempo_pl.run.export import export_hf

    written = export_hf(two_process_run / "final", tmp_path / "hf")
    probe = torch.load(two_process_run / "probe.pt")
    ids = torch.tensor(PROBE)
    policy = AutoModelForCausalLM.from_pretrained(written["policy"])
    critic = AutoModelForTokenClassification.from_pretrained(written["critic"])
    with torch.no_grad():
        torch.testing.assert_close(policy(input_ids=ids).logits, probe["logits"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(critic(input_ids=ids).logits, probe["values"], rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------------------------- the worker


def qlora_config(out: Path, shared_base: bool = True) -> dict:
    """configs/fsdp2_tiny.yaml's strategy in bfloat16 around QLoRA: policy and critic as two LoRA adapters (the
    critic's value head trained in full) on one shared NF4 base, over 2 ranks; E, M, E, M, with tiny.yaml's
    RLStepCheckpoint saving a DCP folder after every RL step (all kept, under ``out/checkpoints``)."""

    def edit(cfg: dict) -> None:
        trainer, init = cfg["trainer"], cfg["model"]["init_args"]
        trainer["devices"] = 2
        trainer["strategy"] = yaml.safe_load(FSDP2_TINY.read_text())["trainer"]["strategy"]
        trainer["strategy"]["init_args"]["recipe"]["param_dtype"] = "bfloat16"  # the 4-bit storage dtype
        lora = {"r": 4, "alpha": 8}
        init["policy"].update(dtype="bfloat16", lora=lora, load_in_4bit=True)
        init["critic"] = {"seed": 1, "dtype": "bfloat16", "lora": lora, "load_in_4bit": True, "head_init_std": 0.1}
        init["shared_base"] = shared_base
        cfg["data"]["init_args"]["batch_size"] = PROMPTS_PER_STEP // 2
        init["training"].update(mini_batch_size=PROMPTS_PER_STEP // 2, micro_batch_size=64, group_filter=False)
        (checkpoint,) = [cb for cb in trainer["callbacks"] if cb["class_path"].endswith("RLStepCheckpoint")]
        checkpoint["init_args"].update(dirpath=str(out / "checkpoints"), save_top_k=-1)

    return tiny_config(out, edit, steps=4)


class TrainableProbe(Callback):
    """Full (gathered) values of every parameter of policy and critic: at the start of training, and at each
    checkpoint save, keyed by the RL steps done (a save has just resharded every FSDP module, so every value is read
    from the sharded parameters, in the dtype the optimizer updates)."""

    def __init__(self) -> None:
        self.snapshots: dict = {}
        self.all_sharded = True

    def _snapshot(self, pl_module) -> dict[str, dict[str, torch.Tensor]]:
        from torch.distributed.tensor import DTensor

        snapshot = {}
        for name in ("policy", "critic"):
            tensors = {}
            for n, p in getattr(pl_module, name).named_parameters():
                self.all_sharded &= isinstance(p, DTensor)
                tensors[n] = (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
            snapshot[name] = tensors
        return snapshot

    def on_train_start(self, trainer, pl_module) -> None:
        self.snapshots["start"] = self._snapshot(pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.snapshots[pl_module.rl_step] = self._snapshot(pl_module)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    # bytewise: packed 4-bit weights viewed as bfloat16 hold NaN patterns, and NaN != NaN
    return a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def _moved(module, before: dict, after: dict) -> dict:
    """Per model: the trainable tensors whose values differ between two snapshots, and how many are trainable."""
    result = {}
    for name in ("policy", "critic"):
        trainable = [n for n, p in getattr(module, name).named_parameters() if p.requires_grad]
        result[name] = sorted(n for n in trainable if not _same(before[name][n], after[name][n]))
        result[name + "_total"] = len(trainable)
    return result


def _differ(a: dict, b: dict) -> dict:
    """Per model: the tensors (trainable or frozen) that differ between two snapshots, and how many there are."""
    return {**{name: sorted(n for n in a[name] if not _same(a[name][n], b[name][n])) for name in a},
            **{name + "_total": len(a[name]) for name in a}}


def run_qlora_experiment(out: Path, shared_base: bool = True) -> None:
    """The shared-QLoRA run (4 steps, a checkpoint after each), then a run resumed from its checkpoint after step 2."""
    import bitsandbytes as bnb

    out.mkdir(parents=True, exist_ok=True)
    cfg = qlora_config(out, shared_base)
    cli = build(cfg, out)
    probe = TrainableProbe()
    cli.trainer.callbacks.append(probe)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    module = cli.model
    straight = probe.snapshots

    resumed_dir = out / "resumed"
    resumed_dir.mkdir(exist_ok=True)
    resumed = build(qlora_config(resumed_dir, shared_base), resumed_dir)
    resumed_probe = TrainableProbe()
    resumed.trainer.callbacks.append(resumed_probe)
    resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule,
                        ckpt_path=str(out / "checkpoints" / "step000002.ckpt"))
    result = {
        "saves": [k for k in straight if k != "start"],
        "all_sharded_at_saves": probe.all_sharded and resumed_probe.all_sharded,
        "moved": _moved(module, straight["start"], straight[4]),
        "moved_after_first_save": _moved(module, straight[1], straight[4]),
        "restored_differ": _differ(straight[2], resumed_probe.snapshots["start"]),
        "resumed_saves": [k for k in resumed_probe.snapshots if k != "start"],
        "resumed_final_differ": _differ(straight[4], resumed_probe.snapshots[4]),
        "linear4bit": sum(isinstance(m, bnb.nn.Linear4bit) for m in module.policy.modules()),
        "critic_is_view_of_policy_base": module.critic.get_base_model() is module.policy.get_base_model(),
        "sharded": type(next(p for p in module.policy.parameters() if p.requires_grad)).__name__,
        "world": cli.trainer.world_size,
    }
    (out / f"qlora_rank{cli.trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_experiment(Path(sys.argv[1]), devices=2)
    run_qlora_experiment(Path(sys.argv[1]) / "qlora")
    finish_worker()
