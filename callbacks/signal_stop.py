"""The stop request of SIGTERM / SIGINT, shared by the checkpoint callbacks of one run."""

from __future__ import annotations

import signal
import sys
from typing import Any, Optional

from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_warn

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(Exception):
    """A run stopped on a signal after saving its checkpoint; ``tempo-pl`` exits with 128 + the signal number."""

    def __init__(self, signum: int, rl_step: int, checkpoint: str) -> None:
        self.signum, self.rl_step, self.checkpoint = signum, rl_step, checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after {rl_step} RL steps; checkpoint {checkpoint}. Resume with the same "
                         "command and --ckpt_path last")


class StopRequest:
    """Installed while a fit runs (by the first watching callback, restored by the last): the first signal asks the
    run to stop after the RL step in progress; a second SIGINT stops at once (``KeyboardInterrupt``)."""

    _current: Optional["StopRequest"] = None

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.watchers: list[Any] = []
        self._previous: dict[int, Any] = {}

    @classmethod
    def watch(cls, watcher: Any) -> Optional["StopRequest"]:
        """The run's stop request, installing the handlers for the first watcher; None off the main thread, where
        Python cannot handle signals."""
        if cls._current is None:
            request = cls()
            try:
                request._previous = {sig: signal.signal(sig, request._handle) for sig in SIGNALS}
            except ValueError:  # not the main thread
                rank_zero_warn("RLStepCheckpoint: fit runs outside the main thread; SIGTERM/SIGINT save nothing")
                return None
            cls._current = request
        cls._current.watchers.append(watcher)
        return cls._current

    def release(self, watcher: Any) -> None:
        if watcher in self.watchers:
            self.watchers.remove(watcher)
        if not self.watchers and StopRequest._current is self:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
            StopRequest._current = None

    def is_last_watcher(self, watcher: Any) -> bool:
        return bool(self.watchers) and self.watchers[-1] is watcher

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without the step in progress
        if self.signum is None:
            self.signum = signum
            sys.stderr.write(f"\n[tempo-pl] {signal.Signals(signum).name}: finishing the RL step in progress (and its "
                             "evaluation), then saving last.ckpt and stopping. Ctrl-C again stops at once, without "
                             "that step.\n")
            sys.stderr.flush()

    def agreed(self, trainer: Trainer) -> bool:
        """Whether any rank was asked to stop (a collective: every rank calls it before every step)."""
        asked = self.signum is not None
        decided = trainer.strategy.reduce_boolean_decision(asked, all=False)
        if decided and self.signum is None:
            self.signum = signal.SIGTERM  # another rank got the signal
        return decided
