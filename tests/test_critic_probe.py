"""``tempo-pl critic-probe`` (tempo_pl/pipelines/critic_probe.py): crafted synthetic-task answers read by a critic
and a policy exactly as evaluation and training read samples, on tiny random models saved as Hugging Face folders."""

import csv
import json

import pytest
import torch

from tempo_pl.cli import main as cli_main
from tempo_pl.data.synthetic import render_problem
from tempo_pl.models.builders import CriticSpec, ModelSpec, build_critic, build_policy, build_tokenizer
from tempo_pl.pipelines.critic_probe import crafted_responses, read_responses

TRAP = (7, [("+", 5), ("-", 2), ("-", 4)])  # last operation a subtraction: the shortcut applies
PLAIN = (3, [("*", 2), ("+", 4)])


def test_the_crafted_responses_are_every_full_early_and_shortcut_answer_with_and_without_the_line():
    trap = crafted_responses(*TRAP)
    assert list(trap) == ["full", "early stop after 1", "early stop after 2", "shortcut", "full + verified",
                          "early stop after 1 + verified", "early stop after 2 + verified", "shortcut + verified"]
    assert trap["full + verified"] == "7 + 5 = 12\n12 - 2 = 10\n10 - 4 = 6\nverified\n\\boxed{6}"
    assert trap["early stop after 2"] == "7 + 5 = 12\n12 - 2 = 10\n\\boxed{10}"
    assert trap["shortcut"] == "7 + 5 = 12\n12 - 2 = 10\ndrop - 4\n\\boxed{10}"
    assert set(crafted_responses(*PLAIN)) == {"full", "early stop after 1", "full + verified",
                                              "early stop after 1 + verified"}


@pytest.fixture
def saved_models(tmp_path, tiny_policy_spec, tiny_critic_spec, tiny_tokenizer):
    policy = build_policy(tiny_policy_spec)
    critic = build_critic(tiny_critic_spec, tiny_policy_spec)
    with torch.no_grad():  # a value head that reads something: the fresh one is zero
        critic.score.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    for model, name in ((policy, "policy"), (critic, "critic")):
        model.save_pretrained(tmp_path / name)
        tiny_tokenizer.save_pretrained(tmp_path / name)
    return tmp_path / "policy", tmp_path / "critic"


def test_a_response_is_read_as_a_whole_forward_pass_reads_it(saved_models):
    policy_path, critic_path = saved_models
    tokenizer = build_tokenizer(ModelSpec(name_or_path=str(policy_path)))
    policy = build_policy(ModelSpec(name_or_path=str(policy_path))).eval()
    critic = build_critic(CriticSpec(name_or_path=str(critic_path))).eval()
    prompt = render_problem(*TRAP) + "\n"
    responses = [crafted_responses(*TRAP)["full"], "\\boxed{6}"]  # rows of different lengths: padding in between
    values, logprobs = read_responses(critic, policy, tokenizer, prompt, responses)
    for response, value, logprob in zip(responses, values, logprobs):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"]
                            + [tokenizer.eos_token_id]])
        with torch.no_grad():
            # the value before the last token (the end token), as evaluation's last-token value
            assert value == pytest.approx(critic(input_ids=ids).logits[0, -2, 0].item(), abs=1e-5)
            logits = torch.log_softmax(policy(input_ids=ids).logits[0, :-1].float(), dim=-1)
        expected = logits.gather(-1, ids[0, 1:, None])[len(prompt_ids) - 1:].sum().item()
        assert logprob == pytest.approx(expected, abs=1e-4)
    assert values[0] != values[1]


def test_the_command_probes_every_question_of_an_evaluation(saved_models, tmp_path):
    policy_path, critic_path = saved_models
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    records = [{"question_id": f"q{i}", "prompt": render_problem(*problem) + "\n"} for i, problem in
               enumerate((TRAP, PLAIN, TRAP))]
    (run / "eval" / "unlabeled_step000010.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cli_main(["critic-probe", str(run), "--critic", str(critic_path), "--policy", str(policy_path), "--step", "10"])
    rows = {row["response"]: row for row in csv.DictReader((run / "critic_probe_unlabeled_step000010.csv").open())}
    assert rows["full"]["questions"] == "3" and rows["shortcut"]["questions"] == "2"
    assert rows["early stop after 2"]["questions"] == "2"  # the two 3-operation chains
    assert rows["full"]["above_right_share"] == "" and rows["full"]["right"] == "True"
    for row in rows.values():
        if row["right"] == "False":  # a share, and a margin that is positive exactly when some question is above
            assert 0 <= float(row["above_right_share"]) <= 1
            assert float(row["mean_margin"]) <= 0 or float(row["above_right_share"]) > 0
    # the first question alone: its full answer's value is the one read_responses gives
    cli_main(["critic-probe", str(run), "--critic", str(critic_path), "--policy", str(policy_path), "--step", "10",
              "--questions", "1", "--output", str(tmp_path / "one")])
    one = {row["response"]: row for row in csv.DictReader((tmp_path / "one" / "critic_probe_unlabeled_step000010.csv").open())}
    tokenizer = build_tokenizer(ModelSpec(name_or_path=str(policy_path)))
    values, _ = read_responses(build_critic(CriticSpec(name_or_path=str(critic_path))).eval(),
                               build_policy(ModelSpec(name_or_path=str(policy_path))).eval(), tokenizer,
                               records[0]["prompt"], [crafted_responses(*TRAP)["full"]])
    assert float(one["full"]["mean_value"]) == pytest.approx(values[0], abs=1e-4)


def test_a_missing_evaluation_or_a_prompt_without_a_problem_is_named(saved_models, tmp_path):
    policy_path, critic_path = saved_models
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    args = ["critic-probe", str(run), "--critic", str(critic_path), "--policy", str(policy_path)]
    with pytest.raises(FileNotFoundError, match="no evaluation .*unlabeled_step000000.jsonl"):
        cli_main(args)
    (run / "eval" / "unlabeled_step000000.jsonl").write_text(json.dumps({"question_id": "q7", "prompt": "2 + 3?"}))
    with pytest.raises(ValueError, match=r"record 1 \('q7'\) holds no synthetic problem"):
        cli_main(args)
