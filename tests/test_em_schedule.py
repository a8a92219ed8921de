"""EMSchedule: the plan of every RL step per mode, stream switching, and its checkpoint state."""

import copy
from types import SimpleNamespace

import pytest
from lightning.pytorch import LightningModule

from tempo_pl.data.streams import EMStreams, PromptRow, PromptStream
from tempo_pl.types import StepPlan

try:
    from tempo_pl.callbacks import EMSchedule, plan_for_step
except ModuleNotFoundError:  # not installed: the package-dir mapping only exists after `pip install`
    from callbacks import EMSchedule, plan_for_step


def phases(schedule, steps):
    return [schedule.plan(step).phase for step in range(steps)]


def test_alternate_cycles_e_steps_then_m_steps_after_the_warmup():
    # warm-up 1 E-step, then cycles of (E, E, M, M, M) counted from the end of the warm-up.
    schedule = EMSchedule("alternate", e_steps=2, m_steps=3, critic_warmup_steps=1)
    assert phases(schedule, 12) == ["E", "E", "E", "M", "M", "M", "E", "E", "M", "M", "M", "E"]
    assert phases(EMSchedule("alternate"), 5) == ["E", "M", "E", "M", "E"]
    assert phases(EMSchedule("alternate", e_steps=1, m_steps=4), 7) == ["E", "M", "M", "M", "M", "E", "M"]


def test_plans_of_each_mode():
    e_plan = StepPlan("E", "labeled", update_critic=True, update_policy=False)
    m_plan = StepPlan("M", "unlabeled", update_critic=False, update_policy=True)
    em_plan = StepPlan("EM", "mixed", update_critic=True, update_policy=True)
    rl_plan = StepPlan("RL", "labeled", update_critic=True, update_policy=True)
    assert [EMSchedule("alternate").plan(s) for s in range(2)] == [e_plan, m_plan]
    assert [EMSchedule("mixed").plan(s) for s in range(3)] == [em_plan] * 3
    assert [EMSchedule("unlabeled").plan(s) for s in range(3)] == [m_plan] * 3
    assert [EMSchedule("labeled").plan(s) for s in range(3)] == [rl_plan] * 3
    assert [EMSchedule("critic").plan(s) for s in range(3)] == [e_plan] * 3
    # The warm-up overrides every mode that updates the critic.
    assert [EMSchedule("mixed", critic_warmup_steps=2).plan(s) for s in range(4)] == [e_plan, e_plan, em_plan, em_plan]
    assert [EMSchedule("labeled", critic_warmup_steps=1).plan(s) for s in range(3)] == [e_plan, rl_plan, rl_plan]
    assert plan_for_step(5, "alternate", 2, 3, 1) == m_plan  # step 5 = 4th step of the first cycle


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "periodic"}, "mode must be one of"),
        ({"e_steps": 0}, "e_steps must be an integer >= 1"),
        ({"m_steps": 2.0}, "m_steps must be an integer >= 1"),
        ({"critic_warmup_steps": -1}, "critic_warmup_steps must be an integer >= 0"),
        ({"critic_warmup_steps": True}, "critic_warmup_steps must be an integer"),
        ({"mode": "unlabeled", "critic_warmup_steps": 2}, "critic_warmup_steps needs critic updates"),
        ({"mode": "critic", "critic_warmup_steps": 2}, "critic_warmup_steps has no effect with mode='critic'"),
        ({"mode": "mixed", "e_steps": 2}, "e_steps/m_steps only apply to mode='alternate'"),
        ({"mode": "labeled", "m_steps": 3}, "e_steps/m_steps only apply to mode='alternate'"),
    ],
)
def test_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EMSchedule(**kwargs)


class PlanRecorder(LightningModule):
    def __init__(self):
        super().__init__()
        self.plans = []
        self.rl_step = 0

    def set_step_plan(self, plan):
        self.plans.append(plan)


def make_trainer(n_labeled=6, n_unlabeled=9, batch_size=3):
    streams = EMStreams(
        PromptStream([PromptRow(f"l:{i}", f"L{i}", str(i), True) for i in range(n_labeled)], batch_size,
                     name="labeled"),
        PromptStream([PromptRow(f"u:{i}", f"U{i}", None, False) for i in range(n_unlabeled)], batch_size,
                     name="unlabeled"),
    )
    return SimpleNamespace(datamodule=SimpleNamespace(streams=streams))


def run_steps(schedule, trainer, module, steps, draws_per_step=1):
    """Drive the hooks as Lightning's training loop does; the step body pulls batches like training_step."""
    drawn = []
    for _ in range(steps):
        schedule.on_train_batch_start(trainer, module, None, 0)
        drawn.append([next(trainer.datamodule.streams).ids for _ in range(draws_per_step)])
        module.rl_step += 1  # TempoModule counts the step at the end of training_step, before the batch-end hooks
        schedule.on_train_batch_end(trainer, module, None, None, 0)
    return drawn


