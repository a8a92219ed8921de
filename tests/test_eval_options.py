"""EvalConfig: the response budget (null = the training value, 0 refused) and the extraction mode of evaluation."""

from __future__ import annotations

import pytest

from test_rewards import make_rollout
from tempo_pl.config import EvalConfig
from tempo_pl.evaluation.evaluator import Evaluation, eval_sampling
from tempo_pl.config import SamplingConfig


@pytest.mark.parametrize("budget", [0, -3])
def test_a_zero_or_negative_eval_budget_is_refused(budget):
    with pytest.raises(ValueError, match="evaluation.max_new_tokens must be >= 1, or null for the training"):
        EvalConfig(max_new_tokens=budget)


def test_null_eval_budget_is_the_training_one():
    training = SamplingConfig(n=4, max_new_tokens=24)
    assert eval_sampling(EvalConfig(k=2, pass_ks=[1, 2]), training).max_new_tokens == 24
    assert eval_sampling(EvalConfig(k=2, pass_ks=[1, 2], max_new_tokens=7), training).max_new_tokens == 7


def test_extraction_mode_is_validated():
    with pytest.raises(ValueError, match="evaluation.extraction"):
        EvalConfig(extraction="prose")


def test_lenient_evaluation_scores_answers_in_prose():
    rollout = make_rollout([["So the answer is 3/4.", "\\boxed{0.75}"], ["Thus $x = 5$.", "I give up"]],
                           answers=["\\frac34", "5"])

    def mean_at_2(extraction: str) -> float:
        evaluation = Evaluation(EvalConfig(k=2, pass_ks=[1, 2], extraction=extraction))
        evaluation.add(0, rollout)
        return evaluation.finish(["prose"], lambda records: records, None, rl_step=0)["val/prose/mean@2"]

    assert mean_at_2("boxed") == pytest.approx(0.25)
    assert mean_at_2("lenient") == pytest.approx(0.75)


def test_an_offline_benchmark_name_says_to_set_the_data_dir(tmp_path, monkeypatch):
    from tempo_pl.data import eval_sets

    def offline(info):
        raise ConnectionError("Couldn't reach the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(eval_sets, "_load_from_hub", offline)
    monkeypatch.delenv("TEMPO_PL_DATA_DIR", raising=False)
    with pytest.raises(ConnectionError, match="TEMPO_PL_DATA_DIR is not set. Offline, put a copy of aime2024.jsonl"):
        eval_sets.load_benchmark("aime2024")
    with pytest.raises(ConnectionError, match=f"{str(tmp_path)!r} has no aime2024.jsonl.*set TEMPO_PL_DATA_DIR=<folder>"):
        eval_sets.load_benchmark("aime2024", local_dir=str(tmp_path))
