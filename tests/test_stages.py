"""The stages of one RL step, each on its own: the refill loop with stub callables, mini-batch accumulation on a
linear model, scoring with a reward that keeps only some rows, and a TempoModule built directly in Python."""

from __future__ import annotations

import copy

import pytest
import torch

from tempo_pl.stages.collection import CollectOptions, collect_rollout, groups_with_signal
from tempo_pl.stages.minibatch import MiniBatchPlan, index_chunks, optimize
from tempo_pl.rewards.base import RewardOutput, RewardSource
from tempo_pl.stages.scoring import LABELED_SCORES, apply_keep_rows, score_rollout
from tempo_pl.types import ForwardStats, PromptBatch, Rollout
from _rollouts import rollout_from_tokens


def make_rollout(batch: PromptBatch, n: int, length: int = 3) -> Rollout:
    rows = len(batch) * n
    return rollout_from_tokens(batch, n, [[1, 1]] * rows, [range(r * length, (r + 1) * length) for r in range(rows)],
                               texts=[f"{pid}#{k}" for pid in batch.ids for k in range(n)])


def prompt_batch(ids: list[str], labeled: bool = True) -> PromptBatch:
    return PromptBatch(ids=ids, prompts=ids, answers=["1" if labeled else None] * len(ids),
                       is_labeled=[labeled] * len(ids))


def test_mini_batches_count_prompts_when_a_reward_kept_groups_of_unequal_size():
    """3 prompts whose groups kept 5, 1 and 1 rows: one prompt per mini-batch is 3 mini-batches, not the 4 that
    rows // prompts = 2 rows each would make."""
    from types import SimpleNamespace

    from tempo_pl.stages.minibatch import mini_batches

    full = make_rollout(prompt_batch(["a", "b", "c"], labeled=False), n=5)
    kept = full.select_rows(torch.tensor([0, 1, 2, 3, 4, 5, 10]))
    training = SimpleNamespace(mini_batch_size=1, micro_batch_size=4, ppo_epochs=1, micro_batch_tokens=None)
    plan = MiniBatchPlan.of(training, kept, grad_clip=0.0)
    assert plan.rows_per_mini_batch == 3  # ceil(7 rows / 3 prompts)
    assert [len(m) for m in mini_batches(kept.num_rows, plan.rows_per_mini_batch)] == [3, 3, 1]
    # equal groups: exactly mini_batch_size x n rows, as before
    assert MiniBatchPlan.of(SimpleNamespace(**{**vars(training), "mini_batch_size": 2}), full, 0.0).rows_per_mini_batch == 10


# ---------------------------------------------------------------------------------------------- collection
def test_groups_without_signal_are_labeled_groups_whose_scores_all_agree():
    batch = PromptBatch(ids=["a", "b", "c"], prompts=["a", "b", "c"], answers=["1", "1", None],
                        is_labeled=[True, True, False])
    rollout = make_rollout(batch, n=2)
    scores = torch.tensor([1.0, 1.0, 1.0, -1.0, 0.0, 0.0])  # a: all right; b: mixed; c: unlabeled, never dropped
    assert groups_with_signal(rollout, scores) == [1, 2]


def test_refill_draws_until_the_batch_is_full_and_keeps_grades_per_row():
    batches = [prompt_batch(["p0", "p1", "p2"]), prompt_batch(["p3", "p4", "p5"]), prompt_batch(["p6", "p7", "p8"])]
    # even prompts are all-right groups (no signal), odd ones mixed
    grade = lambda r: torch.tensor([1.0 if int(t.split("#")[0][1:]) % 2 == 0 or t.endswith("#0") else -1.0  # noqa: E731
                                    for t in r.texts])
    drawn = []

    def draw(i: int) -> PromptBatch:
        drawn.append(i)
        return batches[i]

    out = collect_rollout(draw, lambda b: make_rollout(b, n=2), grade, CollectOptions(True, 10, pad_token_id=0))
    # kept: p1 (batch 0), p3, p5 (batch 1) -> 3 groups after 2 batches
    assert drawn == [0, 1]
    assert out.rollout.prompt_batch.ids == ["p1", "p3", "p5"]
    assert out.rollout.extra[LABELED_SCORES].tolist() == [1.0, -1.0] * 3
    assert out.metrics == {"filter/kept_fraction": 0.5, "filter/generation_batches": 2.0,
                           "filter/filtered_groups": 3.0, "filter/underfilled": 0.0,
                           "rollout/dropped_overlong_prompts": 0.0, "rollout/truncated_prompts": 0.0}


