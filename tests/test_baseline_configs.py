"""The baseline configs, the zero-RL export and the baseline telemetry.

- every overlay under configs/baselines, and configs/tempo/frozen_critic.yaml, layered over configs/tiny.yaml, parses
  to the method it names and changes only the method (model, sampling, evaluation, optimizer and data stay tiny's);
- no config except the oracle lets a reward read D_U answers (a tripwire list stands in for them);
- every config runs one RL step offline on the tiny model;
- HFExport writes folders that load back by path into the same function (LoRA merged);
- BaselineTelemetry's numbers, worked out by hand on a hand-made rollout.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import pytest
import torch
import yaml

from tempo_pl.callbacks.hf_export import HFExport
from tempo_pl.callbacks.baseline_telemetry import BaselineTelemetry, default_reward_threshold
from tempo_pl.run.config_layers import flat
from tempo_pl.rewards import CriticValue, MajorityVote, SelfCertainty, SemanticCluster, Verifier
from tempo_pl.types import ForwardStats, Rollout, StepPlan
from _rollouts import prompt_batch, rollout_from_texts

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/tiny.yaml"
# the overlays, each layered over TINY
CONFIGS = {
    "ttrl": ROOT / "configs/baselines/ttrl.yaml",
    "empo": ROOT / "configs/baselines/empo.yaml",
    "intuitor": ROOT / "configs/baselines/intuitor.yaml",
    "rlvr_oracle": ROOT / "configs/baselines/rlvr_oracle.yaml",
    "zero_rl": ROOT / "configs/baselines/zero_rl.yaml",
    "frozen_critic": ROOT / "configs/tempo/frozen_critic.yaml",
}
# (unlabeled reward, advantage, policy loss, has critic, schedule mode)
METHODS = {
    "ttrl": (MajorityVote, "grpo", "gspo", False, "unlabeled"),
    "empo": (SemanticCluster, "grpo", "gspo", False, "unlabeled"),
    "intuitor": (SelfCertainty, "grpo", "gspo", False, "unlabeled"),
    "rlvr_oracle": (type(None), "grpo", "gspo", False, "unlabeled"),  # its D_U rows come labeled: labeled_reward
    "zero_rl": (CriticValue, "gae", "ppo", True, "labeled"),
    "frozen_critic": (CriticValue, "em_token", "gspo", True, "mixed"),
}
# the parts of a config that make the start point and the budget: an overlay must leave them configs/tiny.yaml's
SHARED_KEYS = ("seed_everything", "data", "trainer.max_epochs", "trainer.limit_train_batches",
               "trainer.val_check_interval", "trainer.num_sanity_val_steps", "trainer.limit_val_batches",
               "model.init_args.policy", "model.init_args.sampling", "model.init_args.evaluation",
               "model.init_args.policy_optimizer", "model.init_args.training")


def cli_of(path: Path, *extra: str):
    from tempo_pl.cli import TempoCLI

    return TempoCLI(args=["--config", str(TINY), "--config", str(path), *extra], run=False)


def test_every_baseline_config_is_covered_here():
    baselines = {p.stem for p in (ROOT / "configs/baselines").glob("*.yaml")}
    assert baselines | {"frozen_critic"} == set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_parses_to_its_method(name):
    cli = cli_of(CONFIGS[name])
    module, reward_cls = cli.model, METHODS[name][0]
    _, advantage, loss, has_critic, mode = METHODS[name]
    assert type(module.unlabeled_reward) is reward_cls
    assert (module.algorithm.advantage, module.algorithm.policy_loss) == (advantage, loss)
    assert (module.critic_spec is not None) == has_critic
    schedule = [cb for cb in cli.trainer.callbacks if type(cb).__name__ == "EMSchedule"]
    assert [s.mode for s in schedule] == [mode]
    telemetry = [cb for cb in cli.trainer.callbacks if isinstance(cb, BaselineTelemetry)]
    exports = [cb for cb in cli.trainer.callbacks if isinstance(cb, HFExport)]
    # stage 1 exports its models for the next stage; every D_U-training method logs its reward's telemetry
    assert (len(exports), len(telemetry)) == ((1, 0) if name == "zero_rl" else (0, 1))
    if name in ("ttrl", "empo", "intuitor", "rlvr_oracle"):
        # the reference baselines: no group filter, std-normalised GRPO
        assert module.training_cfg.group_filter is False and module.algorithm.grpo_norm_by_std is True
    scores = (module.labeled_reward.correct_score, module.labeled_reward.incorrect_score)
    assert scores == ((1.0, 0.0) if name == "rlvr_oracle" else (1.0, -1.0))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_overlay_changes_only_the_method(name):
    overlay = flat(yaml.safe_load(CONFIGS[name].read_text()))
    touched = [k for k in overlay for shared in SHARED_KEYS if k == shared or k.startswith(shared + ".")]
    # the oracle's one switch is the data module's; everything else that makes the start and budget is tiny's
    assert touched == (["data.init_args.expose_unlabeled_answers"] if name == "rlvr_oracle" else [])


# ------------------------------------------------------------------------------- D_U answers stay hidden


class Tripwire(list):
    """A list that fails on any read: proves a reward never looks at it."""

    def _trip(self, *args, **kwargs):
        raise AssertionError("a reward read the D_U answers")

    __getitem__ = __iter__ = __len__ = __contains__ = _trip


def rollout_of(groups: list[list[str]], ids: list[str], answers: list[Optional[str]], labeled: list[bool]) -> Rollout:
    """A rollout whose group g holds the responses ``groups[g]`` (rows g*n .. g*n+n-1), 4 response tokens each."""
    return rollout_from_texts(groups, prompt_batch(ids, answers, prompts=[f"q {i}" for i in ids], labeled=labeled))


def boxed(answer: str) -> str:
    return f"so the result is \\boxed{{{answer}}}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_only_the_oracle_reads_unlabeled_answers(name):
    cli = cli_of(CONFIGS[name])
    module, dm = cli.model, cli.datamodule
    oracle = name == "rlvr_oracle"
    assert dm.expose_unlabeled_answers is oracle
    dm.setup("fit")
    d_u = dm.unlabeled_rows[:2]
    assert set(dm.heldout_answers) >= {row.id for row in d_u}  # the answers exist, held back for evaluation
    # D_U rows reach training without answers, except in the oracle run
    assert [row.answer is not None for row in d_u] == [oracle, oracle]
    assert [row.is_labeled for row in d_u] == [oracle, oracle]

    # the source that scores D_U rows: the unlabeled reward, or in the oracle run the labeled verifier
    scorer = module.labeled_reward if oracle else module.unlabeled_reward
    assert scorer.reads_answers is oracle
    real = [dm.heldout_answers[row.id] for row in d_u]
    rollout = rollout_of([[boxed(real[0]), boxed("1")], [boxed(real[1]), "no answer"]], [r.id for r in d_u],
                         real, [True, True])
    shape = rollout.response_mask.shape
    stats = ForwardStats(old_logprobs=torch.zeros(shape), entropy=torch.zeros(shape),
                         values=torch.linspace(-1, 1, 16).reshape(shape), self_certainty=torch.ones(shape))
    before = scorer(rollout, stats).scores
    rollout.prompt_batch.answers = Tripwire(real)
    if oracle:
        assert before.tolist() == [1.0, 0.0, 1.0, 0.0]
        with pytest.raises(AssertionError, match="read the D_U answers"):
            scorer(rollout, stats)
    else:
        assert torch.equal(scorer(rollout, stats).scores, before)


# ------------------------------------------------------------------------------- one RL step of every config

TINY_RUN = (
    "--model.init_args.sampling.n=2", "--model.init_args.sampling.max_new_tokens=6",
    "--data.init_args.batch_size=2", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=0",
    "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
)


def scalar_tags(log_dir: str) -> set[str]:
    from tempo_pl.pipelines.report import read_scalars

    return set(read_scalars(Path(log_dir)))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_runs_one_rl_step_offline(name, tmp_path):
    cli = cli_of(CONFIGS[name], *TINY_RUN, f"--trainer.logger.init_args.save_dir={tmp_path}")
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    record = cli.model.last_step
    assert record is not None and record.rl_step == 0 and record.rollout.num_rows == 4  # 2 prompts x 2 samples
    assert record.plan.phase == {"zero_rl": "RL", "frozen_critic": "EM"}.get(name, "M")
    tags = scalar_tags(cli.trainer.log_dir)
    assert "train/policy/loss" in tags
    telemetry = {t for t in tags if t.startswith("telemetry/")}
    expected = {
        "ttrl": {"label_accuracy", "reward_accuracy", "train_accuracy"},
        "empo": {"label_accuracy", "reward_accuracy", "train_accuracy"},
        "intuitor": {"label_accuracy", "train_accuracy"},  # self-certainty has no natural cut
        "rlvr_oracle": {"label_accuracy", "reward_accuracy", "train_accuracy", "oracle_upper_bound"},
        "frozen_critic": {"label_accuracy", "reward_accuracy", "train_accuracy"},
        "zero_rl": set(),  # D_L only
    }[name]
    assert telemetry == {f"telemetry/{k}" for k in expected}
    assert ("train/oracle_upper_bound" in tags) is (name == "rlvr_oracle")
    if name == "ttrl":
        assert "train/reward/majority_vote/majority_ratio" in tags
    if name == "zero_rl":
        assert "train/critic/loss" in tags
        check_export_loads_back(cli, Path(cli.trainer.log_dir) / "hf")


def check_export_loads_back(cli, folder: Path) -> None:
    from tempo_pl.models.builders import CriticSpec, ModelSpec, build_critic, build_policy

    info = json.loads((folder / "export.json").read_text())
    assert info == {"rl_steps": 1, "policy": str(folder / "policy"), "critic": str(folder / "critic")}
    policy = build_policy(ModelSpec(name_or_path=info["policy"]))
    critic = build_critic(CriticSpec(name_or_path=info["critic"]))
    for live, loaded in ((cli.model.policy, policy), (cli.model.critic, critic)):
        live_state, loaded_state = live.state_dict(), loaded.state_dict()
        assert set(live_state) == set(loaded_state)
        assert all(torch.equal(live_state[k].cpu(), loaded_state[k]) for k in live_state)


# ------------------------------------------------------------------------------- HFExport


def fake_trainer(tmp_path: Path, global_zero: bool = True):
    barriers = []
    strategy = SimpleNamespace(barrier=lambda name=None: barriers.append(name))
    return SimpleNamespace(is_global_zero=global_zero, strategy=strategy, log_dir=str(tmp_path / "log"),
                           default_root_dir=str(tmp_path)), barriers


def test_hf_export_merges_lora_into_copies_that_load_by_path(tmp_path, tiny_policy_spec, tiny_critic_spec):
    from peft import PeftModel

    from tempo_pl.models.builders import CriticSpec, LoraSpec, ModelSpec, build_critic, build_policy, build_tokenizer

    tiny_policy_spec.lora = LoraSpec(r=2, alpha=4)
    policy = build_policy(tiny_policy_spec)
    critic = build_critic(tiny_critic_spec, tiny_policy_spec)
    with torch.no_grad():  # LoRA B starts at zero: make the adapters matter, or merging would change nothing
        torch.manual_seed(0)
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
        critic.score.weight.normal_(0.0, 0.5)
    tokenizer = build_tokenizer(tiny_policy_spec)
    module = SimpleNamespace(policy=policy, critic=critic, tokenizer=tokenizer, rl_step=3)
    trainer, barriers = fake_trainer(tmp_path)

    export = HFExport()  # default folder: <log_dir>/hf
    export.on_train_end(trainer, module)

    root = tmp_path / "log" / "hf"
    assert barriers == ["hf_export"]
    assert json.loads((root / "export.json").read_text()) == {
        "rl_steps": 3, "policy": str(root / "policy"), "critic": str(root / "critic")}
    assert isinstance(policy, PeftModel)  # the live model keeps its adapters
    ids = torch.tensor([tokenizer("Start with 7. Add 5.").input_ids])
    loaded_policy = build_policy(ModelSpec(name_or_path=str(root / "policy")))
    loaded_critic = build_critic(CriticSpec(name_or_path=str(root / "critic")))
    assert not isinstance(loaded_policy, PeftModel)
    with torch.no_grad():
        adapted = policy(ids).logits
        with policy.disable_adapter():
            assert not torch.allclose(policy(ids).logits, adapted, atol=1e-4)  # the adapters do change the output
        torch.testing.assert_close(loaded_policy(ids).logits, adapted, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded_critic(ids).logits, critic(ids).logits, atol=1e-6, rtol=1e-6)
    assert build_tokenizer(ModelSpec(name_or_path=str(root / "policy")))("7+5").input_ids == tokenizer("7+5").input_ids


def test_hf_export_writes_on_rank_zero_only_and_policy_only_when_asked(tmp_path, tiny_policy_spec, tiny_critic_spec):
    from tempo_pl.models.builders import build_critic, build_policy, build_tokenizer

    policy = build_policy(tiny_policy_spec)
    module = SimpleNamespace(policy=policy, critic=build_critic(tiny_critic_spec, tiny_policy_spec),
                             tokenizer=build_tokenizer(tiny_policy_spec), rl_step=2)
    trainer, barriers = fake_trainer(tmp_path, global_zero=False)
    HFExport(dirpath=str(tmp_path / "out")).on_train_end(trainer, module)
    assert barriers == ["hf_export"] and not (tmp_path / "out").exists()  # the other ranks only wait

    trainer, _ = fake_trainer(tmp_path)
    export = HFExport(dirpath=str(tmp_path / "out"), save_critic=False)
    export.on_train_end(trainer, module)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["export.json", "policy"]
    assert export.written == {"policy": str(tmp_path / "out" / "policy")}


def test_hf_export_validates_and_refuses_sharded_runs():
    from lightning.pytorch.strategies import ModelParallelStrategy

    with pytest.raises(ValueError, match="HFExport.dirpath"):
        HFExport(dirpath=" ")
    trainer = SimpleNamespace(strategy=ModelParallelStrategy.__new__(ModelParallelStrategy))
    with pytest.raises(ValueError, match="unsharded models only"):
        HFExport().setup(trainer, SimpleNamespace(), "fit")


# ------------------------------------------------------------------------------- BaselineTelemetry

# Group "u:0" (gold 4): answers 4, 2+2, 5, none -> majority {4, 2+2} = 4, right.   correct: 1 1 0 0
# Group "u:1" (gold 3): answers 7, 3, 3, 7     -> tie, 7 came first: wrong label.  correct: 0 1 1 0
# Group "l:0", a D_L group whose id also appears among the held-back answers (gold 9): answers 9 9 9 9.
GROUPS = [[boxed("4"), boxed("2+2"), boxed("5"), "none"], [boxed("7"), boxed("3"), boxed("3"), boxed("7")],
          [boxed("9")] * 4]
HELDOUT = {"u:0": "4", "u:1": "3", "l:0": "9"}
# majority-vote scores: u:0 -> 1 1 0 0, u:1 -> 1 0 0 1 (votes for 7), l:0 -> 1 1 1 1
SCORES = torch.tensor([1.0, 1, 0, 0, 1, 0, 0, 1, 1, 1, 1, 1])


class RecordingLogger:
    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step):
        self.calls.append((dict(metrics), step))


def telemetry_setup(exposed=False, reward=None, other_rank_counts=None, global_zero=True):
    """A fake trainer and module around the hand-made rollout at RL step 7; ``other_rank_counts`` is what another
    rank adds in the reduction (label hits, groups, reward hits, rows, correct rows)."""
    rollout = rollout_of(GROUPS, ["u:0", "u:1", "l:0"], [None, None, "9"], [False, False, True])
    if exposed:  # the oracle: D_U rows travel as labeled rows, with their answers
        rollout = rollout_of(GROUPS, ["u:0", "u:1", "l:0"], ["4", "3", "9"], [True, True, True])
    record = SimpleNamespace(rl_step=7, plan=StepPlan("M", "unlabeled", False, True), rollout=rollout,
                             scores=SCORES.clone(), metrics={})
    logger = RecordingLogger()
    extra = torch.zeros(5, dtype=torch.float64) if other_rank_counts is None else torch.tensor(
        other_rank_counts, dtype=torch.float64)
    strategy = SimpleNamespace(reduce=lambda t, reduce_op: t + extra)
    trainer = SimpleNamespace(
        datamodule=SimpleNamespace(heldout_answers=HELDOUT, expose_unlabeled_answers=exposed),
        strategy=strategy, is_global_zero=global_zero, loggers=[logger],
    )
    module = SimpleNamespace(last_step=record, device=torch.device("cpu"),
                             labeled_reward=Verifier(correct_score=1.0, incorrect_score=0.0),
                             unlabeled_reward=reward if reward is not None else MajorityVote())
    return trainer, module, logger


def test_telemetry_numbers_on_unlabeled_groups_only():
    trainer, module, logger = telemetry_setup()
    callback = BaselineTelemetry()
    callback.setup(trainer, module, "fit")
    callback.on_train_batch_end(trainer, module, None, None, 0)
    # label: u:0 right, u:1 wrong -> 1/2. rows (8, the D_L group is left out although its id has a gold):
    # rewarded (score > 0.5) 1 1 0 0 1 0 0 1 vs correct 1 1 0 0 0 1 1 0 -> 4 of 8 agree; correct 4 of 8
    expected = {"telemetry/label_accuracy": 0.5, "telemetry/reward_accuracy": 0.5, "telemetry/train_accuracy": 0.5}
    assert logger.calls == [(pytest.approx(expected), 7)]
    assert callback.last_metrics == pytest.approx(expected)


def test_telemetry_counts_exposed_rows_in_the_oracle_run_and_marks_it():
    trainer, module, logger = telemetry_setup(exposed=True)
    BaselineTelemetry().on_train_batch_end(trainer, module, None, None, 0)
    # all three groups: labels right, wrong, right -> 2/3; rows: the 8 above plus 4 rewarded and correct
    # -> reward agreement (4 + 4) / 12, correct (4 + 4) / 12; the scorer is the 1/0 labeled Verifier (cut 0.5)
    expected = {"telemetry/label_accuracy": 2 / 3, "telemetry/reward_accuracy": 8 / 12,
                "telemetry/train_accuracy": 8 / 12, "telemetry/oracle_upper_bound": 1.0}
    assert logger.calls == [(pytest.approx(expected), 7)]


def run_telemetry(reward, scores, threshold=None) -> dict[str, float]:
    trainer, module, logger = telemetry_setup(reward=reward)
    module.last_step.scores = torch.tensor(scores)
    BaselineTelemetry(reward_threshold=threshold).on_train_batch_end(trainer, module, None, None, 0)
    return logger.calls[0][0]


# true correctness of the 8 D_U rows: 1 1 0 0 | 0 1 1 0
def test_telemetry_reward_accuracy_uses_the_critic_cut_at_zero():
    # signed critic-like values: > 0 exactly on the correct rows -> 8/8 agree at the default cut 0 ...
    values = [0.3, 0.3, -0.3, -0.3, -0.3, 0.3, 0.3, -0.3, 0.3, 0.3, 0.3, 0.3]
    assert run_telemetry(CriticValue(), values)["telemetry/reward_accuracy"] == pytest.approx(1.0)
    # ... while the 0/1 rewards' cut 0.5 rewards no row: only the 4 incorrect rows agree -> 4/8
    assert run_telemetry(MajorityVote(), values)["telemetry/reward_accuracy"] == pytest.approx(0.5)
    assert default_reward_threshold(Verifier()) == 0.0  # midpoint of +1 / -1
    assert default_reward_threshold(SemanticCluster()) == 0.5


def test_telemetry_explicit_threshold_and_none_for_self_certainty():
    scores = [3.0, 3, 0, 0, 3, 3, 3, 3, 3, 3, 3, 3]
    # cut 2: rewarded 1 1 0 0 | 1 1 1 1 vs correct 1 1 0 0 | 0 1 1 0 -> 4 + 2 agree = 6/8
    assert run_telemetry(SelfCertainty(), scores, 2.0)["telemetry/reward_accuracy"] == pytest.approx(0.75)
    # cut 4: nothing rewarded -> the 4 incorrect rows agree = 4/8
    assert run_telemetry(SelfCertainty(), scores, 4.0)["telemetry/reward_accuracy"] == pytest.approx(0.5)
    # self-certainty has no natural cut: reward_accuracy is left out (with a warning at setup), the others stay
    trainer, module, _ = telemetry_setup(reward=SelfCertainty())
    with pytest.warns(UserWarning, match="no natural reward threshold"):
        BaselineTelemetry().setup(trainer, module, "fit")
    logged = run_telemetry(SelfCertainty(), scores)
    assert logged == pytest.approx({"telemetry/label_accuracy": 0.5, "telemetry/train_accuracy": 0.5})
    with pytest.raises(ValueError, match="reward_threshold"):
        BaselineTelemetry(reward_threshold="high")


def test_telemetry_pools_ranks_by_groups_and_rows():
    # another rank saw 2 groups with wrong labels and 8 rows, 2 of them rewarded correctly, none correct
    trainer, module, logger = telemetry_setup(other_rank_counts=[0, 2, 2, 8, 0])
    BaselineTelemetry().on_train_batch_end(trainer, module, None, None, 0)
    # label (1 + 0) / (2 + 2) = 1/4; reward (4 + 2) / 16 = 3/8; correct (4 + 0) / 16 = 1/4
    expected = {"telemetry/label_accuracy": 0.25, "telemetry/reward_accuracy": 0.375,
                "telemetry/train_accuracy": 0.25}
    assert logger.calls == [(pytest.approx(expected), 7)]
    # a non-zero rank takes part in the reduction but does not log
    trainer, module, logger = telemetry_setup(global_zero=False)
    callback = BaselineTelemetry()
    callback.on_train_batch_end(trainer, module, None, None, 0)
    assert logger.calls == [] and callback.last_metrics["telemetry/label_accuracy"] == 0.5


def test_telemetry_logs_nothing_on_a_step_without_unlabeled_rows():
    trainer, module, logger = telemetry_setup()
    labeled_only = rollout_of([[boxed("9")] * 4], ["l:0"], ["9"], [True])
    module.last_step.rollout, module.last_step.scores = labeled_only, torch.ones(4)
    callback = BaselineTelemetry()
    callback.on_train_batch_end(trainer, module, None, None, 0)
    assert logger.calls == [] and callback.last_metrics == {}
