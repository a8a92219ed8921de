"""A TempoModule whose policy loss is NaN: the non-finite-gradient test names it by class path."""

from tempo_pl.module import TempoModule


class NanPolicyLoss(TempoModule):
    def policy_loss(self, logprobs, old_logprobs, advantages, mask):
        loss, metrics = super().policy_loss(logprobs, old_logprobs, advantages, mask)
        return loss * float("nan"), metrics
