"""What a checkpoint holds beyond the weights and optimizers so that a resumed run continues the straight run: the
RL step counter, the RNG states sampling and mini-batching draw from, and with ``training.rollout_ahead: 1`` the
next step's rollout, collected before the checkpoint was written."""

from __future__ import annotations

from typing import Optional

import torch
from lightning.pytorch import LightningModule
from typing_extensions import override

from tempo_pl.run.rng_state import capture_rng, restore_rng


class RLStepState(LightningModule):
    """Checkpoint hooks of :class:`~tempo_pl.module.TempoModule`: ``checkpoint["tempo"]`` holds ``rl_step``, the
    global RNG states (restored when training starts, after Lightning has seeded) and the mini-batch generator's
    state when ``training.mini_batch_seed`` gives it one, and with ``training.rollout_ahead: 1`` the next step's
    rollout (sampled from the weights before the last update, which the checkpoint no longer holds: it is saved,
    not sampled again) and the policy-update count its staleness is measured with; an engine with a state of its
    own (a vLLM server's policy version) under ``"engine"``."""

    rl_step: int
    _mini_batch_generator: Optional[torch.Generator]
    _pending_rng: Optional[dict] = None

    @override
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # sampling draws from the global RNGs; keeping them makes a resumed run sample what the straight run samples
        checkpoint["tempo"] = {"rl_step": self.rl_step, "rng": capture_rng()}
        if self._mini_batch_generator is not None:
            checkpoint["tempo"]["mini_batch_rng"] = self._mini_batch_generator.get_state()
        if self.training_cfg.rollout_ahead:
            checkpoint["tempo"]["rollout_ahead"] = {"policy_updates": self._policy_updates,
                                                    "next_rollout": self._ahead.state_dict()}
        if hasattr(self.engine, "state_dict"):  # a served engine's policy version
            checkpoint["tempo"]["engine"] = self.engine.state_dict()

    @override
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("tempo")
        if state:
            self.rl_step = int(state["rl_step"])
            self._pending_rng = state["rng"]
            if self._mini_batch_generator is not None and "mini_batch_rng" in state:
                self._mini_batch_generator.set_state(state["mini_batch_rng"])
            ahead = state.get("rollout_ahead")
            if ahead is not None and self.training_cfg.rollout_ahead:
                self._policy_updates = int(ahead["policy_updates"])
                self._ahead.load_state_dict(ahead["next_rollout"], self.device)
            if "engine" in state and hasattr(self.engine, "load_state_dict"):
                self.engine.load_state_dict(state["engine"])

    @override
    def on_train_start(self) -> None:
        if self._pending_rng is not None:
            restore_rng(self._pending_rng)
            self._pending_rng = None
