"""Test helpers named by class path in a subprocess run: an engine whose responses depend only on the prompt (so one
process and two ranks sample the same rows whatever their RNG), and a module that records what each step trained on.
"""

from __future__ import annotations

import os
import zlib

import torch

from tempo_pl.module import TempoModule
from tempo_pl.engines.hf_generate import HFGenerateEngine


def _code(text: str) -> int:
    return zlib.crc32(text.encode())


class FixedEngine(HFGenerateEngine):
    """Sample k of a labeled prompt is right unless ``crc(id, k) % 3 == 0``, so some groups are all right (no signal)
    and are filtered; unlabeled samples box a number from the same code. Lengths vary with the code."""

    def generate(self, model, prompts, n=None, sampling=None):
        self._batch = prompts
        return super().generate(model, prompts, n, sampling)

    def _generate_chunk(self, model, token_ids, n, config, device):
        width = max(len(ids) for ids in token_ids)
        pad_id, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        prompt_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in token_ids])
        prompt_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in token_ids])
        batch = self._batch
        responses = []
        for i in range(len(token_ids)):
            pid, gold = batch.ids[i], batch.answers[i]
            right_every = 2 if _code(pid) % 4 else 1  # a quarter of the labeled groups are all right
            for k in range(n):
                code = _code(f"{pid}#{k}")
                if gold is not None:
                    answer = gold if (k % right_every == 0 or code % 3) else "-1"
                else:
                    answer = str(code % 7)
                text = f"so \\boxed{{{answer}}}" + "x" * (code % 5)
                responses.append(self.tokenizer(text, add_special_tokens=False)["input_ids"] + [eos])
        length = max(len(r) for r in responses)
        response_ids = torch.tensor([r + [pad_id] * (length - len(r)) for r in responses])
        return (prompt_ids.repeat_interleave(n, dim=0).to(device), prompt_mask.repeat_interleave(n, dim=0).to(device),
                response_ids.to(device))


class RecordingTempo(TempoModule):
    """Writes, per rank, every step's rows (prompt id, sample index, labeled), advantages and losses, and the final
    weights, to ``$TEMPO_TEST_OUT/rank<r>.pt``."""

    def advantages(self, rollout, stats, scores):
        adv, returns = super().advantages(rollout, stats, scores)
        groups = rollout.group_ids.tolist()
        rows = [(rollout.prompt_batch.ids[g], groups[:i].count(g)) for i, g in enumerate(groups)]
        self._pending = {"rows": rows, "labeled": rollout.is_labeled.tolist(),
                         "adv": [a[m.bool()].tolist() for a, m in zip(adv, rollout.response_mask)]}
        return adv, returns

    def on_train_batch_end(self, outputs, batch, batch_idx):
        metrics = self.last_step.metrics
        self.__dict__.setdefault("records", []).append(
            {**self._pending, "policy_loss": metrics.get("train/policy/loss"),
             "critic_loss": metrics.get("train/critic/loss")})

    def on_train_start(self):
        super().on_train_start()
        self.initial_policy = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}

    def on_train_end(self):
        torch.save({"records": self.records, "policy": self.policy.state_dict(), "critic": self.critic.state_dict(),
                    "initial_policy": self.initial_policy},
                   os.path.join(os.environ["TEMPO_TEST_OUT"], f"rank{self.global_rank}.pt"))
