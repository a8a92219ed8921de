"""EMSchedule: decides, before every RL step, whether it recalibrates the critic, refines the policy, or both."""

from __future__ import annotations

from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer

from tempo_pl.types import PHASE_CODES, StepPlan

SCHEDULE_MODES = ("alternate", "mixed", "unlabeled", "labeled", "critic")

E_STEP = StepPlan("E", "labeled", update_critic=True, update_policy=False)
"""Critic recalibration on D_L."""
M_STEP = StepPlan("M", "unlabeled", update_critic=False, update_policy=True)
"""Policy refinement on D_U with critic-based advantages."""
EM_STEP = StepPlan("EM", "mixed", update_critic=True, update_policy=True)
"""The reference code's step: one mixed batch, critic update then policy update."""
RL_STEP = StepPlan("RL", "labeled", update_critic=True, update_policy=True)
"""Zero-RL stage 1: PPO on D_L, critic and policy."""


def plan_for_step(
    rl_step: int, mode: str, e_steps: int = 1, m_steps: int = 1, critic_warmup_steps: int = 0
) -> StepPlan:
    """The plan of RL step ``rl_step`` (0-based): a pure function of the step and the schedule's configuration.

    The first ``critic_warmup_steps`` steps are E-steps whatever the mode; ``alternate`` then cycles through
    ``e_steps`` E-steps and ``m_steps`` M-steps, counting from the end of the warm-up.
    """
    if rl_step < critic_warmup_steps:
        return E_STEP
    if mode == "alternate":
        return E_STEP if (rl_step - critic_warmup_steps) % (e_steps + m_steps) < e_steps else M_STEP
    if mode == "mixed":
        return EM_STEP
    if mode == "unlabeled":
        return M_STEP
    if mode == "labeled":
        return RL_STEP
    if mode == "critic":
        return E_STEP
    raise ValueError(f"EMSchedule mode must be one of {SCHEDULE_MODES}, got {mode!r}")


