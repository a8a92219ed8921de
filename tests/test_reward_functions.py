"""Rewards as plain functions (FunctionReward), the Verifier's warning on a gold no response can match, and
``self.log`` from a research subclass landing at the RL step."""

from __future__ import annotations

import logging
from pathlib import Path

import jsonargparse
import pytest
import torch

import _reward_functions
from _tiny_run import fit, tiny_config
from test_rewards import boxed, make_rollout
from tempo_pl.rewards import FunctionReward, RewardSource, Verifier
from tempo_pl.types import ForwardStats


def test_a_trl_reward_function_scores_every_completion_and_logs_its_mean():
    _reward_functions.CALLS.clear()
    rollout = make_rollout([["ab", "abcd"], ["a", "abc"]], answers=["1", None])
    out = FunctionReward(_reward_functions.brevity)(rollout, ForwardStats.zeros(rollout))
    assert out.scores.tolist() == pytest.approx([-0.02, -0.04, -0.01, -0.03])
    assert out.metrics == {"mean": pytest.approx(-0.025)}
    (call,) = _reward_functions.CALLS
    assert call["prompts"] == ["question 0", "question 0", "question 1", "question 1"]
    assert call["completions"] == ["ab", "abcd", "a", "abc"]
    assert call["ids"] == ["test:0", "test:0", "test:1", "test:1"]
    assert call["is_labeled"] == [True, True, False, False]
    assert len(call["completion_ids"]) == 4 and "answer" not in call  # no ground truth unless asked for


def test_answers_are_passed_only_when_asked_and_then_the_source_reads_ground_truth():
    _reward_functions.CALLS.clear()
    rollout = make_rollout([["x", "y"]], answers=["7"])
    source = FunctionReward(_reward_functions.brevity, name="short", pass_answers=True)
    source(rollout, ForwardStats.zeros(rollout))
    assert _reward_functions.CALLS[-1]["answer"] == ["7", "7"]
    assert source.reads_answers and not FunctionReward(_reward_functions.brevity).reads_answers
    assert source.name == "short" and FunctionReward(_reward_functions.ContainsDigit()).name == "ContainsDigit"


@pytest.mark.parametrize("returned, message", [
    ([1.0], "returned 1 scores for 2 completions"),
    ([1.0, "x"], "score 1 is .x., not a number"),
    ([1.0, float("nan")], "score 1 is nan, not finite"),
    (3.0, "must return a list of floats"),
])
def test_bad_return_values_are_named(returned, message):
    rollout = make_rollout([["x", "y"]])
    with pytest.raises((ValueError, TypeError), match=message):
        FunctionReward(lambda prompts, completions, **kw: returned, name="bad")(rollout, ForwardStats.zeros(rollout))


def test_from_yaml_a_function_path_or_a_callable_class():
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--reward", type=RewardSource)
    by_path = parser.instantiate_classes(parser.parse_args(
        ['--reward={"class_path": "tempo_pl.rewards.FunctionReward", "init_args": {"function": "_reward_functions.brevity"}}']))
    assert by_path.reward.function is _reward_functions.brevity and by_path.reward.name == "brevity"
    by_class = parser.instantiate_classes(parser.parse_args(
        ['--reward={"class_path": "tempo_pl.rewards.FunctionReward", "init_args": {"function": '
         '{"class_path": "_reward_functions.ContainsDigit", "init_args": {"bonus": 2.0}}, "name": "digit"}}']))
    rollout = make_rollout([["a1", "b"]])
    assert by_class.reward(rollout, ForwardStats.zeros(rollout)).scores.tolist() == [2.0, 0.0]


def test_the_verifier_warns_once_about_a_gold_no_response_can_match(caplog):
    rollout = make_rollout([[boxed("1"), boxed("2")], [boxed("3"), boxed("3")]], answers=["$$", "3"])
    verifier = Verifier()
    with caplog.at_level(logging.WARNING, logger="tempo_pl.rewards.verifier"):
        scores = verifier(rollout, ForwardStats.zeros(rollout)).scores
        verifier(rollout, ForwardStats.zeros(rollout))
    assert scores.tolist() == [-1.0, -1.0, 1.0, 1.0]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "prompt 'test:0'" in warnings[0] and "'$$'" in warnings[0] and "empty after removing" in warnings[0]


@pytest.mark.slow
def test_a_function_reward_from_yaml_and_self_log_in_a_subclass_land_at_the_rl_step(tmp_path: Path):
    """3 RL steps of M-steps whose D_U reward is a TRL-style function, in a subclass that self.logs from a stage:
    both scalars are logged at RL steps 0, 1, 2 beside train/rl_step."""
    from tempo_pl.pipelines.report import read_scalars

    def edit(cfg):
        cfg["model"]["class_path"] = "_subclass_logging.ChattyModule"
        cfg["model"]["init_args"]["unlabeled_reward"] = {
            "class_path": "tempo_pl.rewards.FunctionReward", "init_args": {"function": "_reward_functions.brevity"}}
        cfg["trainer"]["callbacks"][0]["init_args"] = {"mode": "unlabeled"}
        cfg["model"]["init_args"]["critic"] = None
        cfg["model"]["init_args"]["algorithm"]["advantage"] = "grpo"
        cfg["model"]["init_args"].pop("critic_optimizer", None)

    _reward_functions.CALLS.clear()
    cli = fit(tiny_config(tmp_path, edit, steps=3), tmp_path)
    curves = read_scalars(Path(cli.trainer.log_dir))
    assert [s for s, _ in curves["train/reward/brevity/mean"]] == [0, 1, 2]
    # the module tells the reward its RL step; D_U's synthetic rows show their question and id, not their
    # `answer` and `solution` columns
    assert [call["step"] for call in _reward_functions.CALLS] == [0, 1, 2]
    assert {key for call in _reward_functions.CALLS for key in call} == {
        "prompts", "completions", "completion_ids", "trainer_state", "step", "ids", "is_labeled", "id", "problem"}
    assert [s for s, _ in curves["my/response_chars"]] == [0, 1, 2]
    assert all(v < 0 for _, v in curves["train/reward/brevity/mean"])
    # the subclass logged the mean length; brevity's mean is minus the same in hundreds of characters
    for (_, chars), (_, reward) in zip(curves["my/response_chars"], curves["train/reward/brevity/mean"]):
        assert reward == pytest.approx(-chars / 100, rel=1e-5)
    assert torch.is_tensor(cli.trainer.callback_metrics["my/response_chars"])
