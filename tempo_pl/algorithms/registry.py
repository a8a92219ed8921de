"""Registries of advantage estimators and policy losses: how ``algorithm.advantage`` and ``algorithm.policy_loss``
name the function that runs.

A researcher adds an estimator by registering one function; YAML then names it, either by its registered name
(when the module that registers it is already imported, e.g. by a subclass named in ``model.class_path``) or as
``module:name``, which imports ``module`` first::

    from tempo_pl.algorithms.registry import AdvantageBatch, register_advantage

    @register_advantage("median_baseline")
    def median_baseline(batch: AdvantageBatch, config) -> tuple[Tensor, Tensor]:
        ...

    # YAML: model.init_args.algorithm.advantage: my_module:median_baseline

An estimator takes the rows of one RL step (:class:`AdvantageBatch`) and the run's
:class:`~tempo_pl.config.AlgorithmConfig`, and returns ``(advantages, returns)``, both (N, R) and zero on padding;
``returns`` are the critic's regression targets. A policy loss takes ``(logprobs, old_logprobs, advantages, mask,
config)`` and returns ``(loss, metrics)`` as the functions of :mod:`tempo_pl.algorithms.losses` do. See
``docs/algorithm.md`` ("Advantages", "Losses") for the built-in ones.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, TypeVar

from torch import Tensor

from tempo_pl.algorithms import advantages as adv
from tempo_pl.algorithms import losses

__all__ = [
    "AdvantageBatch",
    "AdvantageEstimator",
    "PolicyLoss",
    "register_advantage",
    "register_policy_loss",
    "advantage_estimator",
    "policy_loss_fn",
    "advantage_names",
    "policy_loss_names",
]


@dataclass(frozen=True)
class AdvantageBatch:
    """The rows of one RL step as an advantage estimator sees them.

    Shapes: ``scores``, ``group_ids``, ``is_labeled`` (N,); ``mask`` and ``values`` (N, R). ``values`` is None when
    the run has no critic. ``all_reduce`` sums a tensor over every rank (None on one process): an estimator that
    normalises over the batch uses it so that N ranks compute what one process computes on their concatenated rows
    (a group's rows are always on one rank, so group statistics need none).
    """

    scores: Tensor
    mask: Tensor
    group_ids: Tensor
    is_labeled: Tensor
    values: Optional[Tensor] = None
    all_reduce: Optional[Callable[[Tensor], Tensor]] = None


AdvantageFn = Callable[[AdvantageBatch, Any], "tuple[Tensor, Tensor]"]
PolicyLossFn = Callable[[Tensor, Tensor, Tensor, Tensor, Any], "tuple[Tensor, dict[str, Tensor]]"]


@dataclass(frozen=True)
class AdvantageEstimator:
    name: str
    fn: AdvantageFn
    needs_critic: bool
    """The estimator reads critic values (a run must then have a critic)."""
    labeled_returns_from_scores: bool = False
    """The critic's targets on labeled rows are the scores alone: they read no values. The critic update may then run
    before the advantages and give the labeled rows' values from its own forward (``TempoModule.critic_goes_first``)."""


@dataclass(frozen=True)
class PolicyLoss:
    name: str
    fn: PolicyLossFn


Entry = TypeVar("Entry", AdvantageEstimator, PolicyLoss)


class _Registry(Generic[Entry]):
    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        self.entries: dict[str, Entry] = {}

    def add(self, entry: Entry) -> None:
        if entry.name in self.entries and self.entries[entry.name].fn is not entry.fn:
            raise ValueError(f"a {self.kind} named {entry.name!r} is already registered")
        self.entries[entry.name] = entry

    def get(self, name: str) -> Entry:
        if name not in self.entries and ":" in name:
            module, _, short = name.partition(":")
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise ValueError(f"{self.key}={name!r}: cannot import module {module!r} ({err})") from err
            if short in self.entries:
                return self.entries[short]
            raise ValueError(f"{self.key}={name!r}: importing {module!r} registered no {self.kind} named {short!r}")
        if name not in self.entries:
            raise ValueError(
                f"{self.key} must be one of {sorted(self.entries)} or 'module:name' of a registered {self.kind}, "
                f"got {name!r}"
            )
        return self.entries[name]


_ADVANTAGES: _Registry[AdvantageEstimator] = _Registry("advantage estimator", "algorithm.advantage")
_POLICY_LOSSES: _Registry[PolicyLoss] = _Registry("policy loss", "algorithm.policy_loss")


def register_advantage(
    name: str, *, needs_critic: bool = False, labeled_returns_from_scores: bool = False
) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: register ``fn(batch, config) -> (advantages, returns)`` as the advantage estimator ``name``.
    ``labeled_returns_from_scores``: declare that ``returns`` on labeled rows do not read ``batch.values``."""

    def add(fn: AdvantageFn) -> AdvantageFn:
        _ADVANTAGES.add(AdvantageEstimator(name, fn, needs_critic, labeled_returns_from_scores))
        return fn

    return add


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator: register ``fn(logprobs, old_logprobs, advantages, mask, config) -> (loss, metrics)``."""

    def add(fn: PolicyLossFn) -> PolicyLossFn:
        _POLICY_LOSSES.add(PolicyLoss(name, fn))
        return fn

    return add


def advantage_estimator(name: str) -> AdvantageEstimator:
    """The registered estimator ``name`` (or ``module:name``, importing ``module``); ``ValueError`` lists the names."""
    return _ADVANTAGES.get(name)


def policy_loss_fn(name: str) -> PolicyLoss:
    """The registered policy loss ``name`` (or ``module:name``); ``ValueError`` lists the names."""
    return _POLICY_LOSSES.get(name)


def advantage_names() -> list[str]:
    return sorted(_ADVANTAGES.entries)


def policy_loss_names() -> list[str]:
    return sorted(_POLICY_LOSSES.entries)


# ------------------------------------------------------------------------------------------------ built-ins
@register_advantage("em_token", needs_critic=True, labeled_returns_from_scores=True)
def _em_token(batch: AdvantageBatch, config: Any) -> tuple[Tensor, Tensor]:
    return adv.em_token_advantage(batch.scores, batch.values, batch.mask, whiten=config.whiten_advantages,
                                  all_reduce=batch.all_reduce)


@register_advantage("em", needs_critic=True, labeled_returns_from_scores=True)
def _em(batch: AdvantageBatch, config: Any) -> tuple[Tensor, Tensor]:
    return adv.em_advantage(batch.scores, batch.values, batch.mask, batch.group_ids, batch.is_labeled)


@register_advantage("gae", needs_critic=True)
def _gae(batch: AdvantageBatch, config: Any) -> tuple[Tensor, Tensor]:
    return adv.gae_advantage(batch.scores, batch.values, batch.mask, gamma=config.gamma, lam=config.lam,
                             whiten=config.whiten_advantages, all_reduce=batch.all_reduce)


@register_advantage("grpo")
def _grpo(batch: AdvantageBatch, config: Any) -> tuple[Tensor, Tensor]:
    return adv.grpo_advantage(batch.scores, batch.mask, batch.group_ids, norm_by_std=config.grpo_norm_by_std)


@register_advantage("rloo")
def _rloo(batch: AdvantageBatch, config: Any) -> tuple[Tensor, Tensor]:
    return adv.rloo_advantage(batch.scores, batch.mask, batch.group_ids)


@register_policy_loss("gspo")
def _gspo(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, config: Any):
    return losses.gspo_policy_loss(logprobs, old_logprobs, advantages, mask, config.clip_low, config.clip_high,
                                   agg_mode=config.loss_agg_mode)


@register_policy_loss("ppo")
def _ppo(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, config: Any):
    return losses.ppo_clip_policy_loss(logprobs, old_logprobs, advantages, mask, config.clip_low, config.clip_high,
                                       agg_mode=config.loss_agg_mode, dual_clip=config.dual_clip_ratio)