class EMSchedule(Callback):
    """Sets each RL step's :class:`~tempo_pl.types.StepPlan` and points the data module's streams at its source.

    Before every training step it computes the plan, sets ``trainer.datamodule.streams.source`` (so the step's
    ``next(dataloader_iter)`` draws from D_L, D_U or both, and the idle stream does not advance) and calls
    ``pl_module.set_step_plan(plan)``. The step index is the module's ``rl_step`` (RL steps completed), the one
    counter that logs, eval files and checkpoints read (``trainer.global_step`` counts optimizer steps).

    Modes:

    - ``alternate``: ``e_steps`` E-steps (critic on D_L) then ``m_steps`` M-steps (policy on D_U), repeated: the
      paper's periodic recalibration.
    - ``mixed``: an ``EM`` step every step on one mixed batch, critic then policy: the reference code.
    - ``unlabeled``: M-steps on D_U only, no recalibration: the "incomplete EM" ablation and the critic-free
      baselines (TTRL, EMPO, Intuitor).
    - ``labeled``: ``RL`` steps on D_L (critic and policy): zero-RL stage 1.
    - ``critic``: E-steps only (the critic on D_L, the policy left as it is): a critic's calibration before test
      time, as verl's ``critic_warmup`` (the offline demo's stage 1).

    The schedule's position and both stream positions after the last completed step are saved in checkpoints, so a
    run resumed mid-phase continues with the same plans and the same prompts.

    Args:
        mode: one of ``alternate``, ``mixed``, ``unlabeled``, ``labeled``, ``critic``.
        e_steps: E-steps per cycle (``alternate`` only).
        m_steps: M-steps per cycle (``alternate`` only).
        critic_warmup_steps: the first steps are E-steps whatever the mode (not with ``unlabeled``, which has no
            critic updates).

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: tempo_pl.callbacks.EMSchedule
              init_args: {mode: alternate, e_steps: 1, m_steps: 4, critic_warmup_steps: 2}
    """

    def __init__(
        self, mode: str = "alternate", e_steps: int = 1, m_steps: int = 1, critic_warmup_steps: int = 0
    ) -> None:
        if mode not in SCHEDULE_MODES:
            raise ValueError(f"EMSchedule: mode must be one of {SCHEDULE_MODES}, got {mode!r}")
        limits = (("e_steps", e_steps, 1), ("m_steps", m_steps, 1), ("critic_warmup_steps", critic_warmup_steps, 0))
        for key, value, minimum in limits:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"EMSchedule: {key} must be an integer >= {minimum}, got {value!r}")
        if mode != "alternate" and (e_steps, m_steps) != (1, 1):
            raise ValueError(
                f"EMSchedule: e_steps/m_steps only apply to mode='alternate'; mode={mode!r} got e_steps={e_steps}, "
                f"m_steps={m_steps}"
            )
        if mode == "critic" and critic_warmup_steps:
            raise ValueError("EMSchedule: critic_warmup_steps has no effect with mode='critic', whose every step is "
                             "an E-step; set critic_warmup_steps=0")
        if mode == "unlabeled" and critic_warmup_steps:
            raise ValueError(
                "EMSchedule: critic_warmup_steps needs critic updates, which mode='unlabeled' never does; "
                "use mode='alternate' or 'mixed', or set critic_warmup_steps=0"
            )
        self.mode = mode
        self.e_steps = e_steps
        self.m_steps = m_steps
        self.critic_warmup_steps = critic_warmup_steps
        self.phase_counts = {phase: 0 for phase in PHASE_CODES}
        """Completed steps per phase."""
        self.current_plan: Optional[StepPlan] = None
        self._streams_state: Optional[dict] = None
        self._pending_streams_state: Optional[dict] = None

    def plan(self, rl_step: int) -> StepPlan:
        return plan_for_step(rl_step, self.mode, self.e_steps, self.m_steps, self.critic_warmup_steps)

    @property
    def _config(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "e_steps": self.e_steps,
            "m_steps": self.m_steps,
            "critic_warmup_steps": self.critic_warmup_steps,
        }

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and not (callable(getattr(pl_module, "set_step_plan", None))
                                   and isinstance(getattr(pl_module, "rl_step", None), int)):
            raise TypeError(
                "EMSchedule needs a LightningModule with set_step_plan(plan) and an int rl_step; got "
                f"{type(pl_module).__name__}"
            )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        streams = _streams_of(trainer)
        if self._pending_streams_state is not None:
            streams.load_state_dict(self._pending_streams_state)
            self._pending_streams_state = None
        self._streams_state = streams.state_dict()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.current_plan = self.plan(pl_module.rl_step)
        _streams_of(trainer).source = self.current_plan.source
        pl_module.set_step_plan(self.current_plan)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.phase_counts[self.current_plan.phase] += 1
        # Snapshot here, not at save time: a checkpoint written mid-step (e.g. on an exception) must hold the
        # positions after the last completed step, not the prompts a half-done step already drew.
        self._streams_state = _streams_of(trainer).state_dict()

    def state_dict(self) -> dict[str, Any]:
        return {
            **self._config,
            "phase_counts": dict(self.phase_counts),
            "streams": self._streams_state,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = {key: state_dict.get(key) for key in self._config}
        if saved != self._config:
            changed = ", ".join(
                f"{key}: checkpoint {saved[key]!r} vs now {value!r}"
                for key, value in self._config.items()
                if saved[key] != value
            )
            raise ValueError(
                f"EMSchedule: the checkpoint was made with another schedule ({changed}); resuming would change the "
                "phase of every remaining step"
            )
        self.phase_counts = {phase: int(state_dict["phase_counts"].get(phase, 0)) for phase in PHASE_CODES}
        self._streams_state = state_dict.get("streams")
        self._pending_streams_state = self._streams_state


def _streams_of(trainer: Trainer):
    streams = getattr(getattr(trainer, "datamodule", None), "streams", None)
    if streams is None:
        raise RuntimeError(
            "EMSchedule needs trainer.datamodule.streams: fit with a TempoDataModule (datamodule=...), set up for 'fit'"
        )
    return streams
