"""Reward sources and pseudo-label telemetry, on hand-made rollouts (no model).

Expected scores are worked out by hand in the comments. Answers are chosen so that equivalence matters:
``2+2`` votes with ``4``, ``\\frac{1}{2}`` with ``0.5``.
"""

from __future__ import annotations

import math
from typing import Optional

import pytest
import torch

from tempo_pl.rewards import (
    CriticValue,
    MajorityVote,
    RewardSource,
    SelfCertainty,
    SemanticCluster,
    Verifier,
    pseudo_label_metrics,
)
from tempo_pl.types import ForwardStats, Rollout
from _rollouts import prompt_batch, rollout_from_texts

torch.set_num_threads(1)

NO_ANSWER = "I am not sure, so I will not box anything."


def boxed(answer: str) -> str:
    return f"Working it out step by step. The answer is \\boxed{{{answer}}}."


def make_rollout(
    groups: list[list[str]],
    answers: Optional[list[Optional[str]]] = None,
    response_mask: Optional[torch.Tensor] = None,
) -> Rollout:
    """A rollout whose group g holds the responses ``groups[g]`` (rows g*n .. g*n+n-1)."""
    count = range(len(groups))
    batch = prompt_batch([f"test:{g}" for g in count], answers, prompts=[f"question {g}" for g in count])
    return rollout_from_texts(groups, batch, response_mask)


def make_stats(rollout: Rollout, values=None, self_certainty=None) -> ForwardStats:
    shape = rollout.response_mask.shape
    return ForwardStats(
        old_logprobs=torch.zeros(shape), entropy=torch.zeros(shape), values=values, self_certainty=self_certainty
    )


# Group "mixed": {4, 2+2} agree, 5 alone, one response without an answer.
MIXED = [boxed("4"), boxed("2+2"), boxed("5"), NO_ANSWER]
# Group "tie": two 7s and two 3s; 7 appears first.
TIE = [boxed("7"), boxed("3"), boxed("3"), boxed("7")]
# Group "none": no usable answer anywhere (no box, an empty box, plain text).
NONE = [NO_ANSWER, boxed(""), "42", NO_ANSWER]
# Group "half": four spellings of one half.
HALF = [boxed("\\frac{1}{2}"), boxed("0.5"), boxed("1/2"), boxed("\\dfrac12")]


# ----------------------------------------------------------------------------------------------- Verifier


def test_verifier_scores_equivalence_with_plus_minus_one():
    rollout = make_rollout([MIXED, HALF], answers=["4", "\\frac{1}{2}"])
    out = Verifier()(rollout, make_stats(rollout))
    # mixed: 4 right, 2+2 == 4 right, 5 wrong, no answer wrong; half: every spelling of 1/2 is right
    assert out.scores.tolist() == [1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    assert out.metrics["accuracy"] == pytest.approx(6 / 8)
    assert out.keep_rows is None


def test_verifier_oracle_scores_one_zero():
    rollout = make_rollout([MIXED], answers=["5"])
    out = Verifier(correct_score=1.0, incorrect_score=0.0)(rollout, make_stats(rollout))
    assert out.scores.tolist() == [0.0, 0.0, 1.0, 0.0]
    assert out.metrics["accuracy"] == pytest.approx(1 / 4)


def test_verifier_refuses_rows_without_gold():
    rollout = make_rollout([MIXED, TIE], answers=["4", None])
    with pytest.raises(ValueError, match=r"test:1"):
        Verifier()(rollout, make_stats(rollout))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(correct_score=0.0, incorrect_score=0.0), "correct_score"),
        (dict(correct_score=-1.0, incorrect_score=1.0), "correct_score"),
        (dict(timeout=0.0), "timeout"),
        (dict(processes=0), "processes"),
    ],
)
def test_verifier_validates_config(kwargs, key):
    with pytest.raises(ValueError, match=key):
        Verifier(**kwargs)


def test_verifier_uses_grader_processes_and_timeout(monkeypatch):
    calls = {}

    def fake_grade_many(responses, golds, processes=None, timeout=2.0):
        calls.update(processes=processes, timeout=timeout)
        return [True] * len(responses)

    monkeypatch.setattr("tempo_pl.rewards.verifier.grade_many", fake_grade_many)
    rollout = make_rollout([TIE], answers=["7"])
    Verifier(processes=3, timeout=0.5)(rollout, make_stats(rollout))
    assert calls == {"processes": 3, "timeout": 0.5}


