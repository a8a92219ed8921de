"""TempoModule: the TEMPO actor-critic loop as a LightningModule with manual optimization.

One ``training_step`` is one RL step (``docs/algorithm.md``, "One RL step"), a sequence of overridable stages:
``collect_rollout -> forward_stats -> score -> advantages -> update_critic -> update_policy -> step_metrics``,
routed once per step (:class:`~tempo_pl.stages.route.StepRoute`).
The arithmetic lives in :mod:`tempo_pl.algorithms` (estimators and losses named through its registries), the
stages' plain functions in :mod:`tempo_pl.stages`, evaluation in :mod:`tempo_pl.evaluation.evaluator`.
"""

from __future__ import annotations

import copy
import logging
from functools import partial
from typing import Callable, Iterator, Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from transformers import PreTrainedTokenizerBase
from typing_extensions import override

from tempo_pl.algorithms.losses import value_loss as clipped_value_loss
from tempo_pl.algorithms.registry import AdvantageBatch, advantage_estimator, policy_loss_fn
from tempo_pl.callbacks import DivergenceGuard
from tempo_pl.config import AlgorithmConfig, EvalConfig, SamplingConfig, TrainingConfig, check_module_options
from tempo_pl.engines.hf_generate import HFGenerateEngine, RolloutEngine, ask_for_sampling_logprobs
from tempo_pl.evaluation.evaluator import EvaluationHooks
from tempo_pl.models.builders import CriticSpec, ModelSpec, build_critic, build_policy, build_tokenizer
from tempo_pl.models.fsdp2 import shard_module
from tempo_pl.models.shared_base import build_shared_actor_critic
from tempo_pl.rewards.base import RewardOutput, RewardSource
from tempo_pl.rewards.critic import CriticValue
from tempo_pl.rewards.verifier import Verifier
from tempo_pl.run.step_logging import RLStepLogging
from tempo_pl.run.step_state import RLStepState
from tempo_pl.stages import scoring
from tempo_pl.stages.ahead import RolloutAhead, RolloutCollection
from tempo_pl.stages.forward import forward_stats, reference_model
from tempo_pl.stages.metrics import StageClock, step_metrics, throughput, timed
from tempo_pl.stages.minibatch import MiniBatchPlan, Optimization, loss_units, optimize, row_inputs
from tempo_pl.stages.ranks import Ranks
from tempo_pl.stages.route import StepRoute
from tempo_pl.stages.updates import (CriticUpdate, PolicyUpdate, corrected_advantages, critic_micro_loss,
                                     policy_micro_loss, stats_made_by_updates)
from tempo_pl.types import ForwardStats, PromptBatch, Rollout, StepPlan, StepRecord

log = logging.getLogger(__name__)

EngineFactory = Callable[[PreTrainedTokenizerBase, SamplingConfig, Optional[int]], RolloutEngine]
"""``(tokenizer, sampling, generation batch size in prompts) -> RolloutEngine``."""


def _default_policy_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0)


def _default_critic_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-6, weight_decay=0.01)


