"""TempoModule: the TEMPO actor-critic loop as a LightningModule with manual optimization.

One ``training_step`` is one RL step (spec section 3.2): draw prompts from the stream the
:class:`~tempo_pl.callbacks.EMSchedule` callback chose, generate n responses per prompt, score them, drop labeled
groups that carry no signal and refill, run one no-grad pass for old log-probs and values, compute advantages, then
update the critic (E-step, labeled rows) and the policy (M-step) in mini-batches. Every stage is a method a research
subclass can override; the arithmetic lives in :mod:`tempo_pl.algorithms` as pure functions.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from tempo_pl.algorithms import advantages as adv_fns
from tempo_pl.algorithms import losses as loss_fns
from tempo_pl.algorithms.token_stats import explained_variance
from tempo_pl.config import AlgorithmConfig, EvalConfig, TrainingConfig
from tempo_pl.models import (
    CriticSpec,
    ModelSpec,
    build_critic,
    build_policy,
    build_tokenizer,
    critic_response_values,
    policy_response_stats,
    sequence_inputs,
)
from tempo_pl.rewards.base import RewardOutput, RewardSource
from tempo_pl.rewards.critic import CriticValue
from tempo_pl.rewards.verifier import Verifier
from tempo_pl.rollout import HFGenerateEngine, SamplingSpec
from tempo_pl.types import PHASE_CODES, ForwardStats, PromptBatch, Rollout, StepPlan

log = logging.getLogger(__name__)


@dataclass
class StepRecord:
    """What the last RL step did, for callbacks (sample logging, baseline telemetry) to read in
    ``on_train_batch_end``: the rollout actually trained on, its per-row scores, and the logged metrics."""

    rl_step: int
    plan: StepPlan
    rollout: Rollout
    scores: Tensor
    metrics: dict[str, float]


def _default_policy_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0)


def _default_critic_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-6, weight_decay=0.01)


class TempoModule(LightningModule):
    """Policy and critic of TEMPO test-time training, trained with manual optimization.

    Args:
        policy: the causal LM to train (hub name, local path, or a config for a random tiny model).
        critic: the value model; ``None`` runs critic-free (the GRPO/RLOO baselines).
        sampling: rollout sampling (n responses per prompt, temperature, lengths).
        algorithm: advantage estimator and losses.
        training: mini-batching, epochs, clipping, group filtering.
        evaluation: validation sampling and metrics.
        labeled_reward: scores labeled rows (default: the ground-truth :class:`Verifier`, +1/-1).
        unlabeled_reward: scores unlabeled rows (default: :class:`CriticValue`, TEMPO's critic reward).
        policy_optimizer: optimizer of the policy's trainable parameters.
        critic_optimizer: optimizer of the critic's trainable parameters.
        policy_scheduler: LR scheduler of the policy, stepped once per policy optimizer step.
        critic_scheduler: LR scheduler of the critic, stepped once per critic optimizer step.
        shared_base: policy and critic share one frozen (4-bit) base with two LoRA adapters, which roughly halves
            memory; needs ``lora`` on both specs (see :mod:`tempo_pl.shared_base`).

    Example (YAML, ``tempo-pl fit --config``)::

        model:
          class_path: tempo_pl.TempoModule
          init_args:
            policy: {name_or_path: Qwen/Qwen3-8B-Base}
            critic: {name_or_path: /ckpt/stage1/critic}
            sampling: {n: 8, max_new_tokens: 16384}

    A research subclass overrides one stage, e.g. :meth:`advantages` or :meth:`policy_loss`, and inherits the rest
    (see ``examples/custom_advantage.py``).
    """

    def __init__(
        self,
        policy: ModelSpec,
        critic: Optional[CriticSpec] = None,
        sampling: Optional[SamplingSpec] = None,
        algorithm: Optional[AlgorithmConfig] = None,
        training: Optional[TrainingConfig] = None,
        evaluation: Optional[EvalConfig] = None,
        labeled_reward: Optional[RewardSource] = None,
        unlabeled_reward: Optional[RewardSource] = None,
        policy_optimizer: OptimizerCallable = _default_policy_optimizer,
        critic_optimizer: OptimizerCallable = _default_critic_optimizer,
        policy_scheduler: Optional[LRSchedulerCallable] = None,
        critic_scheduler: Optional[LRSchedulerCallable] = None,
        shared_base: bool = False,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.policy_spec = policy
        self.critic_spec = critic
        self.sampling = sampling or SamplingSpec()
        self.algorithm = algorithm or AlgorithmConfig()
        self.training_cfg = training or TrainingConfig()
        self.evaluation = evaluation or EvalConfig()
        self.labeled_reward = labeled_reward or Verifier()
        if unlabeled_reward is None:
            unlabeled_reward = CriticValue() if critic is not None else None
        self.unlabeled_reward = unlabeled_reward
        self.policy_optimizer_fn = policy_optimizer
        self.critic_optimizer_fn = critic_optimizer
        self.policy_scheduler_fn = policy_scheduler
        self.critic_scheduler_fn = critic_scheduler
        self.shared_base = shared_base
        self._validate_options()

        self.policy: Optional[torch.nn.Module] = None
        self.critic: Optional[torch.nn.Module] = None
        self.reference: Optional[torch.nn.Module] = None
        self.tokenizer = None
        self.engine: Optional[HFGenerateEngine] = None
        self.step_plan: Optional[StepPlan] = None
        self.rl_step = 0
        self.last_step: Optional[StepRecord] = None
        self._val_records: dict[int, list] = {}
        self.save_hyperparameters(ignore=["labeled_reward", "unlabeled_reward"])

    # ------------------------------------------------------------------ configuration
    def _validate_options(self) -> None:
        alg = self.algorithm
        if self.shared_base and (self.critic_spec is None or self.policy_spec.lora is None or self.critic_spec.lora is None):
            raise ValueError("shared_base=true needs a critic and `lora` on both policy and critic specs")
        if alg.needs_critic and self.critic_spec is None:
            raise ValueError(f"algorithm.advantage={alg.advantage!r} needs a critic: set model.init_args.critic")
        if self.unlabeled_reward is not None and self.unlabeled_reward.needs_values and self.critic_spec is None:
            raise ValueError(f"unlabeled_reward {type(self.unlabeled_reward).__name__} reads critic values: set critic")
        if self.unlabeled_reward is not None and self.unlabeled_reward.reads_answers:
            raise ValueError(
                f"unlabeled_reward {type(self.unlabeled_reward).__name__} reads ground truth, which unlabeled rows do "
                "not carry. For the oracle upper bound set data.init_args.expose_unlabeled_answers: true instead: "
                "D_U rows then come labeled and the labeled_reward verifier scores them"
            )

    @property
    def is_oracle(self) -> bool:
        """True when D_U answers reach the reward (the oracle RLVR upper bound, never test-time training)."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return bool(getattr(dm, "expose_unlabeled_answers", False))

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        self.tokenizer = build_tokenizer(self.policy_spec)
        if self.shared_base:
            from tempo_pl.shared_base import build_shared_actor_critic

            self.policy, self.critic = build_shared_actor_critic(self.policy_spec, self.critic_spec)
        else:
            self.policy = build_policy(self.policy_spec)
            if self.critic_spec is not None:
                self.critic = build_critic(self.critic_spec, self.policy_spec)
        if self.algorithm.kl_coef > 0 and not _has_adapters(self.policy):
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        if self.device_mesh is not None:
            from tempo_pl.strategies import shard_module

            shard_module(self, self.device_mesh)
        self.engine = HFGenerateEngine(self.tokenizer, self.sampling,
                                       micro_batch_size=self.training_cfg.generation_batch_size)

    def configure_optimizers(self):
        policy_params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizers = [self.policy_optimizer_fn(policy_params)]
        schedulers = []
        if self.policy_scheduler_fn is not None:
            schedulers.append(self.policy_scheduler_fn(optimizers[0]))
        if self.critic is not None:
            critic_params = [p for p in self.critic.parameters() if p.requires_grad]
            optimizers.append(self.critic_optimizer_fn(critic_params))
            if self.critic_scheduler_fn is not None:
                schedulers.append(self.critic_scheduler_fn(optimizers[1]))
        return optimizers, schedulers

    def _optimizers(self):
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        scheds = self.lr_schedulers()
        scheds = [] if scheds is None else (scheds if isinstance(scheds, list) else [scheds])
        policy_sched = scheds[0] if self.policy_scheduler_fn is not None else None
        critic_sched = scheds[-1] if (self.critic_scheduler_fn is not None and self.critic is not None) else None
        return opts[0], (opts[1] if len(opts) > 1 else None), policy_sched, critic_sched

    def set_step_plan(self, plan: StepPlan) -> None:
        """Called by the EMSchedule callback before every RL step."""
        if plan.update_critic and self.critic is None:
            raise ValueError(f"the schedule asks for a critic update ({plan.phase}-step) but this run has no critic")
        self.step_plan = plan

    def on_fit_start(self) -> None:
        from tempo_pl.callbacks import EMSchedule

        if not any(isinstance(cb, EMSchedule) for cb in self.trainer.callbacks):
            raise RuntimeError(
                "TempoModule needs an EMSchedule callback to choose each step's data: add "
                "{class_path: tempo_pl.callbacks.EMSchedule} under trainer.callbacks"
            )
        if self.is_oracle:
            log.warning("ORACLE RUN: the unlabeled reward reads D_U ground truth; this is an upper bound, not TTT")

    # ------------------------------------------------------------------ one RL step
    def training_step(self, dataloader_iter: Iterator) -> None:
        plan = self.step_plan
        self.last_step = None
        if plan is None:
            raise RuntimeError("no StepPlan set: the EMSchedule callback must run before training_step")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        rollout, labeled_scores, collect_metrics = self.collect_rollout(dataloader_iter)
        timings["time/generation_s"] = time.perf_counter() - t0
        metrics: dict[str, float] = dict(collect_metrics)
        if rollout.num_rows == 0:
            log.warning("RL step %d: no prompt group survived filtering; skipping the update", self.rl_step)
            metrics["skipped_step"] = 1.0
            logged = self._log_step({**metrics, **timings}, plan)
            self.last_step = StepRecord(self.rl_step, plan, rollout, torch.zeros(0), logged)
            return

        t1 = time.perf_counter()
        stats = self.forward_stats(rollout)
        reward = self.score(rollout, stats, labeled_scores)
        if reward.keep_rows is not None:
            rollout, stats, reward = _keep_rows(rollout, stats, reward)
        scores = reward.scores
        adv, returns = self.advantages(rollout, stats, scores)
        timings["time/scoring_s"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        if plan.update_critic:
            metrics.update(self.update_critic(rollout, stats, returns))
        if plan.update_policy:
            metrics.update(self.update_policy(rollout, stats, adv))
        timings["time/update_s"] = time.perf_counter() - t2
        total = time.perf_counter() - t0
        timings["time/step_s"] = total
        n_tokens = float(rollout.response_mask.sum() + rollout.prompt_mask.sum())
        timings["perf/tokens_per_s"] = n_tokens / max(total, 1e-9)
        timings["perf/generated_tokens_per_s"] = float(rollout.response_mask.sum()) / max(
            timings["time/generation_s"], 1e-9
        )
        metrics.update(self.step_metrics(rollout, stats, reward, adv, returns))
        logged = self._log_step({**metrics, **timings}, plan)
        self.last_step = StepRecord(self.rl_step, plan, rollout, scores, logged)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.rl_step += 1

    # ------------------------------------------------------------------ stages (override in research subclasses)
    def rollout(self, prompts: PromptBatch) -> Rollout:
        """Generate ``sampling.n`` responses per prompt with the current policy."""
        with self.generation_context():
            return self.engine.generate(self.policy, prompts, self.sampling.n)

    def generation_context(self) -> contextlib.AbstractContextManager:
        """Gathers sharded policy parameters once for a whole ``generate`` call (FSDP2), a no-op otherwise."""
        if self.device_mesh is None:
            return contextlib.nullcontext()
        from tempo_pl.strategies import gathered_for_generation

        return gathered_for_generation(self.policy)

    def collect_rollout(self, dataloader_iter: Iterator) -> tuple[Rollout, Tensor, dict[str, float]]:
        """Draw, generate, score labeled rows, filter labeled groups with no signal, refill (spec 3.2 step 5).

        Returns the rollout truncated to the RL batch (in prompts), the labeled rows' ground-truth scores (0 on
        unlabeled rows) and collection metrics.
        """
        cfg = self.training_cfg
        kept: list[Rollout] = []
        kept_scores: list[Tensor] = []
        kept_groups = 0
        target: Optional[int] = None
        drawn_groups = drawn_batches = dropped_prompts = filtered_groups = 0
        # refills come straight from the stream object: Lightning's dataloader_iter ends the epoch once it has handed
        # out limit_train_batches batches, and a refill is part of the same RL step, not another one
        refill_source = self.trainer.train_dataloader
        draw = lambda: next(dataloader_iter) if drawn_batches == 0 else next(refill_source)  # noqa: E731
        while True:
            batch = _unwrap_batch(draw())
            target = len(batch) if target is None else target
            drawn_batches += 1
            drawn_groups += len(batch)
            r = self.rollout(batch)
            dropped_prompts += int(r.extra.get("num_dropped", 0))
            if r.num_rows:
                lab_scores = self._labeled_scores(r)
                keep = self._groups_to_keep(r, lab_scores) if cfg.group_filter else list(range(len(r.prompt_batch)))
                filtered_groups += len(r.prompt_batch) - len(keep)
                if keep:
                    rows = r.group_rows(keep)
                    kept.append(r.select_groups(keep))
                    kept_scores.append(lab_scores[rows])
                    kept_groups += len(keep)
            need_more = kept_groups < target and drawn_batches < cfg.max_generation_batches
            if not self.trainer.strategy.reduce_boolean_decision(need_more, all=False):
                break
        # every rank must update on the same number of groups or the collectives of the updates would not match
        common = int(self.trainer.strategy.reduce(torch.tensor(float(min(kept_groups, target)), device=self.device), reduce_op="min"))
        metrics = {
            "filter/kept_fraction": kept_groups / max(drawn_groups, 1),
            "filter/generation_batches": float(drawn_batches),
            "filter/filtered_groups": float(filtered_groups),
            "rollout/dropped_overlong_prompts": float(dropped_prompts),
        }
        if kept_groups < target:
            log.warning(
                "RL step %d: only %d of %d prompt groups kept after %d generation batches",
                self.rl_step, kept_groups, target, drawn_batches,
            )
        if common == 0 or not kept:
            empty = Rollout.empty(batch.select([]))
            return empty, torch.zeros(0), metrics
        rollout = Rollout.concat(kept, self.tokenizer.pad_token_id)
        scores = torch.cat(kept_scores)
        if len(rollout.prompt_batch) > common:
            n = rollout.n_per_prompt
            scores = scores[: common * n]
            rollout = rollout.select_groups(list(range(common)))
        return rollout, scores, metrics

    def _labeled_scores(self, rollout: Rollout) -> Tensor:
        scores = torch.zeros(rollout.num_rows, device=rollout.response_mask.device)
        labeled_groups = sorted({int(g) for g, lab in zip(rollout.group_ids, rollout.is_labeled) if lab})
        if labeled_groups:
            sub = rollout.select_groups(labeled_groups)
            out = self.labeled_reward(sub, _no_stats(sub))
            rows = rollout.group_rows(labeled_groups)
            scores[rows] = out.scores.float()
        return scores

    def _groups_to_keep(self, rollout: Rollout, labeled_scores: Tensor) -> list[int]:
        n = rollout.n_per_prompt
        keep = []
        for g in range(len(rollout.prompt_batch)):
            if rollout.prompt_batch.is_labeled[g]:
                if labeled_scores[g * n : (g + 1) * n].std(unbiased=False) < 1e-6:
                    continue
            keep.append(g)
        return keep

    @torch.no_grad()
    def forward_stats(self, rollout: Rollout) -> ForwardStats:
        """One no-grad pass: old log-probs and entropy of the policy, values of the critic (spec 3.2 step 8)."""
        want_certainty = self.unlabeled_reward is not None and self.unlabeled_reward.needs_self_certainty
        bs = self.training_cfg.forward_batch_size
        parts: dict[str, list[Tensor]] = {"logprobs": [], "entropy": [], "self_certainty": [], "values": [], "ref": []}
        self.policy.eval()
        inputs = self._row_inputs(rollout)
        for rows in _chunks(rollout.num_rows, bs):
            ids, attn, resp_ids, resp_mask = inputs(rows)
            out = policy_response_stats(
                self.policy, ids, attn, resp_ids, resp_mask,
                temperature=self._logprob_temperature, with_entropy=True, with_self_certainty=want_certainty,
            )
            parts["logprobs"].append(out["logprobs"])
            parts["entropy"].append(out["entropy"])
            if want_certainty:
                parts["self_certainty"].append(out["self_certainty"])
            if self.critic is not None:
                self.critic.eval()
                parts["values"].append(critic_response_values(self.critic, ids, attn, resp_mask))
            if self.algorithm.kl_coef > 0:
                with self._reference_context() as ref_model:
                    ref = policy_response_stats(
                        ref_model, ids, attn, resp_ids, resp_mask,
                        temperature=self._logprob_temperature, with_entropy=False,
                    )
                parts["ref"].append(ref["logprobs"])
        self.policy.train()
        if self.critic is not None:
            self.critic.train()
        cat = lambda k: torch.cat(parts[k]).float() if parts[k] else None  # noqa: E731
        return ForwardStats(
            old_logprobs=cat("logprobs"),
            entropy=cat("entropy"),
            values=cat("values"),
            self_certainty=cat("self_certainty"),
            ref_logprobs=cat("ref"),
        )

    def score(self, rollout: Rollout, stats: ForwardStats, labeled_scores: Tensor) -> RewardOutput:
        """Per-row outcome: ground truth on labeled rows, the unlabeled reward source on unlabeled rows."""
        scores = labeled_scores.clone().float()
        metrics: dict[str, float] = {}
        keep_rows = None
        unlabeled_groups = [g for g, lab in enumerate(rollout.prompt_batch.is_labeled) if not lab]
        if unlabeled_groups:
            if self.unlabeled_reward is None:
                raise ValueError("unlabeled rows in the batch but no unlabeled_reward (and no critic) is configured")
            rows = rollout.group_rows(unlabeled_groups)
            sub = rollout.select_groups(unlabeled_groups)
            out = self.unlabeled_reward(sub, _select_stats(stats, rows))
            scores[rows] = out.scores.float().to(scores.device)
            metrics.update({f"reward/{self.unlabeled_reward.name}/{k}": v for k, v in out.metrics.items()})
            if out.keep_rows is not None:
                keep_rows = torch.ones(rollout.num_rows, dtype=torch.bool, device=scores.device)
                keep_rows[rows] = out.keep_rows.bool().to(scores.device)
        return RewardOutput(scores=scores, metrics=metrics, keep_rows=keep_rows)

    def advantages(self, rollout: Rollout, stats: ForwardStats, scores: Tensor) -> tuple[Tensor, Tensor]:
        """Token advantages and critic targets from the per-row outcomes (spec section 5)."""
        alg = self.algorithm
        mask = rollout.response_mask.float()
        if alg.advantage == "em_token":
            return adv_fns.em_token_advantage(scores, stats.values, mask, whiten=alg.whiten_advantages)
        if alg.advantage == "em":
            return adv_fns.em_advantage(scores, stats.values, mask, rollout.group_ids, rollout.is_labeled)
        if alg.advantage == "gae":
            return adv_fns.gae_advantage(
                scores, stats.values, mask, gamma=alg.gamma, lam=alg.lam, whiten=alg.whiten_advantages
            )
        if alg.advantage == "grpo":
            return adv_fns.grpo_advantage(scores, mask, rollout.group_ids, norm_by_std=alg.grpo_norm_by_std)
        return adv_fns.rloo_advantage(scores, mask, rollout.group_ids)

    def policy_loss(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        alg = self.algorithm
        if alg.policy_loss == "gspo":
            return loss_fns.gspo_policy_loss(
                logprobs, old_logprobs, advantages, mask, alg.clip_low, alg.clip_high, agg_mode=alg.loss_agg_mode
            )
        return loss_fns.ppo_clip_policy_loss(
            logprobs, old_logprobs, advantages, mask, alg.clip_low, alg.clip_high, agg_mode=alg.loss_agg_mode
        )

    def value_loss(
        self, values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        alg = self.algorithm
        return loss_fns.value_loss(
            values, old_values, returns, mask, alg.cliprange_value,
            clip_mode=alg.value_clip_mode, agg_mode=alg.loss_agg_mode,
        )

    def update_critic(self, rollout: Rollout, stats: ForwardStats, returns: Tensor) -> dict[str, float]:
        """E-step: regress the critic on labeled rows' outcomes, in mini-batches (spec section 4.3)."""
        _, critic_opt, _, critic_sched = self._optimizers()
        labeled = rollout.is_labeled.float().unsqueeze(-1)
        inputs = self._row_inputs(rollout)

        def micro_loss(rows: Tensor) -> tuple[Tensor, dict[str, Any]]:
            ids, attn, _, resp_mask = inputs(rows)
            values = critic_response_values(self.critic, ids, attn, resp_mask)
            mask = resp_mask.float() * labeled[rows].to(resp_mask.device)
            loss, m = self.value_loss(values, stats.values[rows], returns[rows], mask)
            return loss, {"loss": loss, **m}

        out = self._optimize(rollout, critic_opt, critic_sched, self.training_cfg.critic_grad_clip, micro_loss)
        return {f"critic/{k}": v for k, v in out.items()}

    def update_policy(self, rollout: Rollout, stats: ForwardStats, advantages: Tensor) -> dict[str, float]:
        """M-step: the clipped policy-gradient update on every row of the rollout (spec section 6)."""
        policy_opt, _, policy_sched, _ = self._optimizers()
        alg = self.algorithm
        inputs = self._row_inputs(rollout)

        def micro_loss(rows: Tensor) -> tuple[Tensor, dict[str, Any]]:
            ids, attn, resp_ids, resp_mask = inputs(rows)
            mask = resp_mask.float()
            out = policy_response_stats(
                self.policy, ids, attn, resp_ids, resp_mask,
                temperature=self._logprob_temperature, with_entropy=alg.entropy_coef > 0,
            )
            loss, m = self.policy_loss(out["logprobs"], stats.old_logprobs[rows], advantages[rows], mask)
            m = {**m, "pg_loss": loss.detach()}
            if alg.entropy_coef > 0:
                entropy = loss_fns.aggregate_loss(out["entropy"], mask, alg.loss_agg_mode)
                loss = loss - alg.entropy_coef * entropy
                m["entropy_bonus"] = entropy.detach()
            if alg.kl_coef > 0:
                kl = loss_fns.kl_penalty(out["logprobs"], stats.ref_logprobs[rows], kind=alg.kl_kind)
                kl = loss_fns.aggregate_loss(kl, mask, alg.loss_agg_mode)
                loss = loss + alg.kl_coef * kl
                m["kl_ref"] = kl.detach()
            return loss, {"loss": loss, **m}

        out = self._optimize(rollout, policy_opt, policy_sched, self.training_cfg.policy_grad_clip, micro_loss)
        return {f"policy/{k}": v for k, v in out.items()}

    def _optimize(self, rollout: Rollout, optimizer, scheduler, grad_clip: float, micro_loss) -> dict[str, float]:
        """``ppo_epochs`` passes of mini-batch steps; gradients accumulate over micro-batches, each loss weighted by
        its share of the mini-batch's rows (the reference's micro-batch scale)."""
        cfg = self.training_cfg
        acc: dict[str, list[float]] = {}
        for _ in range(cfg.ppo_epochs):
            for mini in _chunks(rollout.num_rows, cfg.mini_batch_size * rollout.n_per_prompt):
                optimizer.zero_grad(set_to_none=True)
                for micro in _chunks(len(mini), cfg.micro_batch_size):
                    rows = mini[micro]
                    loss, metrics = micro_loss(rows)
                    self.manual_backward(loss * (len(rows) / len(mini)))
                    _accumulate(acc, metrics)
                _accumulate(acc, {"grad_norm": _grad_norm(optimizer)})  # before clipping: how far it was cut
                if grad_clip > 0:
                    self.clip_gradients(optimizer, gradient_clip_val=grad_clip, gradient_clip_algorithm="norm")
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
        out = {k: float(np.mean(v)) for k, v in acc.items()}
        out["lr"] = optimizer.param_groups[0]["lr"]
        return out

    # ------------------------------------------------------------------ metrics and logging
    def step_metrics(
        self, rollout: Rollout, stats: ForwardStats, reward: RewardOutput, adv: Tensor, returns: Tensor
    ) -> dict[str, float]:
        mask = rollout.response_mask.float()
        lengths = mask.sum(-1)
        lab = rollout.is_labeled
        m: dict[str, float] = dict(reward.metrics)
        for name, rows in (("labeled", lab), ("unlabeled", ~lab)):
            if rows.any():
                m[f"score/{name}_mean"] = float(reward.scores[rows].mean())
                if stats.values is not None:
                    m[f"values/{name}_mean"] = float(adv_fns.masked_mean(stats.values[rows], mask[rows]))
                    m[f"values/{name}_explained_variance"] = float(
                        explained_variance(stats.values[rows], returns[rows], mask[rows])
                    )
                m[f"returns/{name}_mean"] = float(adv_fns.masked_mean(returns[rows], mask[rows]))
        m["response/labeled_fraction"] = float(lab.float().mean())
        m["advantages/mean"] = float(adv_fns.masked_mean(adv, mask))
        m["advantages/max"] = float(adv[mask.bool()].max()) if mask.any() else 0.0
        m["advantages/min"] = float(adv[mask.bool()].min()) if mask.any() else 0.0
        if stats.values is not None:
            m["values/mean"] = float(adv_fns.masked_mean(stats.values, mask))
            m["values/explained_variance"] = float(explained_variance(stats.values, returns, mask))
        m["returns/mean"] = float(adv_fns.masked_mean(returns, mask))
        m["policy/entropy"] = float(loss_fns.aggregate_loss(stats.entropy, mask, "seq-mean-token-mean"))
        m["response/length_mean"] = float(lengths.mean())
        m["response/length_max"] = float(lengths.max())
        m["response/clip_fraction"] = float(rollout.truncated.float().mean())
        m["response/prompts"] = float(len(rollout.prompt_batch))
        return m

    def _log_step(self, metrics: dict[str, float], plan: StepPlan) -> dict[str, float]:
        metrics = {f"train/{k}": float(v) for k, v in metrics.items()}
        metrics["train/phase"] = float(PHASE_CODES[plan.phase])
        metrics["train/rl_step"] = float(self.rl_step)
        if self.is_oracle:
            metrics["train/oracle_upper_bound"] = 1.0
        # straight to the loggers, at the RL step: trainer.global_step counts both optimizers' steps, and
        # self.log would re-emit the last value of a metric the step did not produce (critic loss in an M-step)
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(metrics, step=self.rl_step)
        self.log_dict(metrics, logger=False, batch_size=1)
        shown = {name: metrics[f"train/score/{name}_mean"] for name in ("labeled", "unlabeled")
                 if f"train/score/{name}_mean" in metrics}
        self.log_dict({f"{k}_score": v for k, v in shown.items()}, prog_bar=True, logger=False, batch_size=1)
        return metrics

    # ------------------------------------------------------------------ evaluation
    def on_validation_epoch_start(self) -> None:
        self._val_records = {}
        self._val_rng = torch.random.fork_rng(devices=[])
        self._val_rng.__enter__()

    def validation_step(self, batch: PromptBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        from tempo_pl.metrics import score_questions

        ev = self.evaluation
        spec = SamplingSpec(**{
            **self.sampling.__dict__,
            "n": ev.k, "temperature": ev.temperature, "top_p": ev.top_p,
            "max_new_tokens": ev.max_new_tokens or self.sampling.max_new_tokens,
        })
        engine = HFGenerateEngine(self.tokenizer, spec, micro_batch_size=self.training_cfg.generation_batch_size)
        with self.generation_context():
            rollout = engine.generate(self.policy, batch, ev.k)
        values_last = None
        if self.critic is not None and rollout.num_rows:
            vals = []
            inputs = self._row_inputs(rollout)
            for rows in _chunks(rollout.num_rows, self.training_cfg.forward_batch_size):
                ids, attn, _, resp_mask = inputs(rows)
                with torch.no_grad():
                    v = critic_response_values(self.critic, ids, attn, resp_mask)
                vals.append(adv_fns.last_token_value(v.float(), resp_mask.float()))
            values_last = torch.cat(vals)
        groups = [torch.nonzero(rollout.group_ids == g, as_tuple=False).flatten().tolist()
                  for g in range(len(rollout.prompt_batch))]
        records = score_questions(
            rollout.prompt_batch.ids,
            rollout.prompt_batch.answers,
            [[rollout.texts[i] for i in rows] for rows in groups],
            values=None if values_last is None else [values_last[rows].tolist() for rows in groups],
        )
        self._val_records.setdefault(dataloader_idx, []).extend(records)

    def on_validation_epoch_end(self) -> None:
        from tempo_pl.metrics import summarize_questions, write_question_jsonl

        self._val_rng.__exit__(None, None, None)
        names = self._eval_set_names()
        # trainer.log_dir broadcasts from rank 0: every rank must ask for it, not rank 0 alone
        eval_dir = self._eval_dir() if self.evaluation.write_jsonl else None
        all_metrics: dict[str, float] = {}
        for idx, records in sorted(self._val_records.items()):
            records = self._gather_records(records)
            name = names[idx] if idx < len(names) else f"set{idx}"
            metrics = summarize_questions(records, ks=list(self.evaluation.pass_ks))
            all_metrics.update({f"val/{name}/{k}": float(v) for k, v in metrics.items()})
            if eval_dir is not None and self.trainer.is_global_zero:
                write_question_jsonl(eval_dir / f"{name}_step{self.rl_step:06d}.jsonl", records)
        self._val_records = {}
        if not all_metrics:
            return
        # callbacks (checkpoint monitors) read these; the logger gets them below, at the RL step, also when
        # Lightning's sanity check (``num_sanity_val_steps: -1`` = evaluate before training) mutes self.log
        self.log_dict(all_metrics, batch_size=1, logger=False)
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(all_metrics, step=self.rl_step)

    def _eval_set_names(self) -> list[str]:
        dm = getattr(self.trainer, "datamodule", None)
        return list(getattr(dm, "eval_set_names", []) or [])

    def _eval_dir(self) -> Path:
        root = self.trainer.log_dir or self.trainer.default_root_dir
        path = Path(root) / "eval"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _gather_records(self, records: list) -> list:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return records
        world = torch.distributed.get_world_size()
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, records)
        return [r for part in gathered for r in part]

    # ------------------------------------------------------------------ checkpoint state
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # sampling draws from the global RNGs; keeping them makes a resumed run sample what the straight run samples
        checkpoint["tempo"] = {
            "rl_step": self.rl_step,
            "rng": {
                "torch": torch.get_rng_state(),
                "python": random.getstate(),
                "numpy": _numpy_state_to_plain(np.random.get_state()),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("tempo")
        if not state:
            return
        self.rl_step = int(state["rl_step"])
        self._pending_rng = state["rng"]

    def on_train_start(self) -> None:
        rng = getattr(self, "_pending_rng", None)
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            np.random.set_state(_numpy_state_from_plain(rng["numpy"]))
            if rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self._pending_rng = None

    # ------------------------------------------------------------------ helpers
    @property
    def _logprob_temperature(self) -> float:
        # greedy sampling (temperature 0) is scored under the untempered distribution
        return self.sampling.temperature or 1.0

    def _row_inputs(self, rollout: Rollout):
        """Concatenates prompt and response once; returns ``rows -> (input ids, attention mask, response ids,
        response mask)`` of those rows on the module's device."""
        ids, attn, _ = sequence_inputs(rollout)
        dev = self.device

        def take(rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            return ids[rows].to(dev), attn[rows].to(dev), rollout.response_ids[rows].to(dev), rollout.response_mask[rows].to(dev)

        return take

    @contextlib.contextmanager
    def _reference_context(self):
        if self.reference is not None:
            yield self.reference
        else:
            with self.policy.disable_adapter():
                yield self.policy


def _numpy_state_to_plain(state: tuple) -> list:
    # plain Python values keep the checkpoint loadable with torch.load(weights_only=True)
    name, keys, pos, has_gauss, cached = state
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _numpy_state_from_plain(state: list) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached


def _has_adapters(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter")


def _unwrap_batch(item: Any) -> PromptBatch:
    batch = item[0] if isinstance(item, tuple) else item
    if not isinstance(batch, PromptBatch):
        raise TypeError(f"the train stream must yield PromptBatch objects, got {type(batch).__name__}")
    return batch


def _chunks(total: int, size: int) -> list[Tensor]:
    return [torch.arange(s, min(s + size, total)) for s in range(0, total, size)]


def _accumulate(acc: dict[str, list[float]], values: dict[str, Any]) -> None:
    for k, v in values.items():
        acc.setdefault(k, []).append(float(v.detach()) if isinstance(v, Tensor) else float(v))


def _grad_norm(optimizer: torch.optim.Optimizer) -> float:
    norms = [p.grad.detach().float().norm() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def _no_stats(rollout: Rollout) -> ForwardStats:
    empty = torch.zeros_like(rollout.response_mask, dtype=torch.float)
    return ForwardStats(old_logprobs=empty, entropy=empty)


def _select_stats(stats: ForwardStats, rows: Tensor) -> ForwardStats:
    pick = lambda t: None if t is None else t[rows]  # noqa: E731
    return ForwardStats(
        old_logprobs=stats.old_logprobs[rows],
        entropy=stats.entropy[rows],
        values=pick(stats.values),
        self_certainty=pick(stats.self_certainty),
        ref_logprobs=pick(stats.ref_logprobs),
    )


def _keep_rows(rollout: Rollout, stats: ForwardStats, reward: RewardOutput):
    rows = torch.nonzero(reward.keep_rows, as_tuple=False).flatten()
    groups_in_order = rollout.group_ids[rows]
    kept = rollout._take(rows, rollout.prompt_batch, groups_in_order)
    return kept, _select_stats(stats, rows), RewardOutput(reward.scores[rows], reward.metrics, None)
