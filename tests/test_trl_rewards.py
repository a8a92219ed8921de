"""TRL's reward functions run unchanged through FunctionReward: message lists for conversational data, every dataset
column by its own name, completion_ids and the RL step; D_U's answers never reach them. TRL's own ``trl.rewards``
run from YAML where TRL is installed."""

from __future__ import annotations

import json
from pathlib import Path

import jsonargparse
import pytest
import torch
from datasets import Dataset

import _reward_functions
from _tiny_run import fit, tiny_config
from tempo_pl.data import TempoDataModule
from tempo_pl.data.sources import DatasetSpec
from tempo_pl.rewards import FunctionReward, RewardSource
from tempo_pl.types import ForwardStats, PromptBatch, Rollout

SYSTEM = "Think in <think> tags, then box the answer."


def chat_rows(prefix: str, count: int) -> list[dict]:
    """TRL-style conversational rows: a ``prompt`` column (the first with a system message of its own), the gold
    under ``solution``, an ``answer`` column and a nested one."""
    rows = []
    for i in range(count):
        prompt = [{"role": "user", "content": f"{prefix} {i} + 1?"}]
        if i == 0:
            prompt.insert(0, {"role": "system", "content": SYSTEM})
        rows.append({"id": f"{prefix}{i}", "prompt": prompt, "solution": f"{i + 101}", "answer": f"{i + 101}",
                     "extra_info": {"answer": f"{i + 101}", "level": 3}})
    return rows


def rollout_of(batch: PromptBatch, texts: list[list[str]], lengths: list[list[int]]) -> Rollout:
    """A rollout of ``batch`` whose group g holds ``texts[g]``, responses of ``lengths[g]`` tokens."""
    n = len(texts[0])
    width = max(max(ls) for ls in lengths)
    mask = torch.tensor([[1.0] * length + [0.0] * (width - length) for ls in lengths for length in ls])
    rows = len(batch) * n
    return Rollout(
        prompt_ids=torch.ones(rows, 2, dtype=torch.long), prompt_mask=torch.ones(rows, 2, dtype=torch.long),
        response_ids=torch.arange(rows * width).reshape(rows, width), response_mask=mask,
        texts=[t for group in texts for t in group], group_ids=torch.arange(len(batch)).repeat_interleave(n),
        is_labeled=torch.tensor(batch.is_labeled).repeat_interleave(n), truncated=torch.zeros(rows, dtype=torch.bool),
        prompt_batch=batch)


def data_module(**kwargs) -> TempoDataModule:
    dm = TempoDataModule(batch_size=2, **kwargs)
    dm.setup("fit")
    return dm


def labeled_batch() -> PromptBatch:
    dm = data_module(labeled=DatasetSpec(data=Dataset.from_list(chat_rows("L", 2)), name="dl", problem_field="prompt",
                                         answer_field="solution"), prompt_template="plain")
    dm.streams.source = "labeled"
    batch = next(dm.streams)
    order = sorted(range(len(batch)), key=lambda i: batch.ids[i])
    return batch.select(order)  # dl:L0 (with its own system message), dl:L1


def test_trl_accuracy_signature_gets_message_lists_the_solution_column_and_completion_ids():
    _reward_functions.CALLS.clear()
    batch = labeled_batch()
    rollout = rollout_of(batch, [["\\boxed{101}", "\\boxed{7}"], ["no box", "\\boxed{102}"]], [[3, 5], [2, 4]])
    source = FunctionReward(_reward_functions.accuracy_reward)
    source.rl_step = 7
    out = source(rollout, ForwardStats.zeros(rollout))
    assert out.scores.tolist() == [1.0, 0.0, 0.0, 1.0] and out.metrics == {"mean": 0.5}
    (call,) = _reward_functions.CALLS
    assert call["completions"][0] == [{"role": "assistant", "content": "\\boxed{101}"}]
    assert call["solution"] == ["101", "101", "102", "102"]  # the gold under its own column
    assert call["answer"] == ["101", "101", "102", "102"]  # the dataset's own `answer` column, passed as TRL does
    assert call["extra_info"][0] == {"answer": "101", "level": 3}
    assert [len(ids) for ids in call["completion_ids"]] == [3, 5, 2, 4]
    assert call["completion_ids"][1] == [5, 6, 7, 8, 9]  # row 1 of a width-5 arange, all 5 tokens
    assert call["step"] == 7 and call["trainer_state"].global_step == 7
    assert call["ids"] == ["dl:L0", "dl:L0", "dl:L1", "dl:L1"] and call["is_labeled"] == [True] * 4
    assert "prompt" not in call and "completion_ids" in call  # prompts travel positionally, as in TRL


def test_conversational_prompts_are_message_lists_with_the_rows_own_system_message():
    _reward_functions.CALLS.clear()
    batch = labeled_batch()
    rollout = rollout_of(batch, [["a"], ["b"]], [[1], [1]])
    FunctionReward(_reward_functions.record_everything)(rollout, ForwardStats.zeros(rollout))
    (call,) = _reward_functions.CALLS
    assert call["prompts"] == [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "L 0 + 1?"}],
                               [{"role": "user", "content": "L 1 + 1?"}]]
    assert call["completions"] == [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]]


def test_format_and_length_signatures_score_as_trl_does():
    batch = labeled_batch()
    rollout = rollout_of(batch, [["<think>x</think> 4", "4"], ["<think>a<think>b</think>", "<think>y</think>"]],
                         [[8, 12], [20, 30]])
    stats = ForwardStats.zeros(rollout)
    assert FunctionReward(_reward_functions.think_format_reward)(rollout, stats).scores.tolist() == [1.0, 0.0, 0.0, 1.0]
    length = FunctionReward(_reward_functions.get_soft_overlong_punishment,
                            factory_args={"max_completion_len": 24, "soft_punish_cache": 8})
    assert length.name == "get_soft_overlong_punishment"
    # 8 and 12 tokens are within 24 - 8 = 16; 20 is 4 into the cache of 8; 30 is past 24
    assert length(rollout, stats).scores.tolist() == [0.0, 0.0, -0.5, -1.0]