class TempoModule(RLStepLogging, RLStepState, RolloutCollection, EvaluationHooks, LightningModule):
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
            memory; needs ``lora`` on both specs (see :mod:`tempo_pl.models.shared_base`).
        rollout_engine: builds the engine that samples responses, ``(tokenizer, sampling, generation batch size) ->
            RolloutEngine``; default :class:`~tempo_pl.engines.hf_generate.HFGenerateEngine` (transformers ``generate``).

    Example (YAML, ``tempo-pl fit --config``)::

        model:
          class_path: tempo_pl.TempoModule
          init_args:
            policy: {name_or_path: Qwen/Qwen3-8B-Base}
            critic: {name_or_path: /ckpt/stage1/critic}
            sampling: {n: 8, max_new_tokens: 16384}

    A research subclass overrides one stage, e.g. :meth:`score` (``examples/length_penalty.py``), and inherits the
    rest; a new advantage estimator or policy loss needs no subclass, only a registered function
    (``examples/custom_advantage.py``).
    """

    def __init__(
        self,
        policy: ModelSpec,
        critic: Optional[CriticSpec] = None,
        sampling: Optional[SamplingConfig] = None,
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
        rollout_engine: Optional[EngineFactory] = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.policy_spec = policy
        self.critic_spec = critic
        self.sampling = sampling or SamplingConfig()
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
        self.engine_factory: EngineFactory = rollout_engine or HFGenerateEngine
        check_module_options(policy, critic, self.algorithm, self.unlabeled_reward, shared_base)

        self.policy: Optional[torch.nn.Module] = None
        self.critic: Optional[torch.nn.Module] = None
        self.reference: Optional[torch.nn.Module] = None
        self.tokenizer = None
        self.engine: Optional[RolloutEngine] = None
        self.step_plan: Optional[StepPlan] = None
        self.rl_step = 0
        """RL steps completed: the index of the step that runs next. The schedule, the logs, the eval file names and
        checkpoints all read this one counter."""
        self.last_step: Optional[StepRecord] = None
        self._mini_batch_generator: Optional[torch.Generator] = None
        self._policy_opt: Optional[Optimization] = None
        self._critic_opt: Optional[Optimization] = None
        self._route: Optional[StepRoute] = None
        self._critic_update: Optional[CriticUpdate] = None
        self._clock = StageClock()
        self._ahead = RolloutAhead()
        self._policy_updates = 0
        """Policy updates done: the staleness of a rollout is the count now minus the count when it was sampled."""
        self._sampling_policy: Optional[torch.nn.Module] = None
        if self.training_cfg.mini_batch_seed is not None:
            self._mini_batch_generator = torch.Generator().manual_seed(self.training_cfg.mini_batch_seed)
        self.save_hyperparameters(ignore=["labeled_reward", "unlabeled_reward", "rollout_engine"])

    # ------------------------------------------------------------------ configuration
    @override
    def configure_callbacks(self) -> list:
        """The divergence guard of ``training.nonfinite_patience`` and ``training.max_grad_norm_abort``."""
        return [DivergenceGuard(self.training_cfg.nonfinite_patience, self.training_cfg.max_grad_norm_abort)]

    @override
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        self.tokenizer = build_tokenizer(self.policy_spec)
        if self.shared_base:
            self.policy, self.critic = build_shared_actor_critic(self.policy_spec, self.critic_spec)
        else:
            self.policy = build_policy(self.policy_spec)
            if self.critic_spec is not None:
                self.critic = build_critic(self.critic_spec, self.policy_spec)
        if self.algorithm.kl_coef > 0 and not hasattr(self.policy, "disable_adapter"):
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        if self.device_mesh is not None:
            shard_module(self, self.device_mesh)
        self.engine = self.build_engine(self.sampling)

    def build_engine(self, sampling: SamplingConfig) -> RolloutEngine:
        """The rollout engine of training and evaluation (evaluation passes its own sampling to ``generate``), asked
        for the sampler's log-probs when ``algorithm.rollout_correction`` needs them."""
        engine = self.engine_factory(self.tokenizer, sampling, self.training_cfg.generation_batch_size)
        if self.algorithm.rollout_correction != "none":
            ask_for_sampling_logprobs(engine, f"algorithm.rollout_correction={self.algorithm.rollout_correction!r}")
        return engine

    @override
    def configure_optimizers(self):
        cfg = self.training_cfg
        self._policy_opt = Optimization.of(self.policy, self.policy_optimizer_fn, self.policy_scheduler_fn,
                                           cfg.policy_grad_clip)
        self._critic_opt = None if self.critic is None else Optimization.of(
            self.critic, self.critic_optimizer_fn, self.critic_scheduler_fn, cfg.critic_grad_clip)
        made = [each for each in (self._policy_opt, self._critic_opt) if each is not None]
        return [each.optimizer for each in made], [each.scheduler for each in made if each.scheduler is not None]

    def set_step_plan(self, plan: StepPlan) -> None:
        """Called by the EMSchedule callback before every RL step."""
        if plan.update_critic and self.critic is None:
            raise ValueError(f"the schedule asks for a critic update ({plan.phase}-step) but this run has no critic")
        self.step_plan, self._route, self._critic_update = plan, None, None
        for source in (self.labeled_reward, self.unlabeled_reward):
            if source is not None:
                source.rl_step = self.rl_step

    # ------------------------------------------------------------------ one RL step
    @override
    def training_step(self, dataloader_iter: Iterator) -> None:
        plan = self.step_plan
        if plan is None:
            raise RuntimeError("no StepPlan set: TempoModule needs an EMSchedule callback to choose each step's data; "
                               "add {class_path: tempo_pl.callbacks.EMSchedule} under trainer.callbacks")
        self.last_step, self._route, self._critic_update = None, None, None
        timings: dict[str, float] = {}
        clock = self._clock = StageClock(self.trainer.profiler)
        with timed(timings, "step", self.trainer.profiler):
            with clock.stage("generation"):
                rollout, metrics = self.collect_rollout(dataloader_iter)
            if rollout.num_rows == 0:
                log.warning("RL step %d: no prompt group survived filtering; skipping the update", self.rl_step)
                self._wait_for_sampler(clock)
                self.finish_rl_step(plan, rollout, torch.zeros(0), {**metrics, "skipped_step": 1.0, **clock.seconds,
                                                                  **timings})
                return
            route = self.step_route(rollout)
            with clock.stage("scoring"):
                stats = self.forward_stats(rollout)
                reward = self.score(rollout, stats)
                rollout, stats, reward = scoring.apply_keep_rows(rollout, stats, reward)
                adv, returns = self.advantages(rollout, stats, reward.scores)
            with clock.stage("update"):
                critic = self.update_critic(rollout, stats, returns) if route.update_critic else CriticUpdate({})
                policy = self.update_policy(rollout, stats, adv) if route.update_policy else PolicyUpdate({})
                self._wait_for_sampler(clock)
                if route.update_policy and hasattr(self.engine, "sync_weights"):  # an engine serving its own weights
                    self.engine.sync_weights(self.policy)
        self._policy_updates += int(route.update_policy)
        stats = stats_made_by_updates(stats, critic, policy)
        metrics.update({**critic.metrics, **policy.metrics, **self.step_metrics(rollout, stats, reward, adv, returns)})
        timings.update(clock.seconds)
        self.finish_rl_step(plan, rollout, reward.scores, {**metrics, **timings, **throughput(rollout, timings)})

    def step_route(self, rollout: Rollout) -> StepRoute:
        """This step's :class:`~tempo_pl.stages.route.StepRoute`, decided on its first call after the step plan is
        set (the stages read it; :meth:`is_on_policy` and :meth:`critic_goes_first` are asked once)."""
        if self._route is None:
            plan = self.step_plan
            self._route = StepRoute(
                update_critic=plan.update_critic and not self.critic_is_frozen, update_policy=plan.update_policy,
                # the correction weighs tokens by pi_old before the update: the no-grad pass gives pi_old
                on_policy=self.is_on_policy(rollout) and self.algorithm.rollout_correction == "none",
                critic_first=self.critic_goes_first(rollout))
        return self._route

    # ------------------------------------------------------------------ stages (override in research subclasses)
    def rollout(self, prompts: PromptBatch) -> Rollout:
        """Generate ``sampling.n`` responses per prompt with the current policy (with ``training.rollout_ahead: 1``,
        in the sampler thread, a copy of the weights the step started with)."""
        policy = self.policy if self._sampling_policy is None else self._sampling_policy
        with self.generation_context():
            return self.engine.generate(policy, prompts, self.sampling.n)

    def forward_stats(self, rollout: Rollout) -> ForwardStats:
        """One no-grad pass: values of the critic (of the unlabeled rows alone when the critic goes first); old
        log-probs and entropy of the policy unless the update is on-policy and takes them from its own forward."""
        route = self.step_route(rollout)
        kl = self.algorithm.kl_coef > 0
        return forward_stats(
            rollout, self.policy, self.critic, self.device, self.training_cfg.forward_batch_size,
            self._logprob_temperature,
            with_self_certainty=self.unlabeled_reward is not None and self.unlabeled_reward.needs_self_certainty,
            reference=partial(reference_model, self.policy, self.reference) if kl else None,
            with_policy=route.update_policy and not route.on_policy,
            value_rows=~rollout.is_labeled.bool() if route.critic_first else None,
        )

    def is_on_policy(self, rollout: Rollout) -> bool:
        """One epoch of one mini-batch: the policy update's first forward is the policy that sampled, so the old
        log-probs are its own, detached (ratio exactly 1, as the reference), and no separate pass is needed."""
        cfg = self.training_cfg
        return cfg.on_policy_ratio and cfg.ppo_epochs == 1 and len(rollout.prompt_batch) <= cfg.mini_batch_size

    def critic_goes_first(self, rollout: Rollout) -> bool:
        """The critic update runs before the estimator and gives the labeled rows' values from its own forward
        (``docs/algorithm.md``, "The critic's own values"): when it trains on one epoch of one mini-batch, the
        estimator's labeled targets are the scores, ``score``, ``advantages`` and ``update_critic`` are the module's
        own and the critic is not FSDP-sharded (a sharded forward is a collective; ranks' unlabeled rows differ)."""
        own_stages = all(getattr(type(self), name) is getattr(TempoModule, name)
                         for name in ("score", "advantages", "update_critic"))
        return (self.step_plan.update_critic and self.critic is not None and self.is_on_policy(rollout)
                and self.device_mesh is None and own_stages
                and advantage_estimator(self.algorithm.advantage).labeled_returns_from_scores
                and not self.critic_is_frozen)

    @property
    def critic_is_frozen(self) -> bool:
        """The critic optimizer's learning rate is 0 in every group (a fixed critic): its update is skipped. False
        before :meth:`configure_optimizers` has made it."""
        if self.critic is not None and self._critic_opt is None:
            return False
        groups = self._critic_opt.optimizer.param_groups if self.critic is not None else []
        return all(group.get("initial_lr", group["lr"]) == 0 for group in groups)

    def score(self, rollout: Rollout, stats: ForwardStats) -> RewardOutput:
        """Every row's outcome: ``labeled_reward`` on labeled rows (graded once, while filtering), the unlabeled
        reward source on unlabeled rows."""
        return scoring.score_rollout(rollout, stats, self.labeled_reward, self.unlabeled_reward)

    def advantages(self, rollout: Rollout, stats: ForwardStats, scores: Tensor) -> tuple[Tensor, Tensor]:
        """Token advantages and critic targets from the per-row outcomes, by the registered
        ``algorithm.advantage`` estimator (``docs/algorithm.md``, "Advantages"). When the critic goes first its
        update runs here, before the estimator, on the labeled rows' targets (their scores), and gives the labeled
        rows' values the estimator reads; :meth:`update_critic` then returns that update."""
        mask = rollout.response_mask.float()
        values = stats.values
        if self.step_route(rollout).critic_first:
            with self._clock.stage("update"):
                self._critic_update = self._train_critic(rollout, stats, scores.unsqueeze(-1) * mask, own_values=True)
            values = self._critic_update.values
        batch = AdvantageBatch(scores=scores, mask=mask, group_ids=rollout.group_ids, is_labeled=rollout.is_labeled,
                               values=values, all_reduce=Ranks.of(self._trainer).all_reduce)
        return advantage_estimator(self.algorithm.advantage).fn(batch, self.algorithm)

    def policy_loss(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The registered ``algorithm.policy_loss`` (``docs/algorithm.md``, "Losses")."""
        return policy_loss_fn(self.algorithm.policy_loss).fn(logprobs, old_logprobs, advantages, mask, self.algorithm)

    def value_loss(
        self, values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        alg = self.algorithm
        return clipped_value_loss(values, old_values, returns, mask, alg.cliprange_value,
                                  clip_mode=alg.value_clip_mode, agg_mode=alg.loss_agg_mode)

    def update_critic(self, rollout: Rollout, stats: ForwardStats, returns: Tensor) -> CriticUpdate:
        """E-step: regress the critic on labeled rows' outcomes, in mini-batches (when the critic goes first, the
        update :meth:`advantages` ran)."""
        if self._critic_update is not None:
            return self._critic_update
        return self._train_critic(rollout, stats, returns, own_values=False)

    def _train_critic(self, rollout: Rollout, stats: ForwardStats, returns: Tensor, own_values: bool) -> CriticUpdate:
        micro_loss = critic_micro_loss(self.critic, row_inputs(rollout, self.device), rollout, stats, returns,
                                       self.value_loss, own_values=own_values)
        labeled = rollout.is_labeled
        out = self._optimize(rollout, self._critic_opt, micro_loss, rollout.response_mask * labeled.unsqueeze(-1),
                             rows_with_loss=labeled)
        return CriticUpdate({f"critic/{k}": v for k, v in out.items()}, micro_loss.values if own_values else None)

    def update_policy(self, rollout: Rollout, stats: ForwardStats, advantages: Tensor) -> PolicyUpdate:
        """M-step: the clipped policy-gradient update on every row of the rollout (on-policy when the no-grad pass
        left ``stats.old_logprobs`` empty: see :class:`~tempo_pl.stages.updates.PolicyMicroLoss`), with the rollout
        correction's weights when ``algorithm.rollout_correction`` is on."""
        advantages, keep, correction = corrected_advantages(rollout, stats, advantages, self.algorithm,
                                                            type(self.engine).__name__)
        micro_loss = policy_micro_loss(self.policy, row_inputs(rollout, self.device), rollout, stats, advantages,
                                       self.algorithm, self._logprob_temperature, self.policy_loss, keep)
        mask = rollout.response_mask * (keep.to(rollout.response_mask.device) if keep is not None else 1)
        out = self._optimize(rollout, self._policy_opt, micro_loss, mask)
        made = micro_loss.on_policy
        return PolicyUpdate({**{f"policy/{k}": v for k, v in out.items()}, **correction},
                            micro_loss.old_logprobs if made else None, micro_loss.entropy if made else None)

    def step_metrics(
        self, rollout: Rollout, stats: ForwardStats, reward: RewardOutput, adv: Tensor, returns: Tensor
    ) -> dict[str, float]:
        """The step's statistics (names without ``train/``). Override and extend the dict to log your own scalars:
        they are logged at the RL step with everything else."""
        return step_metrics(rollout, stats, reward, adv, returns)

    def _optimize(self, rollout: Rollout, optimization: Optimization, micro_loss, loss_mask: Tensor,
                  rows_with_loss: Optional[Tensor] = None) -> dict[str, float]:
        clip = lambda opt, value: self.clip_gradients(opt, value, gradient_clip_algorithm="norm")  # noqa: E731
        plan = MiniBatchPlan.of(self.training_cfg, rollout, optimization.grad_clip)
        return optimize(rollout.num_rows, plan, optimization.wrapped_by(self.optimizers()), optimization.scheduler,
                        micro_loss, self.manual_backward, clip, labeled=rollout.is_labeled,
                        generator=self._mini_batch_generator, units=loss_units(loss_mask, self.algorithm.loss_agg_mode),
                        ranks=Ranks.of(self._trainer), rows_with_loss=rows_with_loss)

    @override
    def on_train_start(self) -> None:
        if type(self).score is TempoModule.score:  # an overridden score may add a reward of its own
            scoring.check_critic_reward_can_learn(self.unlabeled_reward, self.critic, self.critic_is_frozen,
                                                  scoring.schedule_updates_critic(self.trainer))
        super().on_train_start()

    # ------------------------------------------------------------------ helpers
    @property
    def _logprob_temperature(self) -> float:
        # greedy sampling (temperature 0) is scored under the untempered distribution
        return self.sampling.temperature or 1.0
