"""EvalConfig: the response budget (null = the training value, 0 refused) and the extraction mode of evaluation."""

from __future__ import annotations

import pytest

from test_rewards import make_rollout
from tempo_pl.config import EvalConfig, SamplingConfig
from tempo_pl.evaluation.evaluator import Evaluation, eval_sampling, greedy_sampling


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


def test_greedy_decoding_is_one_response_at_temperature_zero_with_the_eval_budget():
    training = SamplingConfig(n=8, temperature=1.0, top_p=0.9, max_new_tokens=64)
    spec = greedy_sampling(EvalConfig(k=4, pass_ks=[1], temperature=0.7, max_new_tokens=32), training)
    assert (spec.n, spec.temperature, spec.top_p, spec.max_new_tokens) == (1, 0.0, 1.0, 32)


def test_greedy_accuracy_is_logged_beside_mean_at_k_for_the_sets_that_decoded_greedily():
    sampled = make_rollout([["\\boxed{1}", "\\boxed{2}"], ["\\boxed{5}", "\\boxed{5}"], ["\\boxed{0}", "x"]],
                           answers=["1", "5", "7"])
    greedy = make_rollout([["\\boxed{2}"], ["\\boxed{5}"], ["\\boxed{7}"]], answers=["1", "5", "7"])
    evaluation = Evaluation(EvalConfig(k=2, pass_ks=[1, 2], greedy=True))
    evaluation.add(0, sampled)
    evaluation.add_greedy(0, greedy)
    evaluation.add(1, sampled)  # a set without greedy verdicts logs no greedy_accuracy
    metrics = evaluation.finish(["du", "other"], lambda records: records, None, rl_step=0)
    assert metrics["val/du/mean@2"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert metrics["val/du/greedy_accuracy"] == pytest.approx(2 / 3)  # wrong, right, right
    assert "val/other/greedy_accuracy" not in metrics
    assert evaluation.greedy_correct == {} and evaluation.records == {}


def test_greedy_must_be_a_boolean():
    with pytest.raises(ValueError, match="evaluation.greedy"):
        EvalConfig(greedy="yes")
