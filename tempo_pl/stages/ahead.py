"""Rollouts one step ahead (``training.rollout_ahead: 1``, ``docs/algorithm.md``, "Rollouts one step ahead"): the
rollout of RL step t+1 is collected while step t scores and updates, from the weights step t started with, and
step t waits for it before it ends (so checkpoints, evaluation and the next step see it finished).

:class:`RolloutAhead` is pure of Lightning (it is handed how to collect and whether in a thread);
:class:`RolloutCollection` is the module's glue: one step's collection, the launch of the next and the wait for it.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterator, Optional

import contextlib
import copy

import torch
from lightning.pytorch import LightningModule

from tempo_pl.models.fsdp2 import gathered_for_generation
from tempo_pl.rewards.graders import build_grader, grader_spec
from tempo_pl.stages import scoring
from tempo_pl.stages.collection import CollectOptions, collect_rollout, unwrap_batch
from tempo_pl.stages.metrics import StageClock
from tempo_pl.stages.ranks import Ranks
from tempo_pl.types import PromptBatch, Rollout

Collect = Callable[[], "tuple[Rollout, dict[str, float]]"]


@dataclass
class Prefetched:
    rollout: Rollout
    metrics: dict[str, float]
    """The collection's own metrics (filtering, dropped prompts), logged with the step that trains on it."""
    policy_updates: int
    """Policy updates done when it was sampled: the step that trains on it is ``now - policy_updates`` stale."""


class RolloutAhead:
    """Holds the next step's rollout: :meth:`launch` starts its collection (in a thread, or at once), :meth:`wait`
    finishes it, :meth:`take` hands it to the step it was drawn for. Its state (the finished rollout, to the byte)
    goes into checkpoints, so a resumed run trains on what the straight run would have."""

    def __init__(self) -> None:
        self.ready: Optional[Prefetched] = None
        self._pending: Optional[Future] = None
        self._pending_updates = 0
        self._after_wait: Optional[Callable[[], None]] = None
        self._executor: Optional[ThreadPoolExecutor] = None

    def take(self) -> Optional[Prefetched]:
        """The rollout collected for this step (None at the first step, and when none was collected)."""
        ready, self.ready = self.ready, None
        return ready

    def launch(self, collect: Collect, policy_updates: int, background: bool,
               after_wait: Optional[Callable[[], None]] = None) -> None:
        """Start collecting the next step's rollout. ``after_wait`` runs once it is finished (restores what the
        collection changed, e.g. the stream it drew from)."""
        if self._pending is not None or self.ready is not None:
            raise RuntimeError("the next step's rollout is already being collected")
        self._pending_updates, self._after_wait = policy_updates, after_wait
        if background:
            self._executor = self._executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="tempo-sampler")
            self._pending = self._executor.submit(collect)
        else:
            self._pending = Future()
            self._pending.set_result(collect())

    def wait(self) -> float:
        """Finish the collection :meth:`launch` started (re-raising its error); returns the seconds waited."""
        if self._pending is None:
            return 0.0
        start = time.perf_counter()
        try:
            rollout, metrics = self._pending.result()
        finally:
            self._pending = None
            if self._after_wait is not None:
                self._after_wait()
                self._after_wait = None
        self.ready = Prefetched(rollout, metrics, self._pending_updates)
        return time.perf_counter() - start

    def state_dict(self) -> dict[str, Any]:
        """The finished next rollout as plain tensors, lists and numbers (loadable with ``weights_only=True``)."""
        if self.ready is None:
            return {}
        rollout = self.ready.rollout.to("cpu")
        state = {f.name: getattr(rollout, f.name) for f in fields(Rollout) if f.name != "prompt_batch"}
        graders = [grader_spec(g) for g in rollout.prompt_batch.graders]  # specs, not objects: weights-only loadable
        prompt_batch = {**asdict(rollout.prompt_batch), "graders": graders}
        return {"rollout": {**state, "prompt_batch": prompt_batch}, "metrics": dict(self.ready.metrics),
                "policy_updates": self.ready.policy_updates}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        if not state:
            self.ready = None
            return
        saved = dict(state["rollout"])
        batch = dict(saved.pop("prompt_batch"))
        built: dict[str, Any] = {}  # one grader object per distinct spec, as the data module shares them
        batch["graders"] = [None if spec is None else built.setdefault(repr(sorted(spec.items())), build_grader(spec))
                            for spec in batch.get("graders") or [None] * len(batch["ids"])]
        rollout = Rollout(prompt_batch=PromptBatch(**batch), **saved).to(device)
        self.ready = Prefetched(rollout, dict(state["metrics"]), int(state["policy_updates"]))