def test_refill_stops_at_the_limit_and_trains_on_what_was_kept_or_refuses():
    batches = [prompt_batch(["p0", "p1", "p2", "p3"]), prompt_batch(["p4", "p5", "p6", "p7"])]
    all_right = lambda r: torch.tensor([1.0 if t.startswith(("p0", "p2")) else  # noqa: E731
                                        (1.0 if t.endswith("#0") else -1.0) for t in r.texts])
    out = collect_rollout(lambda i: batches[i], lambda b: make_rollout(b, n=2), all_right,
                          CollectOptions(True, 1, pad_token_id=0))
    assert out.rollout.prompt_batch.ids == ["p1", "p3"]
    assert out.metrics["filter/generation_batches"] == 1.0 and out.metrics["filter/underfilled"] == 1.0

    with pytest.raises(RuntimeError, match=r"only 2 of 4 prompt groups kept after 1 generation batches"):
        collect_rollout(lambda i: batches[i], lambda b: make_rollout(b, n=2), all_right,
                        CollectOptions(True, 1, pad_token_id=0, underfilled="error"))

    nothing = collect_rollout(lambda i: batches[i], lambda b: make_rollout(b, n=2), lambda r: torch.ones(r.num_rows),
                              CollectOptions(True, 2, pad_token_id=0))
    assert nothing.rollout.num_rows == 0 and nothing.metrics["filter/kept_fraction"] == 0.0


def test_two_ranks_keep_the_groups_one_process_keeps_on_the_concatenated_batch():
    """Rank r draws every 2nd prompt of the one-process batch (as the prompt streams stride); kept groups are counted
    over both ranks, ordered as one process drawing all of them would keep them, and shared out equally."""
    import pickle
    import threading

    from test_global_batch import run_ranks

    from tempo_pl.stages.ranks import Ranks

    def number(text: str) -> int:
        return int(text.split("#")[0][1:])

    # prompts whose number is a multiple of 3 are all right (no signal) and dropped
    grade = lambda r: torch.tensor([1.0 if number(t) % 3 == 0 or t.endswith("#0") else -1.0  # noqa: E731
                                    for t in r.texts])
    one_process = [[f"p{6 * i + j}" for j in range(6)] for i in range(3)]
    per_rank = {rank: [batch[rank::2] for batch in one_process] for rank in (0, 1)}
    options = CollectOptions(True, 10, pad_token_id=0)
    exchange, barrier = {}, threading.Barrier(2)

    def exchange_objects(rank, blob):
        exchange[rank] = blob
        barrier.wait()
        both = [exchange[0], exchange[1]]
        barrier.wait()
        return both

    def on_rank(rank, reduce):
        ranks = Ranks(world=2, rank=rank, sum=lambda v: reduce(torch.tensor(v, dtype=torch.float64)).tolist(),
                      gather=lambda obj: [pickle.loads(b) for b in exchange_objects(rank, pickle.dumps(obj))])
        out = collect_rollout(lambda i: prompt_batch(per_rank[rank][i]), lambda b: make_rollout(b, n=2), grade,
                              options, ranks=ranks)
        return out.rollout.prompt_batch.ids, out.metrics

    (ids0, m0), (ids1, m1) = run_ranks(2, on_rank)
    # one process keeps p1 p2 p4 p5 from its first batch and p7 p8 p10 p11 from the second: the first 6, 3 per rank
    assert (ids0, ids1) == (["p1", "p2", "p4"], ["p5", "p7", "p8"])
    single = collect_rollout(lambda i: prompt_batch(one_process[i]), lambda b: make_rollout(b, n=2), grade, options)
    assert single.rollout.prompt_batch.ids == ids0 + ids1
    assert m0 == m1 == single.metrics


