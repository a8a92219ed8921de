"""TempoModule: the TEMPO actor-critic loop as a LightningModule with manual optimization.

One ``training_step`` is one RL step (``docs/algorithm.md``, "One RL step"), a sequence of overridable stages:
``collect_rollout -> forward_stats -> score -> advantages -> update_critic -> update_policy -> step_metrics``
(``update_critic`` before ``advantages`` when :meth:`TempoModule.critic_goes_first`).
The arithmetic lives in :mod:`tempo_pl.algorithms` (estimators and losses named through its registries), the
stages' plain functions in :mod:`tempo_pl.stages`, evaluation in :mod:`tempo_pl.evaluation.evaluator`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
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
from tempo_pl.config import AlgorithmConfig, EvalConfig, TrainingConfig, check_module_options
from tempo_pl.evaluation.evaluator import Evaluation, eval_dir, eval_sampling, gather_records, greedy_sampling
from tempo_pl.models.builders import CriticSpec, ModelSpec, build_critic, build_policy, build_tokenizer
from tempo_pl.rewards.base import RewardOutput, RewardSource
from tempo_pl.rewards.critic import CriticValue
from tempo_pl.rewards.verifier import Verifier
from tempo_pl.run.rng_state import capture_rng, restore_rng
from tempo_pl.config import SamplingConfig
from tempo_pl.engines.hf_generate import HFGenerateEngine, RolloutEngine
from tempo_pl.stages.collection import CollectOptions, collect_rollout, unwrap_batch
from tempo_pl.stages.forward import rollout_stats
from tempo_pl.run.step_logging import RLStepLogging
from tempo_pl.stages.metrics import step_metrics, throughput, timed
from tempo_pl.stages.minibatch import MiniBatchPlan, loss_units, optimize, row_inputs
from tempo_pl.stages.ranks import Ranks
from tempo_pl.stages import scoring
from tempo_pl.stages.updates import critic_micro_loss, policy_micro_loss
from tempo_pl.types import PHASE_CODES, ForwardStats, PromptBatch, Rollout, StepPlan, StepRecord

log = logging.getLogger(__name__)

EngineFactory = Callable[[PreTrainedTokenizerBase, SamplingConfig, Optional[int]], RolloutEngine]
"""``(tokenizer, sampling, generation batch size in prompts) -> RolloutEngine``."""


def _default_policy_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0)


def _default_critic_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-6, weight_decay=0.01)


class TempoModule(RLStepLogging, LightningModule):
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
        self._evaluation: Optional[Evaluation] = None
        self._rng_before_eval: Optional[dict] = None
        self._pending_rng: Optional[dict] = None
        self._mini_batch_generator: Optional[torch.Generator] = None
        if self.training_cfg.mini_batch_seed is not None:
            self._mini_batch_generator = torch.Generator().manual_seed(self.training_cfg.mini_batch_seed)
        self.save_hyperparameters(ignore=["labeled_reward", "unlabeled_reward", "rollout_engine"])

    # ------------------------------------------------------------------ configuration
    @property
    def is_oracle(self) -> bool:
        """True when D_U answers reach the reward (the oracle RLVR upper bound, never test-time training)."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return bool(getattr(dm, "expose_unlabeled_answers", False))

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
            from tempo_pl.models.shared_base import build_shared_actor_critic

            self.policy, self.critic = build_shared_actor_critic(self.policy_spec, self.critic_spec)
        else:
            self.policy = build_policy(self.policy_spec)
            if self.critic_spec is not None:
                self.critic = build_critic(self.critic_spec, self.policy_spec)
        if self.algorithm.kl_coef > 0 and not hasattr(self.policy, "disable_adapter"):
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        if self.device_mesh is not None:
            from tempo_pl.models.fsdp2 import shard_module

            shard_module(self, self.device_mesh)
        self.engine = self.build_engine(self.sampling)

    def build_engine(self, sampling: SamplingConfig) -> RolloutEngine:
        """The rollout engine of training and evaluation (evaluation passes its own sampling to ``generate``)."""
        return self.engine_factory(self.tokenizer, sampling, self.training_cfg.generation_batch_size)

    @override
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

    def set_step_plan(self, plan: StepPlan) -> None:
        """Called by the EMSchedule callback before every RL step."""
        if plan.update_critic and self.critic is None:
            raise ValueError(f"the schedule asks for a critic update ({plan.phase}-step) but this run has no critic")
        self.step_plan = plan
        for source in (self.labeled_reward, self.unlabeled_reward):
            if source is not None:
                source.rl_step = self.rl_step

    @override
    def on_fit_start(self) -> None:
        if self.is_oracle:
            log.warning("ORACLE RUN: the unlabeled reward reads D_U ground truth; this is an upper bound, not TTT")

    # ------------------------------------------------------------------ one RL step
    @override
    def training_step(self, dataloader_iter: Iterator) -> None:
        plan = self.step_plan
        if plan is None:
            raise RuntimeError("no StepPlan set: TempoModule needs an EMSchedule callback to choose each step's data; "
                               "add {class_path: tempo_pl.callbacks.EMSchedule} under trainer.callbacks")
        self.last_step = None
        timings: dict[str, float] = {}
        profiler = self.trainer.profiler
        with timed(timings, "step", profiler):
            with timed(timings, "generation", profiler):
                rollout, metrics = self.collect_rollout(dataloader_iter)
            if rollout.num_rows == 0:
                log.warning("RL step %d: no prompt group survived filtering; skipping the update", self.rl_step)
                metrics["skipped_step"] = 1.0
                self._finish_step(plan, rollout, torch.zeros(0), {**metrics, **timings})
                return
            critic_first = self.critic_goes_first(rollout)
            with timed(timings, "scoring", profiler):
                stats = self.forward_stats(rollout)
                reward = self.score(rollout, stats)
                rollout, stats, reward = scoring.apply_keep_rows(rollout, stats, reward)
                if not critic_first:
                    adv, returns = self.advantages(rollout, stats, reward.scores)
            with timed(timings, "update", profiler):
                if critic_first:  # its forward fills the labeled rows' values, then the advantages read them
                    returns = self._advantages(rollout, stats, reward.scores, all_ranks=False)[1]
                    metrics.update(self.update_critic(rollout, stats, returns))
                    adv, returns = self.advantages(rollout, stats, reward.scores)
                elif plan.update_critic and not self.critic_is_frozen:
                    metrics.update(self.update_critic(rollout, stats, returns))
                if plan.update_policy:
                    metrics.update(self.update_policy(rollout, stats, adv))
                    if hasattr(self.engine, "sync_weights"):  # an engine serving its own copy of the weights
                        self.engine.sync_weights(self.policy)
        metrics.update(self.step_metrics(rollout, stats, reward, adv, returns))
        self._finish_step(plan, rollout, reward.scores, {**metrics, **timings, **throughput(rollout, timings)})

    def _finish_step(self, plan: StepPlan, rollout: Rollout, scores: Tensor, metrics: dict[str, float]) -> None:
        metrics = {f"train/{k}": float(v) for k, v in metrics.items()}
        metrics["train/phase"] = float(PHASE_CODES[plan.phase])
        metrics["train/rl_step"] = float(self.rl_step)
        if self.is_oracle:
            metrics["train/oracle_upper_bound"] = 1.0
        shown = {f"{name}_score": metrics[f"train/score/{name}_mean"] for name in ("labeled", "unlabeled")
                 if f"train/score/{name}_mean" in metrics}
        logged = self.log_at_rl_step(metrics, shown)
        self.last_step = StepRecord(self.rl_step, plan, rollout, scores, logged)
        # counted here, inside the step: callbacks' on_train_batch_end (checkpoints included) see the step as done
        self.rl_step += 1

    def log_at_rl_step(self, metrics: dict[str, float], prog_bar: Optional[dict[str, float]] = None) -> dict[str, float]:
        """Sends ``metrics`` straight to every logger at the RL step (``trainer.global_step`` counts both optimizers'
        steps) and to callbacks and the progress bar through ``self.log``; returns them."""
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(metrics, step=self.rl_step)
        self.log_dict(metrics, logger=False, batch_size=1)
        if prog_bar:
            self.log_dict(prog_bar, prog_bar=True, logger=False, batch_size=1)
        return metrics

    # ------------------------------------------------------------------ stages (override in research subclasses)
    def rollout(self, prompts: PromptBatch) -> Rollout:
        """Generate ``sampling.n`` responses per prompt with the current policy."""
        with self.generation_context():
            return self.engine.generate(self.policy, prompts, self.sampling.n)

    def generation_context(self) -> contextlib.AbstractContextManager:
        """Gathers sharded policy parameters once for a whole ``generate`` call (FSDP2), a no-op otherwise and for an
        engine that ``serves_own_weights`` (vLLM: ``sync_weights`` gives it the weights)."""
        if self.device_mesh is None or getattr(self.engine, "serves_own_weights", False):
            return contextlib.nullcontext()
        from tempo_pl.models.fsdp2 import gathered_for_generation

        return gathered_for_generation(self.policy)

    def collect_rollout(self, dataloader_iter: Iterator) -> tuple[Rollout, dict[str, float]]:
        """Draw, generate, grade labeled groups, drop those without signal, refill (``docs/algorithm.md``, "Group
        filtering and refill"). Returns the rollout cut to the RL batch (in prompts) and collection metrics."""
        cfg = self.training_cfg
        # refills come straight from the stream object: Lightning's dataloader_iter ends the epoch once it has handed
        # out limit_train_batches batches, and a refill is part of the same RL step, not another one
        refill_source = self.trainer.train_dataloader
        collected = collect_rollout(
            draw=lambda i: unwrap_batch(next(dataloader_iter) if i == 0 else next(refill_source)),
            generate=self.rollout,
            grade_labeled=self.grade_labeled,
            options=CollectOptions(cfg.group_filter, cfg.max_generation_batches, self.tokenizer.pad_token_id,
                                   underfilled=cfg.underfilled_batch),
            ranks=Ranks.of(self._trainer),
            rl_step=self.rl_step,
        )
        return collected.rollout, collected.metrics

    def grade_labeled(self, rollout: Rollout) -> Tensor:
        """``labeled_reward`` scores of the labeled rows, 0 on unlabeled rows."""
        return scoring.grade_labeled(self.labeled_reward, rollout)

    def forward_stats(self, rollout: Rollout) -> ForwardStats:
        """One no-grad pass: values of the critic; old log-probs and entropy of the policy unless the update is
        on-policy (:meth:`is_on_policy`) and takes them from its own training forward."""
        return rollout_stats(
            rollout, self.policy, self.critic, self.device, self.training_cfg.forward_batch_size,
            self._logprob_temperature,
            with_self_certainty=self.unlabeled_reward is not None and self.unlabeled_reward.needs_self_certainty,
            reference=self._reference_context if self.algorithm.kl_coef > 0 else None,
            with_policy=self.step_plan.update_policy and not self.is_on_policy(rollout),
            value_rows=~rollout.is_labeled.bool() if self.critic_goes_first(rollout) else None,
        )

    def is_on_policy(self, rollout: Rollout) -> bool:
        """One epoch of one mini-batch: the policy update's first forward is the policy that sampled, so the old
        log-probs are its own, detached (ratio exactly 1, as the reference), and no separate pass is needed."""
        cfg = self.training_cfg
        return cfg.on_policy_ratio and cfg.ppo_epochs == 1 and len(rollout.prompt_batch) <= cfg.mini_batch_size

    def critic_goes_first(self, rollout: Rollout) -> bool:
        """The critic update runs before the advantages and gives the labeled rows' values from its own forward, so
        the no-grad pass skips them: when it trains this step on one epoch of one mini-batch (every forward then sees
        the weights before the step, as the pass would; ``training.on_policy_ratio``), the estimator's labeled
        targets read no values, ``score``, ``advantages`` and ``update_critic`` are the module's own (an override
        could read the labeled values before the update, or not write them) and the critic is not FSDP-sharded
        (ranks may hold different numbers of unlabeled rows, and a sharded forward is a collective)."""
        own_stages = all(getattr(type(self), name) is getattr(TempoModule, name)
                         for name in ("score", "advantages", "update_critic"))
        return (self.step_plan.update_critic and self.critic is not None and self.is_on_policy(rollout)
                and self.device_mesh is None and own_stages
                and advantage_estimator(self.algorithm.advantage).labeled_returns_from_scores
                and not self.critic_is_frozen)

    @property
    def critic_is_frozen(self) -> bool:
        """The critic optimizer's learning rate is 0 in every group (a fixed critic): its update is skipped."""
        groups = self.optimizers()[1].param_groups if self.critic is not None else []
        return all(group.get("initial_lr", group["lr"]) == 0 for group in groups)

    def score(self, rollout: Rollout, stats: ForwardStats) -> RewardOutput:
        """Every row's outcome: ``labeled_reward`` on labeled rows (graded once, while filtering), the unlabeled
        reward source on unlabeled rows."""
        return scoring.score_rollout(rollout, stats, self.labeled_reward, self.unlabeled_reward)

    def advantages(self, rollout: Rollout, stats: ForwardStats, scores: Tensor) -> tuple[Tensor, Tensor]:
        """Token advantages and critic targets from the per-row outcomes, by the registered
        ``algorithm.advantage`` estimator (``docs/algorithm.md``, "Advantages")."""
        return self._advantages(rollout, stats, scores)

    def _advantages(self, rollout: Rollout, stats: ForwardStats, scores: Tensor, all_ranks: bool = True):
        batch = AdvantageBatch(scores=scores, mask=rollout.response_mask.float(), group_ids=rollout.group_ids,
                               is_labeled=rollout.is_labeled, values=stats.values,
                               all_reduce=Ranks.of(self._trainer).all_reduce if all_ranks else None)
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

    def update_critic(self, rollout: Rollout, stats: ForwardStats, returns: Tensor) -> dict[str, float]:
        """E-step: regress the critic on labeled rows' outcomes, in mini-batches."""
        micro_loss = critic_micro_loss(self.critic, row_inputs(rollout, self.device), rollout, stats, returns,
                                       self.value_loss, own_values=self.critic_goes_first(rollout))
        out = self._optimize(rollout, "critic", self.training_cfg.critic_grad_clip, micro_loss)
        return {f"critic/{k}": v for k, v in out.items()}

    def update_policy(self, rollout: Rollout, stats: ForwardStats, advantages: Tensor) -> dict[str, float]:
        """M-step: the clipped policy-gradient update on every row of the rollout (on-policy when the no-grad pass
        left ``stats.old_logprobs`` empty: see :func:`~tempo_pl.stages.updates.policy_micro_loss`)."""
        micro_loss = policy_micro_loss(self.policy, row_inputs(rollout, self.device), rollout, stats, advantages,
                                       self.algorithm, self._logprob_temperature, self.policy_loss)
        out = self._optimize(rollout, "policy", self.training_cfg.policy_grad_clip, micro_loss)
        return {f"policy/{k}": v for k, v in out.items()}

    def step_metrics(
        self, rollout: Rollout, stats: ForwardStats, reward: RewardOutput, adv: Tensor, returns: Tensor
    ) -> dict[str, float]:
        """The step's statistics (names without ``train/``). Override and extend the dict to log your own scalars:
        they are logged at the RL step with everything else."""
        return step_metrics(rollout, stats, reward, adv, returns)

    def _optimize(self, rollout: Rollout, which: str, grad_clip: float, micro_loss) -> dict[str, float]:
        optimizers, schedulers = self.optimizers(), self.lr_schedulers()
        optimizer = optimizers[0 if which == "policy" else 1] if isinstance(optimizers, list) else optimizers
        has_scheduler = (self.policy_scheduler_fn if which == "policy" else self.critic_scheduler_fn) is not None
        # configure_optimizers lists the policy's scheduler first, the critic's last
        scheduler = (schedulers if isinstance(schedulers, list) else [schedulers])[
            0 if which == "policy" else -1] if has_scheduler else None
        plan = MiniBatchPlan.of(self.training_cfg, rollout, grad_clip)
        clip = lambda opt, value: self.clip_gradients(opt, value, gradient_clip_algorithm="norm")  # noqa: E731
        mask = rollout.response_mask * (rollout.is_labeled.unsqueeze(-1) if which == "critic" else 1)
        return optimize(rollout.num_rows, plan, optimizer, scheduler, micro_loss, self.manual_backward, clip,
                        labeled=rollout.is_labeled, generator=self._mini_batch_generator,
                        units=loss_units(mask, self.algorithm.loss_agg_mode), ranks=Ranks.of(self._trainer),
                        rows_with_loss=rollout.is_labeled if which == "critic" else None)

    # ------------------------------------------------------------------ evaluation
    @override
    def on_validation_epoch_start(self) -> None:
        # evaluation samples from the global RNGs; restoring them afterwards keeps training's samples unchanged
        self._rng_before_eval = capture_rng()
        self._evaluation = Evaluation(self.evaluation, tokenizer=self.tokenizer)

    @override
    def validation_step(self, batch: PromptBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        with self.generation_context():
            rollout = self.engine.generate(self.policy, batch, self.evaluation.k,
                                           sampling=eval_sampling(self.evaluation, self.sampling))
        self._evaluation.add(dataloader_idx, rollout, self.critic, self.training_cfg.forward_batch_size, self.device)
        if self.evaluation.greedy:
            with self.generation_context():
                greedy = self.engine.generate(self.policy, batch, 1,
                                              sampling=greedy_sampling(self.evaluation, self.sampling))
            self._evaluation.add_greedy(dataloader_idx, greedy)

    @override
    def on_validation_epoch_end(self) -> None:
        restore_rng(self._rng_before_eval)
        # trainer.log_dir broadcasts from rank 0: every rank must ask for it, not rank 0 alone
        jsonl_dir = eval_dir(self.trainer) if self.evaluation.write_jsonl else None
        names = list(getattr(getattr(self.trainer, "datamodule", None), "eval_set_names", []) or [])
        metrics = self._evaluation.finish(names, gather_records,
                                          jsonl_dir if self.trainer.is_global_zero else None, self.rl_step)
        if metrics:  # straight to the loggers also when Lightning's sanity check mutes self.log
            self.log_at_rl_step(metrics)

    # ------------------------------------------------------------------ checkpoint state
    @override
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # sampling draws from the global RNGs; keeping them makes a resumed run sample what the straight run samples
        checkpoint["tempo"] = {"rl_step": self.rl_step, "rng": capture_rng()}
        if self._mini_batch_generator is not None:
            checkpoint["tempo"]["mini_batch_rng"] = self._mini_batch_generator.get_state()

    @override
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("tempo")
        if state:
            self.rl_step = int(state["rl_step"])
            self._pending_rng = state["rng"]
            if self._mini_batch_generator is not None and "mini_batch_rng" in state:
                self._mini_batch_generator.set_state(state["mini_batch_rng"])

    @override
    def on_train_start(self) -> None:
        if type(self).score is TempoModule.score:  # an overridden score may add a reward of its own
            scoring.check_critic_reward_can_learn(self.unlabeled_reward, self.critic, self.critic_is_frozen,
                                                  scoring.schedule_updates_critic(self.trainer))
        if self._pending_rng is not None:
            restore_rng(self._pending_rng)
            self._pending_rng = None

    # ------------------------------------------------------------------ helpers
    @property
    def _logprob_temperature(self) -> float:
        # greedy sampling (temperature 0) is scored under the untempered distribution
        return self.sampling.temperature or 1.0

    @contextlib.contextmanager
    def _reference_context(self):
        if self.reference is not None:
            yield self.reference
        else:
            with self.policy.disable_adapter():
                yield self.policy