# ------------------------------------------------------------------------------------------- CriticValue


def test_critic_value_reads_last_valid_index_unclamped():
    mask = torch.tensor(
        [
            [1.0, 1.0, 1.0, 0.0],  # EOS at index 2 -> read index 2
            [1.0, 1.0, 1.0, 1.0],  # truncated: every position valid -> read index 3
            [1.0, 0.0, 0.0, 0.0],  # one token -> index 0
            [0.0, 0.0, 0.0, 0.0],  # empty response: index clamps to 0, masked value 0
        ]
    )
    values = torch.tensor(
        [
            [0.1, 0.2, 0.3, 0.0],
            [0.5, -0.5, 0.9, 1.7],  # 1.7 is outside [-1, 1] and must come back as is
            [-0.4, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    rollout = make_rollout([["a", "b"], ["c", "d"]], response_mask=mask)
    rollout.truncated = torch.tensor([False, True, False, False])
    out = CriticValue()(rollout, make_stats(rollout, values=values))
    torch.testing.assert_close(out.scores, torch.tensor([0.3, 1.7, -0.4, 0.0]))
    # (0.3 + 1.7 - 0.4 + 0) / 4 = 0.4
    assert out.metrics["value_last_mean"] == pytest.approx(0.4)
    assert CriticValue.needs_values and not CriticValue.needs_self_certainty


def test_critic_value_needs_values():
    rollout = make_rollout([["a", "b"]])
    with pytest.raises(ValueError, match="values"):
        CriticValue()(rollout, make_stats(rollout))


# ------------------------------------------------------------------------------------------ MajorityVote


def test_majority_vote_scores_hand_made_groups():
    rollout = make_rollout([MIXED, TIE, NONE, HALF])
    out = MajorityVote()(rollout, make_stats(rollout))
    expected = [
        [1, 1, 0, 0],  # {4, 2+2} has 2 votes, 5 has 1, the no-answer row votes for nothing
        [1, 0, 0, 1],  # 7 and 3 tie at 2; 7's first member (row 0) comes first
        [0, 0, 0, 0],  # nobody answered: no majority, nobody rewarded
        [1, 1, 1, 1],  # four spellings of one half form one cluster
    ]
    assert out.scores.tolist() == [float(x) for g in expected for x in g]
    # majority share per group: 2/4, 2/4, 0/4, 4/4 -> mean 0.5
    assert out.metrics["majority_ratio"] == pytest.approx((0.5 + 0.5 + 0.0 + 1.0) / 4)
    assert out.keep_rows is None


def test_majority_vote_tie_break_follows_first_appearance():
    # same two answers as TIE, but 3 now appears first
    rollout = make_rollout([[boxed("3"), boxed("7"), boxed("7"), boxed("3")]])
    out = MajorityVote()(rollout, make_stats(rollout))
    assert out.scores.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_majority_vote_counts_only_first_n_votes():
    groups = [
        [boxed("3"), boxed("5"), boxed("5"), boxed("3")],  # all 4 vote: tie -> 3; first 3 vote: 5 wins 2 to 1
        [boxed("5"), boxed("5"), boxed("3"), boxed("5")],  # first 3 vote: 5 wins 2 to 1; row 3 agrees, gets 1
    ]
    rollout = make_rollout(groups)
    assert MajorityVote()(rollout, make_stats(rollout)).scores.tolist()[:4] == [1.0, 0.0, 0.0, 1.0]
    out = MajorityVote(n_votes=3)(rollout, make_stats(rollout))
    assert out.scores.tolist() == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    # 2 of 3 votes in both groups
    assert out.metrics["majority_ratio"] == pytest.approx(2 / 3)


def test_majority_vote_keep_rows_marks_first_n_train_per_group():
    rollout = make_rollout([MIXED, TIE, HALF])
    out = MajorityVote(n_train=2)(rollout, make_stats(rollout))
    assert out.keep_rows.tolist() == [True, True, False, False] * 3
    # scores are unaffected by n_train: every row is still scored against the full vote
    assert out.scores.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "kwargs, key",
    [(dict(n_votes=0), "n_votes"), (dict(n_train=0), "n_train"), (dict(timeout=-1.0), "timeout")],
)
def test_majority_vote_validates_config(kwargs, key):
    with pytest.raises(ValueError, match=key):
        MajorityVote(**kwargs)


@pytest.mark.parametrize("key", ["n_votes", "n_train"])
def test_majority_vote_refuses_more_rows_than_the_group_has(key):
    rollout = make_rollout([TIE])
    with pytest.raises(ValueError, match=key):
        MajorityVote(**{key: 5})(rollout, make_stats(rollout))


# --------------------------------------------------------------------------------------- SemanticCluster


def test_semantic_cluster_scores_and_entropy():
    rollout = make_rollout([MIXED, NONE, HALF])
    out = SemanticCluster()(rollout, make_stats(rollout))
    expected = [
        [2 / 4, 2 / 4, 1 / 4, 1 / 4],  # clusters {4, 2+2}, {5}, {no answer}
        [1 / 4, 1 / 4, 1 / 4, 1 / 4],  # every missing answer is its own singleton
        [1.0, 1.0, 1.0, 1.0],  # one cluster
    ]
    torch.testing.assert_close(out.scores, torch.tensor([x for g in expected for x in g]))
    # entropies: mixed -(1/2 ln 1/2 + 2 * 1/4 ln 1/4) = 1.5 ln 2; none: ln 4 = 2 ln 2; half: 0
    assert out.metrics["semantic_entropy"] == pytest.approx((1.5 * math.log(2) + 2 * math.log(2) + 0.0) / 3)


def test_semantic_cluster_validates_timeout():
    with pytest.raises(ValueError, match="timeout"):
        SemanticCluster(timeout=0)


# ----------------------------------------------------------------------------------------- SelfCertainty


def test_self_certainty_averages_valid_tokens_only():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    certainty = torch.tensor(
        [
            [1.0, 2.0, 3.0, 100.0],  # padding holds 100: (1 + 2 + 3) / 3 = 2
            [0.5, 0.5, 1.5, 1.5],  # truncated, all valid: 4 / 4 = 1
            [9.0, 9.0, 9.0, 9.0],  # no valid token -> 0
        ]
    )
    rollout = make_rollout([["a"], ["b"], ["c"]], response_mask=mask)
    out = SelfCertainty()(rollout, make_stats(rollout, self_certainty=certainty))
    torch.testing.assert_close(out.scores, torch.tensor([2.0, 1.0, 0.0]))
    assert out.metrics["self_certainty_mean"] == pytest.approx(1.0)
    assert SelfCertainty.needs_self_certainty and not SelfCertainty.needs_values


def test_self_certainty_needs_the_tensor():
    rollout = make_rollout([["a"]])
    with pytest.raises(ValueError, match="self_certainty"):
        SelfCertainty()(rollout, make_stats(rollout))


# ------------------------------------------------------------------------------------------ label blindness


class Tripwire(list):
    """A list that fails on any read: proves a code path never looks at it."""

    def _trip(self, *args, **kwargs):
        raise AssertionError("a self-reward read prompt_batch.answers")

    __getitem__ = __iter__ = __len__ = __contains__ = _trip


def test_only_the_verifier_reads_answers():
    groups = [MIXED, TIE, HALF]
    rollout = make_rollout(groups, answers=["4", "3", "0.5"])
    values = torch.linspace(-1, 1, 12 * 4).reshape(12, 4)
    certainty = torch.linspace(0, 3, 12 * 4).reshape(12, 4)
    stats = make_stats(rollout, values=values, self_certainty=certainty)
    sources: list[RewardSource] = [CriticValue(), MajorityVote(n_train=2), SemanticCluster(), SelfCertainty()]
    assert [s.reads_answers for s in sources] == [False] * 4 and Verifier.reads_answers

    before = [s(rollout, stats).scores for s in sources]
    rollout.prompt_batch.answers = ["17", "\\pi", "nonsense"]
    garbage = [s(rollout, stats).scores for s in sources]
    rollout.prompt_batch.answers = Tripwire(["4", "3", "0.5"])
    tripwire = [s(rollout, stats).scores for s in sources]
    for b, g, t in zip(before, garbage, tripwire):
        assert torch.equal(b, g) and torch.equal(b, t)
    with pytest.raises(AssertionError, match="read prompt_batch.answers"):
        Verifier()(rollout, stats)


# -------------------------------------------------------------------------------------------- telemetry


def test_pseudo_label_metrics_against_held_back_gold():
    rollout = make_rollout([MIXED, TIE])  # unlabeled: the rollout itself carries no answers
    scores = MajorityVote()(rollout, make_stats(rollout)).scores  # [1, 1, 0, 0, 1, 0, 0, 1]
    metrics = pseudo_label_metrics(rollout, scores, ["4", "3"])
    # majority labels: 4 (gold 4, right), 7 (gold 3, wrong) -> 1/2
    # true correctness: [1, 1, 0, 0, 0, 1, 1, 0]; reward agrees on all 4 of group 0, none of group 1 -> 4/8
    # correct rows: 4 of 8
    assert metrics == pytest.approx({"label_accuracy": 0.5, "reward_accuracy": 0.5, "train_accuracy": 0.5})


def test_pseudo_label_metrics_threshold_binarises_signed_rewards():
    rollout = make_rollout([MIXED])  # correct vs gold 4: [1, 1, 0, 0]
    scores = torch.tensor([0.3, 0.2, -0.4, 0.6])
    # threshold 0 (+-1 rewards): rewarded [1, 1, 0, 1] -> agrees on 3 of 4
    assert pseudo_label_metrics(rollout, scores, ["4"], threshold=0.0)["reward_accuracy"] == pytest.approx(0.75)
    # threshold 0.5 (0/1 rewards): rewarded [0, 0, 0, 1] -> agrees on row 2 only
    assert pseudo_label_metrics(rollout, scores, ["4"], threshold=0.5)["reward_accuracy"] == pytest.approx(0.25)


def test_pseudo_label_metrics_counts_kept_rows_and_known_golds_only():
    rollout = make_rollout([MIXED, TIE, HALF])
    out = MajorityVote(n_train=2)(rollout, make_stats(rollout))
    metrics = pseudo_label_metrics(rollout, out.scores, ["4", "3", None], keep_rows=out.keep_rows)
    # HALF has no gold and is left out. Kept rows: MIXED 0-1 (reward 1, 1; correct 1, 1),
    # TIE 0-1 (reward 1, 0; correct 0, 1) -> agreement 2/4, correct 3/4; labels: 4 right, 7 wrong -> 1/2
    assert metrics == pytest.approx({"label_accuracy": 0.5, "reward_accuracy": 0.5, "train_accuracy": 0.75})
    assert pseudo_label_metrics(rollout, out.scores, [None, None, None]) == {}


def test_pseudo_label_metrics_no_answer_group_has_a_wrong_label():
    rollout = make_rollout([NONE])
    metrics = pseudo_label_metrics(rollout, torch.zeros(4), ["42"])
    # no majority -> label wrong; "42" is not boxed, so no row is correct; reward 0 agrees everywhere
    assert metrics == pytest.approx({"label_accuracy": 0.0, "reward_accuracy": 1.0, "train_accuracy": 0.0})


def test_pseudo_label_metrics_validates_shapes():
    rollout = make_rollout([TIE])
    with pytest.raises(ValueError, match="heldout_answers"):
        pseudo_label_metrics(rollout, torch.zeros(4), ["3", "4"])
    with pytest.raises(ValueError, match="scores"):
        pseudo_label_metrics(rollout, torch.zeros(3), ["3"])
    with pytest.raises(ValueError, match="keep_rows"):
        pseudo_label_metrics(rollout, torch.zeros(4), ["3"], keep_rows=torch.ones(2, dtype=torch.bool))


def test_grader_options_reach_the_grader(monkeypatch):
    seen = []

    def fake_cluster_answers(answers, timeout=2.0):
        seen.append(("cluster", timeout))
        return list(range(len(answers)))

    def fake_grade_many(responses, golds, processes=None, timeout=2.0):
        seen.append(("grade", processes, timeout))
        return [False] * len(responses)

    monkeypatch.setattr("tempo_pl.rewards.group_answers.cluster_answers", fake_cluster_answers)
    monkeypatch.setattr("tempo_pl.rewards.pseudo_labels.grade_many", fake_grade_many)
    rollout = make_rollout([TIE])
    MajorityVote(timeout=0.25)(rollout, make_stats(rollout))
    SemanticCluster(timeout=0.5)(rollout, make_stats(rollout))
    pseudo_label_metrics(rollout, torch.zeros(4), ["3"], timeout=0.75, processes=2)
    assert seen == [("cluster", 0.25), ("cluster", 0.5), ("cluster", 0.75), ("grade", 2, 0.75)]