# ---------------------------------------------------------------------------------------------- mini-batches
def test_micro_batches_accumulate_to_the_mini_batch_gradient():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8)
    base = torch.nn.Linear(3, 1)

    def run(rows_per_micro: int, rows_per_mini: int, epochs: int = 1):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        steps = []
        opt.step = (lambda step: lambda *a, **k: (steps.append(1), step(*a, **k))[1])(opt.step)

        def micro_loss(rows):
            loss = ((model(x[rows]).squeeze(-1) - y[rows]) ** 2).mean()
            return loss, {"loss": loss}

        out = optimize(8, MiniBatchPlan(rows_per_mini, rows_per_micro, epochs, grad_clip=0.0), opt, sched,
                       micro_loss, backward=lambda loss: loss.backward(), clip_gradients=lambda *a: None)
        return model, len(steps), out

    whole, whole_steps, _ = run(rows_per_micro=8, rows_per_mini=8)
    micro, micro_steps, out = run(rows_per_micro=3, rows_per_mini=8)
    assert whole_steps == micro_steps == 1
    for a, b in zip(whole.parameters(), micro.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert out["lr"] == pytest.approx(0.05) and out["grad_norm"] > 0
    _, steps, _ = run(rows_per_micro=2, rows_per_mini=4, epochs=2)
    assert steps == 4  # 2 mini-batches x 2 epochs
    assert [c.tolist() for c in index_chunks(5, 2)] == [[0, 1], [2, 3], [4]]


# ---------------------------------------------------------------------------------------------- scoring
class KeepFirstOfEachGroup(RewardSource):
    """Scores unlabeled rows 0.5 and keeps only the first row of each group (as TTRL keeps a subsample)."""

    name = "keep_first"

    def __call__(self, rollout, stats):
        n = rollout.n_per_prompt
        keep = torch.tensor([row % n == 0 for row in range(rollout.num_rows)])
        return RewardOutput(torch.full((rollout.num_rows,), 0.5), {"kept": float(keep.sum())}, keep)


class Constant(RewardSource):
    name = "constant"

    def __init__(self, value: float) -> None:
        self.value = value
        self.calls = 0

    def __call__(self, rollout, stats):
        self.calls += 1
        return RewardOutput(torch.full((rollout.num_rows,), self.value))


def test_score_gives_each_kind_of_row_its_source_and_keeps_the_rows_asked_for():
    batch = PromptBatch(ids=["l", "u"], prompts=["l", "u"], answers=["1", None], is_labeled=[True, False])
    rollout = make_rollout(batch, n=3)
    stats = ForwardStats.zeros(rollout)
    verifier = Constant(1.0)
    out = score_rollout(rollout, stats, verifier, KeepFirstOfEachGroup())
    assert out.scores.tolist() == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5] and verifier.calls == 1
    assert out.keep_rows.tolist() == [True, True, True, True, False, False]
    assert out.metrics == {"reward/keep_first/kept": 1.0}
    kept, kept_stats, kept_reward = apply_keep_rows(rollout, stats, out)
    assert kept.texts == ["l#0", "l#1", "l#2", "u#0"] and kept.group_ids.tolist() == [0, 0, 0, 1]
    assert kept_stats.old_logprobs.shape == (4, 3) and kept_reward.keep_rows is None

    rollout.extra[LABELED_SCORES] = torch.tensor([-1.0, 1.0, -1.0, 0.0, 0.0, 0.0])  # graded while filtering
    again = score_rollout(rollout, stats, verifier, Constant(0.25))
    assert again.scores.tolist() == [-1.0, 1.0, -1.0, 0.25, 0.25, 0.25] and verifier.calls == 1


# ---------------------------------------------------------------------------------------------- the module
@pytest.fixture
def module(tiny_policy_spec, tiny_critic_spec):
    from tempo_pl.config import TrainingConfig
    from tempo_pl.module import TempoModule
    from tempo_pl.config import SamplingConfig

    m = TempoModule(policy=tiny_policy_spec, critic=tiny_critic_spec,
                    sampling=SamplingConfig(n=2, max_new_tokens=6, max_prompt_length=64),
                    training=TrainingConfig(mini_batch_size=1, micro_batch_size=1, group_filter=False),
                    unlabeled_reward=KeepFirstOfEachGroup())
    m.configure_model()
    return m


def test_module_stages_called_directly(module):
    from tempo_pl.types import StepPlan

    module.set_step_plan(StepPlan("EM", "mixed", update_critic=True, update_policy=True))
    module.training_cfg.on_policy_ratio = False  # the separate no-grad pass computes the old log-probs
    batch = PromptBatch(ids=["l", "u"], prompts=["1+1=", "2+2="], answers=["2", None], is_labeled=[True, False])
    rollout = module.rollout(batch)
    assert rollout.num_rows == 4 and rollout.response_ids.shape[1] <= 6
    stats = module.forward_stats(rollout)
    assert stats.old_logprobs.shape == rollout.response_mask.shape and stats.values is not None
    assert torch.all(stats.old_logprobs[rollout.response_mask.bool()] <= 0)
    assert module.policy.training  # the no-grad pass puts the models back in train mode
    reward = module.score(rollout, stats)
    assert reward.scores[2:].tolist() == [0.5, 0.5] and reward.keep_rows.tolist() == [True, True, True, False]
    assert set(reward.scores[:2].tolist()) <= {-1.0, 1.0}  # the verifier's +-1 on the labeled rows
    adv, returns = module.advantages(rollout, stats, reward.scores)
    assert adv.shape == returns.shape == rollout.response_mask.shape
    # em_token: the critic's head starts at zero, so every value is 0 and a row's return is its score
    assert torch.allclose(returns, reward.scores.unsqueeze(-1) * rollout.response_mask)


