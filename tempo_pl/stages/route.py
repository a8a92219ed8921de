"""How one RL step runs, decided once after its rollout is collected: which updates it makes and where the old
log-probs and the labeled rows' values come from (``docs/algorithm.md``, "One RL step" and "The critic's own
values"). The stages read the route; none decides it again."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepRoute:
    update_critic: bool
    """The schedule asks for a critic update and the critic is not frozen (learning rate 0)."""
    update_policy: bool
    """The schedule asks for a policy update."""
    on_policy: bool
    """The policy update's first forward is the sampling policy: it gives the old log-probs and entropy, and the
    no-grad pass skips the policy."""
    critic_first: bool
    """The critic update runs before the estimator and gives the labeled rows' values from its own forward; the
    no-grad pass computes the unlabeled rows' values alone."""
