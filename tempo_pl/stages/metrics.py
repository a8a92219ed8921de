"""What one RL step logs beyond its losses: scores, values, returns and advantages split by labeled/unlabeled rows,
response lengths, and stage timings."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from lightning.pytorch.profilers import PassThroughProfiler
from torch import Tensor

from tempo_pl.algorithms.advantages import masked_mean
from tempo_pl.algorithms.losses import aggregate_loss
from tempo_pl.algorithms.token_stats import explained_variance
from tempo_pl.rewards.base import RewardOutput
from tempo_pl.types import ForwardStats, Rollout


def step_metrics(
    rollout: Rollout, stats: ForwardStats, reward: RewardOutput, adv: Tensor, returns: Tensor
) -> dict[str, float]:
    """Per-step statistics of the rows trained on (names without the ``train/`` prefix)."""
    mask = rollout.response_mask.float()
    lengths = mask.sum(-1)
    lab = rollout.is_labeled
    m: dict[str, float] = dict(reward.metrics)
    for name, rows in (("labeled", lab), ("unlabeled", ~lab)):
        if rows.any():
            m[f"score/{name}_mean"] = float(reward.scores[rows].mean())
            m[f"score/{name}_std"] = float(reward.scores[rows].std(unbiased=False))
            if stats.values is not None:
                m[f"values/{name}_mean"] = float(masked_mean(stats.values[rows], mask[rows]))
                m[f"values/{name}_explained_variance"] = float(
                    explained_variance(stats.values[rows], returns[rows], mask[rows])
                )
            m[f"returns/{name}_mean"] = float(masked_mean(returns[rows], mask[rows]))
    m["response/labeled_fraction"] = float(lab.float().mean())
    m["advantages/mean"] = float(masked_mean(adv, mask))
    m["advantages/max"] = float(adv[mask.bool()].max()) if mask.any() else 0.0
    m["advantages/min"] = float(adv[mask.bool()].min()) if mask.any() else 0.0
    if stats.values is not None:
        m["values/mean"] = float(masked_mean(stats.values, mask))
        m["values/explained_variance"] = float(explained_variance(stats.values, returns, mask))
    m["returns/mean"] = float(masked_mean(returns, mask))
    if stats.entropy is not None:
        m["policy/entropy"] = float(aggregate_loss(stats.entropy, mask, "seq-mean-token-mean"))
    m["response/length_mean"] = float(lengths.mean())
    m["response/length_max"] = float(lengths.max())
    m["response/clip_fraction"] = float(rollout.truncated.float().mean())
    m["response/prompts"] = float(len(rollout.prompt_batch))
    if rollout.sampling_logprobs is not None and stats.old_logprobs is not None and mask.any():
        # the sampler's log-probs against the trainer's own: the first thing to look at when an RL run goes wrong
        gap = (rollout.sampling_logprobs.to(stats.old_logprobs.device) - stats.old_logprobs).abs()[mask.bool()]
        m["rollout/logprob_gap_mean"] = float(gap.mean())
        m["rollout/logprob_gap_max"] = float(gap.max())
    return m


def throughput(rollout: Rollout, timings: dict[str, float]) -> dict[str, float]:
    """Tokens per second of the whole step and generated tokens per second of generation."""
    generated = float(rollout.response_mask.sum())
    total = generated + float(rollout.prompt_mask.sum())
    return {
        "perf/tokens_per_s": total / max(timings["time/step_s"], 1e-9),
        "perf/generated_tokens_per_s": generated / max(timings["time/generation_s"], 1e-9),
    }


class StageClock:
    """Seconds of one RL step by stage, each second counted once, for the innermost stage running: a stage entered
    inside another pauses it (the critic's update, which runs inside the advantages stage when the critic goes first,
    counts as ``update``, not ``scoring``). Each stage is also reported to the trainer's profiler as
    ``tempo/<stage>`` (``trainer.profiler: simple`` prints them).

    Example::

        clock = StageClock(trainer.profiler)
        with clock.stage("scoring"):
            ...
        clock.seconds  # {"time/scoring_s": ...}
    """

    def __init__(self, profiler=None) -> None:
        self.seconds: dict[str, float] = {}
        self._profiler = profiler or PassThroughProfiler()
        self._running: list[str] = []
        self._since = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._charge()
        self._running.append(name)
        try:
            with self._profiler.profile(f"tempo/{name}"):
                yield
        finally:
            self._charge()
            self._running.pop()

    def _charge(self) -> None:
        now = time.perf_counter()
        if self._running:
            key = f"time/{self._running[-1]}_s"
            self.seconds[key] = self.seconds.get(key, 0.0) + now - self._since
        self._since = now


@contextlib.contextmanager
def timed(timings: dict[str, float], stage: str, profiler) -> Iterator[None]:
    """Times a stage into ``timings["time/<stage>_s"]`` and reports it to the trainer's profiler as
    ``tempo/<stage>`` (``trainer.profiler: simple`` prints them)."""
    start = time.perf_counter()
    with profiler.profile(f"tempo/{stage}"):
        yield
    timings[f"time/{stage}_s"] = time.perf_counter() - start
