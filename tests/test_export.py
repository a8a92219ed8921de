"""HF export (tempo_pl.run.export) of full checkpoints: LoRA merged, QLoRA merged into the full-precision base, shared
base split into two models. Sharded (FSDP2) checkpoints are exported in test_strategies.py, on a real 2-rank run."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from _weights import draw_parameters

pytestmark = pytest.mark.filterwarnings("ignore")

IDS = torch.tensor([[7, 23, 41, 5, 66, 12], [40, 41, 42, 43, 44, 45]])


def _randomise(model, seed: int) -> None:
    """Stand-in for training: draw the adapters and the value head."""
    draw_parameters(model, seed, keep=lambda name: "lora_" in name or "score" in name)


def _write_checkpoint(path: Path, hparams: dict, models: dict) -> Path:
    """A checkpoint in Lightning's file format, as TempoModule writes it (state-dict keys under policy./critic.)."""
    state = {f"{prefix}.{k}": v for prefix, model in models.items() for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": hparams, "state_dict": state}, path)
    return path


def _outputs(policy, critic) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return policy(input_ids=IDS).logits.float(), critic(input_ids=IDS).logits.float()


def _exported_outputs(written: dict) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    policy = AutoModelForCausalLM.from_pretrained(written["policy"])
    critic = AutoModelForTokenClassification.from_pretrained(written["critic"])
    assert not hasattr(policy, "peft_config") and critic.config.num_labels == 1
    return _outputs(policy, critic)


def test_lora_checkpoint_exports_merged_models_with_the_same_outputs(tiny_policy_spec, tmp_path: Path) -> None:
    from tempo_pl.run.export import export_hf
    from tempo_pl.models.builders import CriticSpec, LoraSpec, build_critic, build_policy

    spec = replace(tiny_policy_spec, lora=LoraSpec(r=4, alpha=8))
    critic_spec = CriticSpec(seed=1, lora=LoraSpec(r=2, alpha=4))
    policy, critic = build_policy(spec), build_critic(critic_spec, spec)
    _randomise(policy, 1)
    _randomise(critic, 2)
    # the CLI stores the specs as plain dicts in the hyper-parameters
    hparams = {"policy": dataclasses.asdict(spec), "critic": dataclasses.asdict(critic_spec)}
    ckpt = _write_checkpoint(tmp_path / "run.ckpt", hparams, {"policy": policy, "critic": critic})

    written = export_hf(ckpt, tmp_path / "hf")
    assert sorted(written) == ["critic", "policy"]
    assert (written["policy"] / "tokenizer.json").is_file()
    got_logits, got_values = _exported_outputs(written)
    want_logits, want_values = _outputs(policy, critic)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_values, want_values, rtol=1e-5, atol=1e-5)


def test_tempo_pl_export_subcommand_writes_the_folders(tiny_policy_spec, tmp_path: Path, capsys) -> None:
    from tempo_pl.cli import main
    from tempo_pl.models.builders import build_policy

    policy = build_policy(tiny_policy_spec)
    _randomise(policy, 5)
    ckpt = _write_checkpoint(tmp_path / "run.ckpt", {"policy": dataclasses.asdict(tiny_policy_spec)},
                             {"policy": policy})
    main(["export", str(ckpt), str(tmp_path / "hf"), "--no-critic"])
    assert f"policy: {tmp_path / 'hf' / 'policy'}" in capsys.readouterr().out
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf" / "policy")
    ids = torch.tensor([[5, 9, 14, 3]])
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=ids).logits, policy(input_ids=ids).logits)
    assert not (tmp_path / "hf" / "critic").exists()


