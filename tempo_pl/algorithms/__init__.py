"""Advantage estimators, policy/value losses and per-token statistics, as pure tensor functions, and the registries
that let YAML name an estimator or a policy loss.

No Lightning and no models live here, so each function can be checked by hand on small tensors.
"""

from tempo_pl.algorithms.advantages import (
    em_advantage,
    em_token_advantage,
    gae_advantage,
    grpo_advantage,
    last_token_value,
    last_valid_index,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    rloo_advantage,
)
from tempo_pl.algorithms.losses import (
    AGG_MODES,
    KL_KINDS,
    VALUE_CLIP_MODES,
    aggregate_loss,
    gspo_policy_loss,
    kl_penalty,
    ppo_clip_policy_loss,
    value_loss,
)
from tempo_pl.algorithms.registry import (
    AdvantageBatch,
    advantage_estimator,
    advantage_names,
    policy_loss_fn,
    policy_loss_names,
    register_advantage,
    register_policy_loss,
)
from tempo_pl.algorithms.token_stats import (
    entropy_from_logits,
    explained_variance,
    logprobs_from_logits,
    self_certainty_from_logits,
)

__all__ = [
    "AdvantageBatch",
    "advantage_estimator",
    "advantage_names",
    "policy_loss_fn",
    "policy_loss_names",
    "register_advantage",
    "register_policy_loss",
    "AGG_MODES",
    "KL_KINDS",
    "VALUE_CLIP_MODES",
    "aggregate_loss",
    "em_advantage",
    "em_token_advantage",
    "entropy_from_logits",
    "explained_variance",
    "gae_advantage",
    "grpo_advantage",
    "gspo_policy_loss",
    "kl_penalty",
    "last_token_value",
    "last_valid_index",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "ppo_clip_policy_loss",
    "rloo_advantage",
    "self_certainty_from_logits",
    "value_loss",
]
