"""Typed option groups of :class:`~tempo_pl.module.TempoModule`: sampling, algorithm, training, evaluation.

Each dataclass is one YAML mapping under ``model.init_args``; the field docstrings are what ``tempo-pl fit --help``
prints. Defaults follow the reference scripts where the reference has a value (``docs/algorithm.md``).

Naming: a ``*Config`` says how a run behaves (these groups, and each pipeline's ``DemoConfig``/``CompareConfig``); a
``*Spec`` says what to build or read (``ModelSpec``, ``CriticSpec`` and ``LoraSpec`` in :mod:`tempo_pl.models.builders`,
``DatasetSpec`` in :mod:`tempo_pl.data.sources`, ``SyntheticTaskSpec``); ``FSDP2Recipe`` says how to shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tempo_pl.algorithms.checks import check_choice
from tempo_pl.algorithms.correction import CORRECTION_MODES, check_correction_cap
from tempo_pl.algorithms.losses import AGG_MODES, KL_KINDS, VALUE_CLIP_MODES
from tempo_pl.algorithms.registry import advantage_estimator, policy_loss_fn
from tempo_pl.engines.prompts import PromptFormat
from tempo_pl.rewards.answer_extraction import EXTRACTION_MODES


OVERLONG_PROMPT_MODES = ("truncate_left", "drop")


@dataclass
class SamplingConfig:
    """How responses are sampled.

    Example::

        SamplingConfig(n=8, temperature=1.0, max_new_tokens=16384, max_prompt_length=2048)
    """

    n: int = 8
    """Responses per prompt (the group size)."""
    temperature: float = 1.0
    """Softmax temperature; 0 = greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1 = off."""
    top_k: int = 0
    """Sample among the k most likely tokens; 0 or -1 = off."""
    max_new_tokens: int = 1024
    """Response length budget; a response that reaches it without EOS is marked ``truncated``."""
    max_prompt_length: int = 2048
    """Longest prompt in tokens, chat template included."""
    overlong_prompt: str = "truncate_left"
    """A longer prompt is cut from the left (``"truncate_left"``, the reference code: it loses its beginning and the
    chat template's header) or dropped (``"drop"``: the step trains on fewer prompts). Either way the prompts are
    counted every RL step (``train/rollout/truncated_prompts``, ``train/rollout/dropped_overlong_prompts``) and the
    first truncation is warned about, with the longest prompt's length."""
    prompt_format: PromptFormat = field(default_factory=PromptFormat)
    """System prompt, chat-template variables (``enable_thinking``) or no chat template; see
    :class:`~tempo_pl.engines.prompts.PromptFormat`. Evaluation uses the same format."""

    def __post_init__(self) -> None:
        if isinstance(self.prompt_format, dict):  # from Python or YAML without class_path
            self.prompt_format = PromptFormat(**self.prompt_format)
        if self.n < 1:
            raise ValueError(f"SamplingConfig.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise ValueError(f"SamplingConfig.top_k must be >= 0 (or -1 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_prompt_length < 1:
            raise ValueError(f"SamplingConfig.max_prompt_length must be >= 1, got {self.max_prompt_length}")
        if self.overlong_prompt not in OVERLONG_PROMPT_MODES:
            raise ValueError(
                f"SamplingConfig.overlong_prompt must be one of {OVERLONG_PROMPT_MODES}, got {self.overlong_prompt!r}"
            )


@dataclass
class AlgorithmConfig:
    """How advantages and losses are computed (``docs/algorithm.md``, "Advantages" and "Losses")."""

    advantage: str = "em_token"
    """Advantage estimator: ``em_token`` (TEMPO: critic terminal value minus token values, globally whitened), ``em``
    (sequence-level, group-normalised), ``gae`` (PPO with a critic), ``grpo`` or ``rloo`` (critic-free baselines), or
    any estimator registered with ``tempo_pl.algorithms.register_advantage`` (``module:name`` imports ``module``
    first)."""
    whiten_advantages: bool = True
    """Globally whiten token advantages for ``em_token`` and ``gae`` (the reference always does)."""
    gamma: float = 1.0
    """Discount for ``gae`` (unused by the other estimators, which is why it is rejected for them when changed)."""
    lam: float = 1.0
    """GAE lambda for ``gae`` (unused by the other estimators, which is why it is rejected for them when changed)."""
    grpo_norm_by_std: bool = True
    """Divide group-centred scores by the group standard deviation (``grpo`` only)."""
    policy_loss: str = "gspo"
    """``gspo`` (sequence-level importance ratio, the reference), ``ppo`` (token-level ratio), or any loss registered
    with ``tempo_pl.algorithms.register_policy_loss`` (``module:name`` imports ``module`` first)."""
    clip_low: float = 3e-4
    """Lower clip range epsilon_low of the importance ratio."""
    clip_high: float = 5e-4
    """Upper clip range epsilon_high of the importance ratio (clip-higher when larger than ``clip_low``)."""
    dual_clip_ratio: float = 3.0
    """``ppo`` only: a token with a negative advantage loses at most ``-A * dual_clip_ratio`` (dual-clip PPO, the
    reference's ``clip_ratio_c``); 0 = off. GSPO's sequence ratio has no such cap, as in the reference."""
    loss_agg_mode: str = "seq-mean-token-mean"
    """Aggregation of token losses: ``token-mean``, ``seq-mean-token-mean`` or ``seq-mean-token-sum``."""
    value_clip_mode: str = "sequence"
    """Critic loss clipping: ``sequence`` (the reference's sequence-mean shift), ``token`` (standard PPO) or ``none``."""
    cliprange_value: float = 0.1
    """Clip range of the critic's value update."""
    kl_coef: float = 0.0
    """Weight of a KL penalty to the reference policy in the policy loss (0 = off; the reference has none)."""
    kl_kind: str = "low_var_kl"
    """KL estimator: ``kl``, ``abs``, ``mse`` or ``low_var_kl``."""
    entropy_coef: float = 0.0
    """Weight of an entropy bonus in the policy loss (0 = off)."""
    rollout_correction: str = "none"
    """Correct the gap between the sampler's and the trainer's log-probs (``docs/algorithm.md``, "Rollout
    correction"): ``token_tis`` weighs each token's policy loss by ``min(pi_old / pi_sampler, cap)`` (the reference's
    truncated importance sampling), ``sequence_tis`` by the row's ratio truncated likewise, ``token_mask`` /
    ``sequence_mask`` leave tokens / rows whose ratio is outside [1/cap, cap] out of the loss; ``none`` = off. Needs
    an engine that gives the sampler's log-probs (``HFGenerateEngine``, ``VLLMEngine``)."""
    rollout_correction_cap: float = 2.0
    """The ``cap`` of ``rollout_correction`` (the reference's ``tis_imp_ratio_cap``; ``.inf`` = untruncated)."""

    def __post_init__(self) -> None:
        advantage_estimator(self.advantage)
        policy_loss_fn(self.policy_loss)
        check_choice("algorithm.loss_agg_mode", self.loss_agg_mode, AGG_MODES)
        check_choice("algorithm.value_clip_mode", self.value_clip_mode, VALUE_CLIP_MODES)
        check_choice("algorithm.kl_kind", self.kl_kind, KL_KINDS)
        check_choice("algorithm.rollout_correction", self.rollout_correction, CORRECTION_MODES)
        check_correction_cap(self.rollout_correction, self.rollout_correction_cap)
        if self.dual_clip_ratio != 0 and self.dual_clip_ratio <= 1:
            raise ValueError(f"algorithm.dual_clip_ratio must be > 1 (or 0 = off), got {self.dual_clip_ratio}")
        for name in ("clip_low", "clip_high", "cliprange_value", "kl_coef", "entropy_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"algorithm.{name} must be >= 0, got {getattr(self, name)}")
        if self.advantage != "gae" and (self.gamma != 1.0 or self.lam != 1.0):
            raise ValueError(
                f"algorithm.gamma/lam only apply to advantage='gae', but advantage={self.advantage!r}: remove them"
            )
        if self.policy_loss == "gspo" and self.loss_agg_mode != "seq-mean-token-mean":
            raise ValueError("algorithm.policy_loss='gspo' requires loss_agg_mode='seq-mean-token-mean' (it averages each row's tokens first)")

    @property
    def needs_critic(self) -> bool:
        return advantage_estimator(self.advantage).needs_critic


@dataclass
class TrainingConfig:
    """Batching, epochs, clipping and group filtering of one RL step (``docs/algorithm.md``, "One RL step" and "Group filtering and refill")."""

    mini_batch_size: int = 2
    """Prompts per optimizer step (each brings its n responses); the reference uses a quarter of the RL batch."""
    micro_batch_size: int = 8
    """Rows (responses) per forward/backward pass; gradients accumulate over a mini-batch."""
    micro_batch_tokens: Optional[int] = None
    """Token budget of a forward/backward pass instead of ``micro_batch_size`` rows: each mini-batch's rows are
    sorted by length and grouped while rows x (longest prompt + longest response) of the group fits, so short rows
    share a pass and no row is padded to a long one's length (a row over the budget gets a pass of its own). The
    gradient is the same; the memory peak follows the budget. null = ``micro_batch_size`` rows per pass."""
    forward_batch_size: int = 16
    """Rows per no-grad forward pass (old log-probs, values)."""
    generation_batch_size: Optional[int] = None
    """Prompts per ``generate`` call (each with its n samples); None = the whole batch at once. Bounds KV-cache memory."""
    ppo_epochs: int = 1
    """Passes over the rollout per RL step, for the policy and the critic alike."""
    mini_batch_seed: Optional[int] = 0
    """Seed of the shuffle that deals rows into mini-batches, stratified so each holds its share of labeled and
    unlabeled rows (its state is saved in checkpoints); null keeps rows in collection order, labeled first."""
    on_policy_ratio: bool = True
    """With one epoch of one mini-batch, take the old log-probs from the update's own forward, detached (ratio
    exactly 1, the reference's shortcut) instead of a separate no-grad pass, and the labeled rows' values from the
    critic update's own forward (docs/algorithm.md, "The critic's own values"); false always makes that pass."""
    policy_grad_clip: float = 1.0
    """Gradient-norm clip of the policy (0 = off)."""
    critic_grad_clip: float = 1.0
    """Gradient-norm clip of the critic (0 = off)."""
    group_filter: bool = True
    """Drop labeled prompt groups whose n rewards all agree (zero variance) and generate more prompts to refill."""
    max_generation_batches: int = 10
    """At most this many generation batches per RL step while refilling after group filtering."""
    underfilled_batch: str = "train"
    """When ``max_generation_batches`` leave fewer kept groups than the batch (over all ranks): ``train`` on what was
    kept (logged as ``filter/underfilled``), or ``error`` as the reference does. ``train`` is the default because a
    test-time run whose labeled groups are all solved for a while should not die hours in; the counter shows it."""
    nonfinite_patience: int = 3
    """Stop the run once this many RL steps in a row had a policy or critic update whose loss or gradient was not
    finite (or whose gradient norm exceeded ``max_grad_norm_abort``), naming the step and the quantity; each such
    step is warned on the console (:class:`~tempo_pl.callbacks.DivergenceGuard`)."""
    max_grad_norm_abort: Optional[float] = None
    """A gradient norm (before clipping) above this counts as a failed update for ``nonfinite_patience``; null: off."""

    rollout_ahead: int = 0
    """``1``: collect the rollout of RL step t+1 while step t scores and updates, from the weights step t started with
    (one policy update stale; ``docs/algorithm.md``, "Rollouts one step ahead"), in a background thread when the run
    is one process; pair it with ``algorithm.rollout_correction``. ``0``: each step samples its own rollout first."""

    def __post_init__(self) -> None:
        check_choice("training.underfilled_batch", self.underfilled_batch, ("train", "error"))
        if self.rollout_ahead not in (0, 1) or isinstance(self.rollout_ahead, bool):
            raise ValueError(f"training.rollout_ahead must be 0 or 1, got {self.rollout_ahead!r}")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < 1:
            raise ValueError(f"training.micro_batch_tokens must be >= 1 or null, got {self.micro_batch_tokens}")
        if self.generation_batch_size is not None and self.generation_batch_size < 1:
            raise ValueError(f"training.generation_batch_size must be >= 1 or null, got {self.generation_batch_size}")
        if self.max_grad_norm_abort is not None and not self.max_grad_norm_abort > 0:
            raise ValueError(f"training.max_grad_norm_abort must be > 0 or null, got {self.max_grad_norm_abort}")
        for name in ("mini_batch_size", "micro_batch_size", "forward_batch_size", "ppo_epochs", "max_generation_batches",
                     "nonfinite_patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("policy_grad_clip", "critic_grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"training.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class EvalConfig:
    """In-loop and standalone evaluation (issue: answer grading and evaluation)."""

    k: int = 4
    """Samples per question."""
    temperature: float = 1.0
    """Sampling temperature of evaluation (the reference samples at 1.0)."""
    top_p: float = 1.0
    """Nucleus sampling of evaluation."""
    max_new_tokens: int | None = None
    """Response budget of evaluation in tokens, >= 1; null = the training rollout's ``sampling.max_new_tokens``."""
    pass_ks: list[int] = field(default_factory=lambda: [1, 2, 4])
    """The j of every pass@j logged (each at most k)."""
    write_jsonl: bool = True
    """Write a per-question JSONL (ids, extracted answers, correctness) beside the logs at each validation."""
    greedy: bool = False
    """Also decode each question once greedily (temperature 0, the same budget) and log
    ``val/<set>/greedy_accuracy``, the share of questions whose greedy answer is right, beside ``mean@k`` (k
    samples at ``temperature``: the paper's number)."""
    extraction: str = "boxed"
    """How a response's final answer is read: ``boxed`` (the last ``\\boxed{}`` or ``####``, as the training reward
    and the reference) or ``lenient`` (also "the answer is ...", several boxes, the last LaTeX or plain expression:
    for models that answer in prose). Grading itself is the same in both (``tempo_pl.rewards.grading.grade``)."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"evaluation.k must be >= 1, got {self.k}")
        if self.max_new_tokens is not None and (isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1):
            raise ValueError(
                f"evaluation.max_new_tokens must be >= 1, or null for the training rollout's budget; got "
                f"{self.max_new_tokens!r}"
            )
        if not isinstance(self.greedy, bool):
            raise ValueError(f"evaluation.greedy must be true or false, got {self.greedy!r}")
        check_choice("evaluation.extraction", self.extraction, tuple(EXTRACTION_MODES))
        bad = [j for j in self.pass_ks if j < 1 or j > self.k]
        if bad:
            raise ValueError(f"evaluation.pass_ks must lie in 1..k={self.k}, got {bad}")


def check_module_options(policy, critic, algorithm: AlgorithmConfig, unlabeled_reward, shared_base: bool) -> None:
    """Cross-option checks of :class:`~tempo_pl.module.TempoModule`: errors that name the key to change."""
    if shared_base and (critic is None or policy.lora is None or critic.lora is None):
        raise ValueError("shared_base=true needs a critic and `lora` on both policy and critic specs")
    if algorithm.needs_critic and critic is None:
        raise ValueError(f"algorithm.advantage={algorithm.advantage!r} needs a critic: set model.init_args.critic")
    if unlabeled_reward is None:
        return
    if unlabeled_reward.needs_values and critic is None:
        raise ValueError(f"unlabeled_reward {type(unlabeled_reward).__name__} reads critic values: set critic")
    if unlabeled_reward.reads_answers:
        raise ValueError(
            f"unlabeled_reward {type(unlabeled_reward).__name__} reads ground truth, which unlabeled rows do not "
            "carry. For the oracle upper bound set data.init_args.expose_unlabeled_answers: true instead: D_U rows "
            "then come labeled and the labeled_reward verifier scores them"
        )