def test_callback_switches_the_stream_and_sets_the_plan():
    schedule, trainer, module = EMSchedule("alternate", e_steps=1, m_steps=2), make_trainer(), PlanRecorder()
    schedule.setup(trainer, module, "fit")
    schedule.on_train_start(trainer, module)
    drawn = run_steps(schedule, trainer, module, steps=3)
    assert [p.phase for p in module.plans] == ["E", "M", "M"]
    assert [batch[0][0].split(":")[0] for batch in drawn] == ["l", "u", "u"]
    streams = trainer.datamodule.streams
    # 1 labeled batch and 2 unlabeled batches of 3: the idle stream never moved while the other was drawn.
    assert streams.labeled.offset == 3 and streams.unlabeled.offset == 6
    assert module.rl_step == 3 and schedule.phase_counts == {"E": 1, "M": 2, "EM": 0, "RL": 0}


def test_state_round_trip_resumes_mid_phase_with_the_same_plans_and_prompts():
    def fresh():
        schedule = EMSchedule("alternate", e_steps=2, m_steps=3, critic_warmup_steps=1)
        trainer, module = make_trainer(), PlanRecorder()
        schedule.on_train_start(trainer, module)
        return schedule, trainer, module

    uninterrupted, trainer_a, module_a = fresh()
    run_steps(uninterrupted, trainer_a, module_a, steps=4, draws_per_step=2)  # E E E M: stops inside the M phase
    state = copy.deepcopy(uninterrupted.state_dict())
    assert module_a.rl_step == 4 and state["phase_counts"] == {"E": 3, "M": 1, "EM": 0, "RL": 0}
    # 3 E-steps x 2 draws x 3 rows = 18 labeled rows = 3 epochs of 6; 1 M-step x 2 draws x 3 = 6 unlabeled rows.
    assert state["streams"]["labeled"]["epoch"] == 2 and state["streams"]["labeled"]["offset"] == 6
    assert state["streams"]["unlabeled"]["epoch"] == 0 and state["streams"]["unlabeled"]["offset"] == 6

    resumed = EMSchedule("alternate", e_steps=2, m_steps=3, critic_warmup_steps=1)
    trainer_b, module_b = make_trainer(), PlanRecorder()
    module_b.rl_step = module_a.rl_step  # the module's own checkpoint state
    resumed.load_state_dict(state)
    resumed.on_train_start(trainer_b, module_b)  # the streams exist only now: the saved positions are applied here
    assert trainer_b.datamodule.streams.state_dict()["unlabeled"] == state["streams"]["unlabeled"]

    expected = run_steps(uninterrupted, trainer_a, module_a, steps=6, draws_per_step=2)
    assert run_steps(resumed, trainer_b, module_b, steps=6, draws_per_step=2) == expected
    assert [p.phase for p in module_b.plans] == ["M", "M", "E", "E", "M", "M"]
    assert module_b.plans == module_a.plans[4:]


def test_checkpoint_holds_positions_after_the_last_completed_step():
    schedule, trainer, module = EMSchedule("unlabeled"), make_trainer(), PlanRecorder()
    schedule.on_train_start(trainer, module)
    run_steps(schedule, trainer, module, steps=1)
    # A checkpoint written mid-step (say on an exception) after the next step drew its prompts:
    schedule.on_train_batch_start(trainer, module, None, 0)
    next(trainer.datamodule.streams)
    state = schedule.state_dict()
    assert trainer.datamodule.streams.unlabeled.offset == 6
    assert state["streams"]["unlabeled"]["offset"] == 3 and module.rl_step == 1


@pytest.mark.parametrize(
    "saved, message",
    [
        ({"mode": "mixed", "e_steps": 1, "m_steps": 1, "critic_warmup_steps": 0},
         "mode: checkpoint 'mixed' vs now 'alternate'"),
        ({"mode": "alternate", "e_steps": 2, "m_steps": 1, "critic_warmup_steps": 0}, "e_steps: checkpoint 2 vs now 1"),
        ({"mode": "alternate", "e_steps": 1, "m_steps": 4, "critic_warmup_steps": 0}, "m_steps: checkpoint 4 vs now 1"),
        ({"mode": "alternate", "e_steps": 1, "m_steps": 1, "critic_warmup_steps": 2},
         "critic_warmup_steps: checkpoint 2 vs now 0"),
    ],
)
def test_load_refuses_a_checkpoint_of_another_schedule(saved, message):
    state = {**saved, "rl_step": 3, "phase_counts": {"E": 2, "M": 1}, "streams": None}
    with pytest.raises(ValueError, match=message):
        EMSchedule("alternate").load_state_dict(state)


def test_needs_set_step_plan_and_a_data_module_with_streams():
    schedule = EMSchedule()
    with pytest.raises(TypeError, match="set_step_plan"):
        schedule.setup(make_trainer(), LightningModule(), "fit")
    with pytest.raises(RuntimeError, match="trainer.datamodule.streams"):
        schedule.on_train_start(SimpleNamespace(datamodule=None), PlanRecorder())