def test_qlora_checkpoint_merges_adapters_into_the_full_precision_base(tiny_policy_spec, tmp_path: Path) -> None:
    """A 4-bit run's adapters are merged into the original weights (not their NF4 rounding): the export equals the
    full-precision model carrying the trained adapters, not the 4-bit model."""
    from tempo_pl.run.export import export_hf, full_precision, load_trained_weights
    from tempo_pl.models.builders import CriticSpec, LoraSpec, build_critic, build_policy

    spec = replace(tiny_policy_spec, lora=LoraSpec(r=4, alpha=8), load_in_4bit=True)
    critic_spec = CriticSpec(seed=1, lora=LoraSpec(r=4, alpha=8), load_in_4bit=True)
    policy, critic = build_policy(spec), build_critic(critic_spec, spec)
    _randomise(policy, 1)
    _randomise(critic, 2)
    ckpt = _write_checkpoint(tmp_path / "qlora.ckpt", {"policy": spec, "critic": critic_spec},
                             {"policy": policy, "critic": critic})

    reference = {"policy": build_policy(full_precision(spec)), "critic": build_critic(full_precision(critic_spec),
                                                                                     full_precision(spec))}
    loaded = load_trained_weights(reference, ckpt)
    # the packed 4-bit weights are left out (other shape), every adapter and the head are read
    assert not any(k.endswith("q_proj.base_layer.weight") for k in loaded)
    assert sum("lora_" in k for k in loaded) == 2 * 2 * 7 * 2
    assert "critic.base_model.model.score.modules_to_save.default.weight" in loaded

    written = export_hf(ckpt, tmp_path / "hf")
    got_logits, got_values = _exported_outputs(written)
    want_logits, want_values = _outputs(reference["policy"], reference["critic"])
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_values, want_values, rtol=1e-5, atol=1e-5)
    quantized_logits, _ = _outputs(policy, critic)
    assert not torch.allclose(got_logits, quantized_logits, atol=1e-3)


def test_shared_base_checkpoint_exports_two_standalone_models(tiny_policy_spec, tmp_path: Path) -> None:
    from tempo_pl.run.export import export_hf
    from tempo_pl.models.builders import CriticSpec, LoraSpec
    from tempo_pl.models.shared_base import build_shared_actor_critic

    spec = replace(tiny_policy_spec, lora=LoraSpec(r=4, alpha=8))
    critic_spec = CriticSpec(seed=1, lora=LoraSpec(r=2, alpha=4))
    policy, critic = build_shared_actor_critic(spec, critic_spec)
    _randomise(policy.model, 3)
    _randomise(critic, 4)
    ckpt = _write_checkpoint(tmp_path / "shared.ckpt", {"policy": spec, "critic": critic_spec, "shared_base": True},
                             {"policy": policy, "critic": critic})

    written = export_hf(ckpt, tmp_path / "hf")
    got_logits, got_values = _exported_outputs(written)
    want_logits, want_values = _outputs(policy, critic)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_values, want_values, rtol=1e-5, atol=1e-5)


def test_checkpoint_of_another_configuration_is_refused(tiny_policy_spec, tmp_path: Path) -> None:
    from tempo_pl.run.export import export_hf
    from tempo_pl.models.builders import LoraSpec, build_policy

    trained = build_policy(tiny_policy_spec)  # full fine-tuning, no adapters
    spec = replace(tiny_policy_spec, lora=LoraSpec(r=4))
    ckpt = _write_checkpoint(tmp_path / "other.ckpt", {"policy": spec}, {"policy": trained})
    with pytest.raises(ValueError, match=r"lacks 28 trained tensors .*lora_A"):
        export_hf(ckpt, tmp_path / "hf")


def test_missing_or_foreign_checkpoints_are_named(tmp_path: Path) -> None:
    from tempo_pl.run.export import export_hf

    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        export_hf(tmp_path / "nothing", tmp_path / "hf")
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match="meta.pt"):
        export_hf(tmp_path / "folder", tmp_path / "hf")
    torch.save({"hyper_parameters": {"lr": 1.0}, "state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="no `policy` spec"):
        export_hf(tmp_path / "foreign.ckpt", tmp_path / "hf")


def test_command_line_writes_the_policy_only_when_asked(tiny_policy_spec, tmp_path: Path, capsys) -> None:
    from tempo_pl.run.export import main
    from tempo_pl.models.builders import CriticSpec, build_critic, build_policy

    critic_spec = CriticSpec(seed=1)
    ckpt = _write_checkpoint(tmp_path / "full.ckpt", {"policy": tiny_policy_spec, "critic": critic_spec},
                             {"policy": build_policy(tiny_policy_spec),
                              "critic": build_critic(critic_spec, tiny_policy_spec)})
    main([str(ckpt), str(tmp_path / "hf"), "--no-critic"])
    assert capsys.readouterr().out.strip() == f"policy: {tmp_path / 'hf' / 'policy'}"
    assert (tmp_path / "hf" / "policy" / "config.json").is_file()
    assert not (tmp_path / "hf" / "critic").exists()
