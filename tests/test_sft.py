"""The SFT warm start: batch building, loss, schedule, data module, a short fit that saves a loadable policy, and
the demo config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tempo_pl.sft import (
    IGNORE_INDEX,
    SFTDataModule,
    SFTModule,
    collate_sft,
    completion_loss,
    warmup_cosine,
)

ROOT = Path(__file__).resolve().parents[1]


def char_ids(text: str) -> list[int]:
    """Ids of the builtin char tokenizer: 4 specials, then printable ASCII from ' ' (id 4), then newline (id 99)."""
    return [99 if c == "\n" else ord(c) - 32 + 4 for c in text]


IM_START, IM_END, PAD = 2, 3, 0


def test_collate_masks_the_prompt_and_right_pads(tiny_tokenizer) -> None:
    batch = collate_sft(tiny_tokenizer, ["ab", "a"], ["12", "3"])
    prompt_ab = [IM_START] + char_ids("user\nab") + [IM_END] + char_ids("\n") + [IM_START] + char_ids("assistant\n")
    prompt_a = [IM_START] + char_ids("user\na") + [IM_END] + char_ids("\n") + [IM_START] + char_ids("assistant\n")
    row0 = prompt_ab + char_ids("12") + [IM_END]
    row1 = prompt_a + char_ids("3") + [IM_END] + [PAD, PAD]  # 2 shorter: 1 char of prompt, 1 of completion
    assert batch["input_ids"].tolist() == [row0, row1]
    assert batch["attention_mask"].tolist() == [[1] * len(row0), [1] * (len(row1) - 2) + [0, 0]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX] * len(prompt_ab) + char_ids("12") + [IM_END],
        [IGNORE_INDEX] * len(prompt_a) + char_ids("3") + [IM_END, IGNORE_INDEX, IGNORE_INDEX],
    ]


def test_completion_loss_by_hand() -> None:
    # one row of 3 positions, labels [-, 1, 0]: logits at 0 predict label 1, logits at 1 predict label 0
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [100.0, -100.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    # position 0: uniform over 2 -> ln 2; position 1: p(0) = 3 / (3 + 1) -> ln(4/3); the last logits predict nothing
    expected = (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    assert completion_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_warmup_cosine_by_hand() -> None:
    # 10 warm-up steps, decay over steps 10..110 to 0.1
    assert warmup_cosine(0, 10, 110, 0.1) == pytest.approx(0.1)  # 1/10
    assert warmup_cosine(9, 10, 110, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 110, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, 0.1) == pytest.approx(0.55)  # halfway: 0.1 + 0.9 * 0.5 * (1 + cos(pi/2))
    assert warmup_cosine(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(0, 0, 100, 0.0) == pytest.approx(1.0)  # no warm-up: start at the peak


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"learning_rate": 0.0}, "learning_rate must be positive"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
        ({"betas": (0.9, 1.0)}, "betas must be two numbers"),
        ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio must be in"),
    ],
)
def test_module_validation_names_the_option(tiny_policy_spec, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SFTModule(tiny_policy_spec, **kwargs)


def test_datamodule_templates_limits_and_batches() -> None:
    from tempo_pl.data.synthetic import SyntheticTaskSpec, make_split

    dm = SFTDataModule("synthetic:labeled?size=10", prompt_template="Q: {problem}", batch_size=4, limit=6)
    dm.setup("fit")
    rows = make_split(SyntheticTaskSpec(labeled_size=10), "labeled")
    assert dm.pairs == [(f"Q: {row['problem']}", row["solution"], None) for row in rows[:6]]
    batches = list(dm.train_dataloader())
    assert [len(b["prompts"]) for b in batches] == [4, 2]
    assert sorted(p for b in batches for p in b["prompts"]) == sorted(p for p, _, _ in dm.pairs)
    # the same seed shuffles the same way
    assert [b["prompts"] for b in batches] == [b["prompts"] for b in dm.train_dataloader()]
    assert SFTDataModule("synthetic:labeled", prompt_template="plain").prompt_template == "{problem}"


def test_datamodule_reads_jsonl_and_names_a_bad_row(tmp_path: Path) -> None:
    from tempo_pl.data import DataError
    from tempo_pl.data.synthetic import write_jsonl

    good = write_jsonl([{"id": "a", "q": "1+1?", "sol": "\\boxed{2}"}], tmp_path / "good.jsonl")
    dm = SFTDataModule(str(good), problem_field="q", solution_field="sol", prompt_template="plain")
    assert dm.load_pairs() == [("1+1?", "\\boxed{2}", None)]
    rows = [{"id": "a", "q": "1+1?", "sol": "2"}, {"id": "b", "q": "2+2?", "sol": ""}]
    bad = write_jsonl(rows, tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match=r"bad.jsonl line 2 \(row 1, id 'b'\): field 'sol'"):
        SFTDataModule(str(bad), problem_field="q", solution_field="sol").load_pairs()
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        SFTDataModule(str(good), batch_size=0)
    with pytest.raises(ValueError, match="must contain '{problem}'"):
        SFTDataModule(str(good), prompt_template="no placeholder")


def test_short_fit_lowers_the_loss_and_saves_a_loadable_policy(tmp_path: Path, tiny_policy_spec) -> None:
    from lightning.pytorch import Trainer

    from tempo_pl.models.builders import ModelSpec, build_policy, build_tokenizer
    from tempo_pl.engines.hf_generate import encode_prompts

    save_dir = tmp_path / "policy"
    module = SFTModule(tiny_policy_spec, learning_rate=3e-3, warmup_steps=2, save_dir=str(save_dir))
    data = SFTDataModule("synthetic:labeled?size=16", prompt_template="plain", batch_size=8)
    data.setup("fit")
    probe = collate_sft(module.tokenizer, [p for p, _, _ in data.pairs[:8]], [c for _, c, _ in data.pairs[:8]])

    def probe_loss(policy) -> float:
        with torch.no_grad():
            logits = policy(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
        return completion_loss(logits, probe["labels"]).item()

    module.configure_model()
    before = probe_loss(module.policy)
    trainer = Trainer(max_steps=30, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    after = probe_loss(module.policy)
    # a random char-level model starts near ln(100) = 4.6 nats per token; 30 steps on 16 rows must cut that by half
    assert before > 4.0 and after < 0.5 * before
    # the scheduler decayed to min_lr_ratio at max_steps
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(3e-3 * 0.1, rel=1e-2)

    reloaded_spec = ModelSpec(name_or_path=str(save_dir))
    reloaded, tokenizer = build_policy(reloaded_spec), build_tokenizer(reloaded_spec)
    assert probe_loss(reloaded) == pytest.approx(after, abs=1e-5)
    assert encode_prompts(tokenizer, ["Start with 1."]) == encode_prompts(module.tokenizer, ["Start with 1."])
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<pad>"


def test_lora_policy_is_saved_merged(tmp_path: Path, tiny_policy_spec) -> None:
    from dataclasses import replace

    from tempo_pl.models.lora import save_merged
    from tempo_pl.models.builders import LoraSpec, ModelSpec, build_policy

    module = SFTModule(replace(tiny_policy_spec, lora=LoraSpec(r=2, alpha=4)))
    module.configure_model()
    with torch.no_grad():  # make the adapters matter: peft starts B at zero
        for name, parameter in module.policy.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.05)
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = module.policy(input_ids=ids).logits
    save_merged(module.policy, tmp_path / "merged", module.tokenizer)
    reloaded = build_policy(ModelSpec(name_or_path=str(tmp_path / "merged")))
    assert not any("lora" in name for name, _ in reloaded.named_parameters())
    torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
    assert any("lora_B" in name for name, _ in module.policy.named_parameters())  # the live model keeps its adapters


def test_demo_config_builds_the_sft_module_and_data(tmp_path: Path) -> None:
    from tempo_pl.cli import TempoCLI

    cli = TempoCLI(args=["--config", str(ROOT / "configs/demo/sft.yaml"),
                         "--model.init_args.save_dir", str(tmp_path / "policy")], run=False)
    assert isinstance(cli.model, SFTModule) and isinstance(cli.datamodule, SFTDataModule)
    assert cli.model.model_spec.config["hidden_size"] == 96 and cli.model.model_spec.tokenizer == "builtin:char"
    assert cli.model.learning_rate == 1e-3 and cli.trainer.max_steps == 600
    assert cli.datamodule.path.startswith("synthetic:labeled") and cli.datamodule.prompt_template == "{problem}"
    assert cli.model.save_dir == str(tmp_path / "policy")
