"""BaselineTelemetry: how far a label-free reward is from the truth, logged at every RL step."""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from tempo_pl.rewards.base import RewardSource
from tempo_pl.rewards.critic import CriticValue
from tempo_pl.rewards.pseudo_labels import pseudo_label_metrics
from tempo_pl.rewards.self_rewards import MajorityVote, SemanticCluster
from tempo_pl.rewards.verifier import Verifier

TELEMETRY_KEYS = ("label_accuracy", "reward_accuracy", "train_accuracy")


def default_reward_threshold(source: Optional[RewardSource]) -> Optional[float]:
    """The cut that turns a source's score into "rewarded / not rewarded" for ``reward_accuracy``.

    0/1-style self-rewards (majority vote, cluster share) cut at 0.5; the critic value estimates 2 P(correct) - 1,
    so it cuts at 0; the verifier at the midpoint of its two scores. Sources without a natural cut (self-certainty
    is unbounded) get ``None``: their ``reward_accuracy`` is not logged unless a threshold is given explicitly.
    """
    if isinstance(source, Verifier):
        return (source.correct_score + source.incorrect_score) / 2
    if isinstance(source, CriticValue):
        return 0.0
    if isinstance(source, (MajorityVote, SemanticCluster)):
        return 0.5
    return None


class BaselineTelemetry(Callback):
    """Logs pseudo-label telemetry of the unlabeled reward at every RL step that trained on D_U rows.

    After each step it reads the module's ``last_step`` record (the rows actually trained on, and their scores) and
    the data module's ``heldout_answers`` (the D_U answers that never reach a training batch), and logs to every
    logger, at the RL step:

    - ``telemetry/label_accuracy``: share of D_U groups whose majority answer is right (TTRL's pseudo-label);
    - ``telemetry/reward_accuracy``: share of D_U rows whose binarised reward equals their true correctness;
    - ``telemetry/train_accuracy``: share of D_U rows that are actually right.

    The majority ratio is logged by the module itself (``train/reward/majority_vote/majority_ratio``). The answers are
    read here, after the update, and only logged: nothing flows back into a reward or an advantage. Steps without D_U
    rows (E-steps) log nothing. Under DDP the three shares are pooled over ranks (weighted by groups and rows).

    In the oracle run (``data.init_args.expose_unlabeled_answers: true``) the D_U rows travel as labeled rows scored
    by the module's ``labeled_reward`` verifier; its scores are then the ones compared, and every logged dict carries
    ``telemetry/oracle_upper_bound = 1``.

    Args:
        reward_threshold: scores above it count as "rewarded" in ``reward_accuracy``; ``None`` takes the scoring
            source's natural cut (see :func:`default_reward_threshold`), and skips ``reward_accuracy`` for a source
            that has none (self-certainty).

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: tempo_pl.callbacks.EMSchedule
              init_args: {mode: unlabeled}
            - class_path: tempo_pl.callbacks.BaselineTelemetry
    """

    def __init__(self, reward_threshold: Optional[float] = None) -> None:
        if reward_threshold is not None and not isinstance(reward_threshold, (int, float)):
            raise ValueError(f"BaselineTelemetry.reward_threshold must be a number or None, got {reward_threshold!r}")
        self.reward_threshold = None if reward_threshold is None else float(reward_threshold)
        self.last_metrics: dict[str, float] = {}
        """What the last RL step logged (empty when it had no D_U rows)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not hasattr(pl_module, "last_step"):
            raise TypeError(f"BaselineTelemetry needs a TempoModule (with `last_step`), got {type(pl_module).__name__}")
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "heldout_answers"):
            raise RuntimeError(
                "BaselineTelemetry needs a TempoDataModule (with `heldout_answers`): fit with datamodule="
            )
        if self.reward_threshold is None and default_reward_threshold(self._scorer(trainer, pl_module)) is None:
            rank_zero_warn(
                f"BaselineTelemetry: {type(self._scorer(trainer, pl_module)).__name__} has no natural reward threshold;"
                " telemetry/reward_accuracy is not logged (set reward_threshold to log it)"
            )

    @staticmethod
    def _scorer(trainer: Trainer, pl_module: LightningModule) -> Optional[RewardSource]:
        exposed = getattr(trainer.datamodule, "expose_unlabeled_answers", False)
        return pl_module.labeled_reward if exposed else pl_module.unlabeled_reward

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        record = pl_module.last_step
        if record is None:
            return
        dm = trainer.datamodule
        threshold = self.reward_threshold
        if threshold is None:
            threshold = default_reward_threshold(self._scorer(trainer, pl_module))
        exposed = getattr(dm, "expose_unlabeled_answers", False)
        rollout = record.rollout
        batch_ids = rollout.prompt_batch.ids
        # D_L rows are never compared: only D_U rows (which travel as labeled rows only in the oracle run)
        golds = [
            dm.heldout_answers.get(pid) if (exposed or not labeled) else None
            for pid, labeled in zip(batch_ids, rollout.prompt_batch.is_labeled)
        ]
        counts = torch.zeros(5, dtype=torch.float64)  # label hits, groups, reward hits, rows, correct rows
        if rollout.num_rows and any(g is not None for g in golds):
            cut = 0.0 if threshold is None else threshold  # without a threshold reward_accuracy is dropped below
            shares = pseudo_label_metrics(rollout, record.scores, golds, threshold=cut)
            groups = sum(g is not None for g in golds)
            rows = sum(int((rollout.group_ids == i).sum()) for i, g in enumerate(golds) if g is not None)
            counts = torch.tensor(
                [shares["label_accuracy"] * groups, groups, shares["reward_accuracy"] * rows, rows,
                 shares["train_accuracy"] * rows],
                dtype=torch.float64,
            )
        # a collective: every rank calls it at every step, with zeros when it has nothing to add
        counts = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum").cpu()
        label_hits, groups, reward_hits, rows, correct = counts.tolist()
        self.last_metrics = {}
        if groups == 0:
            return
        metrics = {"telemetry/label_accuracy": label_hits / groups, "telemetry/train_accuracy": correct / rows}
        if threshold is not None:
            metrics["telemetry/reward_accuracy"] = reward_hits / rows
        if exposed:
            metrics["telemetry/oracle_upper_bound"] = 1.0
        self.last_metrics = metrics
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=record.rl_step)