def test_unlabeled_rows_show_no_gold_column_to_a_reward_function():
    """D_U rows carry their answers under `solution`, `answer` and `extra_info.answer`: a reward scoring them sees
    the question and id columns only, and no gold value anywhere; the oracle run exposes them as labeled rows."""
    _reward_functions.CALLS.clear()
    rows = chat_rows("U", 2)
    dm = data_module(unlabeled=DatasetSpec(data=Dataset.from_list(rows), name="du", problem_field="prompt"))
    dm.streams.source = "unlabeled"
    batch = next(dm.streams)
    assert dm.heldout_answers == {"du:U0": "101", "du:U1": "102"}  # kept aside for telemetry
    rollout = rollout_of(batch, [["x"], ["y"]], [[1], [1]])
    FunctionReward(_reward_functions.record_everything)(rollout, ForwardStats.zeros(rollout))
    (call,) = _reward_functions.CALLS
    assert set(call) == {"prompts", "completions", "completion_ids", "trainer_state", "step", "ids", "is_labeled", "id"}
    shown = json.dumps({k: v for k, v in call.items() if k != "trainer_state"})
    assert "101" not in shown and "102" not in shown
    with pytest.raises(TypeError, match="solution"):  # a reward that needs the gold cannot run on D_U
        FunctionReward(_reward_functions.accuracy_reward)(rollout, ForwardStats.zeros(rollout))

    oracle = data_module(unlabeled=DatasetSpec(data=Dataset.from_list(rows), name="du", problem_field="prompt"),
                         expose_unlabeled_answers=True)
    oracle.streams.source = "unlabeled"
    exposed = next(oracle.streams)
    assert all(columns["solution"] in ("101", "102") for columns in exposed.columns)


def test_none_scores_count_as_zero_and_their_share_is_logged():
    batch = PromptBatch(ids=["a", "b"], prompts=["p", "q"], answers=["1", "2"], is_labeled=[True, True],
                        columns=[{"solution": "1"}, {"solution": None}])
    rollout = rollout_of(batch, [["\\boxed{1}"], ["\\boxed{2}"]], [[1], [1]])
    out = FunctionReward(_reward_functions.accuracy_reward)(rollout, ForwardStats.zeros(rollout))
    assert out.scores.tolist() == [1.0, 0.0] and out.metrics == {"mean": 1.0, "skipped": 0.5}


def test_a_factory_from_yaml_and_its_errors():
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--reward", type=RewardSource)
    cfg = parser.parse_args(['--reward={"class_path": "tempo_pl.rewards.FunctionReward", "init_args": {"function": '
                             '"_reward_functions.get_soft_overlong_punishment", "factory_args": '
                             '{"max_completion_len": 4, "soft_punish_cache": 2}}}'])
    reward = parser.instantiate_classes(cfg).reward
    batch = labeled_batch()
    rollout = rollout_of(batch, [["a", "b"], ["c", "d"]], [[2, 3], [4, 5]])
    assert reward(rollout, ForwardStats.zeros(rollout)).scores.tolist() == [0.0, -0.5, -1.0, -1.0]
    with pytest.raises(TypeError, match="must return the reward function, got float"):
        FunctionReward(lambda **kw: 1.0, name="bad", factory_args={})
    with pytest.raises(TypeError, match="factory_args must be a mapping"):
        FunctionReward(_reward_functions.get_soft_overlong_punishment, factory_args=[4, 2])


def write_chat_jsonl(path: Path, prefix: str, count: int) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in chat_rows(prefix, count)))
    return str(path)


@pytest.mark.slow
def test_trl_rewards_from_yaml(tmp_path: Path):
    """TRL's own accuracy_reward on D_L's `solution` column and its length penalty on D_U, named in YAML, through 2
    mixed RL steps on conversational rows (one with its own system message)."""
    pytest.importorskip("trl")
    from tempo_pl.pipelines.report import read_scalars

    def edit(cfg):
        init = cfg["model"]["init_args"]
        init["labeled_reward"] = {"class_path": "tempo_pl.rewards.FunctionReward",
                                  "init_args": {"function": "trl.rewards.accuracy_reward"}}
        init["unlabeled_reward"] = {"class_path": "tempo_pl.rewards.FunctionReward", "init_args": {
            "function": "trl.rewards.get_soft_overlong_punishment",
            "factory_args": {"max_completion_len": 24, "soft_punish_cache": 8}}}
        cfg["trainer"]["callbacks"][0]["init_args"] = {"mode": "mixed"}
        data = cfg["data"]["init_args"]
        data["labeled"] = {"path": write_chat_jsonl(tmp_path / "dl.jsonl", "L", 8), "problem_field": "prompt",
                           "answer_field": "solution"}
        data["unlabeled"] = {"path": write_chat_jsonl(tmp_path / "du.jsonl", "U", 8), "problem_field": "prompt"}

    cli = fit(tiny_config(tmp_path, edit, steps=2), tmp_path)
    curves = read_scalars(Path(cli.trainer.log_dir))
    penalty = curves["train/reward/get_soft_overlong_punishment/mean"]
    assert [step for step, _ in penalty] == [0, 1] and all(-1.0 <= value <= 0.0 for _, value in penalty)
    # a random model boxes no right answer: accuracy_reward read every labeled completion as a message and scored 0
    assert [value for _, value in curves["train/score/labeled_mean"]] == [0.0, 0.0]