def next_plan(trainer, rl_step: int):
    """The plan the run's schedule (a callback with ``plan(rl_step)``, as EMSchedule) gives ``rl_step``, and the
    data module's streams whose ``source`` it names."""
    planners = [cb for cb in trainer.callbacks if callable(getattr(cb, "plan", None))]
    streams = getattr(getattr(trainer, "datamodule", None), "streams", None)
    if not planners or streams is None:
        raise RuntimeError("training.rollout_ahead needs a schedule callback (EMSchedule) and a TempoDataModule: the "
                           "next step's batch is drawn from the stream its plan names")
    return planners[0].plan(rl_step), streams


class RolloutCollection(LightningModule):
    """The collection hooks of :class:`~tempo_pl.module.TempoModule`: one step's collection (draws, ``rollout``,
    grading, filtering and refill) and, with ``training.rollout_ahead: 1``, the next step's, started while this
    step runs and waited for before it ends (its seconds logged as ``time/sampler_wait_s``)."""

    def generation_context(self) -> contextlib.AbstractContextManager:
        """Gathers sharded policy parameters once for a whole ``generate`` call (FSDP2), a no-op otherwise and for an
        engine that ``serves_own_weights`` (vLLM: ``sync_weights`` gives it the weights)."""
        if self.device_mesh is None or getattr(self.engine, "serves_own_weights", False):
            return contextlib.nullcontext()
        return gathered_for_generation(self.policy)

    def collect_rollout(self, dataloader_iter: Iterator) -> tuple[Rollout, dict[str, float]]:
        """Draw, generate, grade labeled groups, drop those without signal, refill (``docs/algorithm.md``, "Group
        filtering and refill"). Returns the rollout cut to the RL batch (in prompts) and collection metrics. With
        ``training.rollout_ahead: 1`` it is the rollout collected during the previous step, and the next step's
        collection starts here (:mod:`tempo_pl.stages.ahead`)."""
        # refills come straight from the stream object: Lightning's dataloader_iter ends the epoch once it has handed
        # out limit_train_batches batches, and a refill is part of the same RL step, not another one
        streams = self.trainer.train_dataloader
        if not self.training_cfg.rollout_ahead:
            return self._collect(lambda i: unwrap_batch(next(dataloader_iter) if i == 0 else next(streams)))
        ready = self._ahead.take()
        if ready is None:  # the first step draws its own batch straight from the streams
            ready = Prefetched(*self._collect(lambda i: unwrap_batch(next(streams))), self._policy_updates)
        self._launch_next_collection(dataloader_iter, streams)
        return ready.rollout, {**ready.metrics, "rollout/staleness": float(self._policy_updates - ready.policy_updates)}

    def _wait_for_sampler(self, clock: StageClock) -> None:
        if self.training_cfg.rollout_ahead:  # the next step's rollout (sampled with this step's starting weights)
            with clock.stage("sampler_wait"):
                self._ahead.wait()

    def _launch_next_collection(self, dataloader_iter: Iterator, streams) -> None:
        """Draw the next step's first batch from the stream its plan names and collect its rollout from the weights
        this step starts with: in a thread with a copy of the policy (or the engine's own copy) on one process, at
        once on several (their collectives must stay in step)."""
        plan, schedule_streams = next_plan(self.trainer, self.rl_step + 1)
        this_source, schedule_streams.source = schedule_streams.source, plan.source
        try:
            first = unwrap_batch(next(dataloader_iter))
        except StopIteration:  # the epoch has handed out its last batch: the next epoch's first step collects
            schedule_streams.source = this_source
            return
        background = self.trainer.world_size == 1 and self.device_mesh is None
        if background and not getattr(self.engine, "serves_own_weights", False):
            self._sampling_policy = copy.deepcopy(self.policy)

        def restore() -> None:
            schedule_streams.source, self._sampling_policy = this_source, None

        self._ahead.launch(lambda: self._collect(lambda i: first if i == 0 else unwrap_batch(next(streams)),
                                                 self.rl_step + 1), self._policy_updates, background, restore)

    def _collect(self, draw: Callable[[int], PromptBatch], rl_step: Optional[int] = None):
        cfg = self.training_cfg
        collected = collect_rollout(
            draw=draw, generate=self.rollout,
            grade_labeled=lambda rollout: scoring.grade_labeled(self.labeled_reward, rollout),
            options=CollectOptions(cfg.group_filter, cfg.max_generation_batches, self.tokenizer.pad_token_id,
                                   underfilled=cfg.underfilled_batch),
            ranks=Ranks.of(self._trainer), rl_step=self.rl_step if rl_step is None else rl_step,
        )
        return collected.rollout, collected.metrics
