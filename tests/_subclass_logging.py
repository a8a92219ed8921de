"""A research subclass that logs its own scalar with ``self.log`` from inside a stage."""

from __future__ import annotations

from tempo_pl.module import TempoModule


class ChattyModule(TempoModule):
    def score(self, rollout, stats):
        out = super().score(rollout, stats)
        self.log("my/response_chars", sum(len(t) for t in rollout.texts) / rollout.num_rows)
        return out
