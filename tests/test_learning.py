"""The whole loop pushes the policy the right way: a reward the policy can easily earn rises within a few steps."""

from __future__ import annotations

from pathlib import Path

import torch

from _tiny_run import fit, rollout_records, schedule, tiny_config
from tempo_pl.rewards.base import RewardOutput, RewardSource


class SevensReward(RewardSource):
    """Fraction of response characters that are '7': a reward a random char-level policy earns by drifting."""

    name = "sevens"

    def __call__(self, rollout, stats) -> RewardOutput:
        scores = torch.tensor([t.count("7") / max(len(t), 1) for t in rollout.texts])
        return RewardOutput(scores=scores)


def test_grpo_steps_raise_an_easy_reward(tmp_path: Path) -> None:
    import sys

    sys.modules[__name__].SevensReward = SevensReward  # importable by class_path from this test module

    def edit(cfg: dict) -> None:
        schedule(cfg)["init_args"] = {"mode": "unlabeled"}
        args = cfg["model"]["init_args"]
        args.pop("critic")
        args["algorithm"] = {"advantage": "grpo", "policy_loss": "ppo", "loss_agg_mode": "token-mean",
                             "clip_low": 0.2, "clip_high": 0.28}
        args["unlabeled_reward"] = {"class_path": f"{__name__}.SevensReward"}
        args["sampling"] = {"n": 8, "max_new_tokens": 12, "max_prompt_length": 256}
        args["training"] = {"mini_batch_size": 4, "micro_batch_size": 32, "group_filter": False}
        args["policy_optimizer"] = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1.0e-2}}
        args.pop("critic_optimizer")

    fit(tiny_config(tmp_path, edit, steps=10), tmp_path)
    scores = [sum(r["scores"]) / len(r["scores"]) for r in rollout_records(tmp_path / "rollouts")]
    first, last = scores[0], sum(scores[-3:]) / 3
    # a uniform char policy writes '7' about 1% of the time; after 10 GRPO steps it is several times more
    assert last > 3 * first + 0.05, scores