def test_module_trains_on_the_kept_rows_in_micro_batches_of_one(module, tmp_path):
    """A fit built in Python: the step trains on the rows the reward kept, one row per forward/backward."""
    from lightning.pytorch import Trainer

    from tempo_pl.callbacks import EMSchedule
    from tempo_pl.data.datamodule import TempoDataModule
    from tempo_pl.data.sources import DatasetSpec

    data = TempoDataModule(labeled=DatasetSpec(path="synthetic:labeled?size=8"),
                           unlabeled=DatasetSpec(path="synthetic:unlabeled?size=8"), batch_size=2)
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[EMSchedule(mode="mixed")])
    before = [p.detach().clone() for p in module.policy.parameters()]
    trainer.fit(module, datamodule=data)
    record = module.last_step
    assert module.rl_step == 1 and record.rl_step == 0
    # a mixed batch of 2 prompts: the labeled group keeps its 2 rows, the unlabeled group its first row
    assert record.rollout.num_rows == 3
    assert record.rollout.is_labeled.tolist() == [True, True, False]
    # mini-batches of 1 prompt = rows // prompts = 1 row once groups differ in size: 3 mini-batches, but the rows
    # are dealt stratified (2 labeled, 1 unlabeled into 3) and the empty third is dropped: 2 steps per model
    assert trainer.global_step == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, module.policy.parameters()))


class CountingEngine:
    """A rollout engine named from YAML: the transformers engine, counting its calls and the sampling they used."""

    calls: list = []

    def __init__(self, tokenizer, sampling, micro_batch_size=None, label: str = "counting") -> None:
        from tempo_pl.engines.hf_generate import HFGenerateEngine

        self.inner = HFGenerateEngine(tokenizer, sampling, micro_batch_size)
        self.label = label
        self.synced = 0

    def generate(self, model, prompts, n, sampling=None):
        CountingEngine.calls.append((self.label, n, None if sampling is None else sampling.max_new_tokens))
        return self.inner.generate(model, prompts, n, sampling=sampling)

    def sync_weights(self, model) -> None:
        self.synced += 1


def test_the_rollout_engine_is_chosen_in_yaml_and_synced_after_policy_updates(tmp_path):
    from _tiny_run import fit, schedule, tiny_config

    def edit(cfg: dict) -> None:
        schedule(cfg)["init_args"] = {"mode": "alternate", "e_steps": 1, "m_steps": 1}
        cfg["model"]["init_args"]["rollout_engine"] = {"class_path": "test_stages.CountingEngine",
                                                       "init_args": {"label": "from-yaml"}}
        cfg["trainer"]["limit_val_batches"] = 1

    CountingEngine.calls = []
    cli = fit(tiny_config(tmp_path, edit, steps=2), tmp_path)
    assert isinstance(cli.model.engine, CountingEngine) and cli.model.engine.label == "from-yaml"
    assert cli.model.engine.synced == 1  # an E-step then an M-step: one policy update
    # two training rollouts (n=4, the engine's own sampling) and evaluation (k=2 and its own 16-token budget)
    assert CountingEngine.calls[:2] == [("from-yaml", 4, None), ("from-yaml", 4, None)]
    assert ("from-yaml", 2, 16) in CountingEngine.calls


def test_step_metrics_report_the_gap_between_sampler_and_trainer_log_probs():
    from tempo_pl.stages.metrics import step_metrics

    batch = PromptBatch(ids=["u"], prompts=["u"], answers=[None], is_labeled=[False])
    rollout = make_rollout(batch, n=2)
    rollout.response_mask[1, 2] = 0.0
    rollout.sampling_logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -9.0]])
    stats = ForwardStats(old_logprobs=torch.tensor([[-1.1, -2.0, -2.5], [-1.0, -1.3, 0.0]]),
                         entropy=torch.zeros(2, 3))
    reward = RewardOutput(torch.zeros(2))
    m = step_metrics(rollout, stats, reward, torch.zeros(2, 3), torch.zeros(2, 3))
    # gaps on valid tokens: 0.1, 0, 0.5, 0, 0.3 (the masked 9.0 is left out)
    assert m["rollout/logprob_gap_mean"] == pytest.approx(0.18)
    assert m["rollout/logprob_gap_max"] == pytest.approx(0.5)
