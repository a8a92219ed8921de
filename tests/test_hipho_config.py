"""configs/tempo/qwen3_4b_hipho.yaml: its settings parse as the reference script's, and a 2-step run of them on the tiny
model with the physics grader and HiPhO-shaped rows completes on CPU."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from tests._tiny_run import ROOT, TINY, fit

HIPHO = ROOT / "configs" / "tempo" / "qwen3_4b_hipho.yaml"


def hipho_source_rows(count: int) -> list[dict]:
    """Rows in HiPhO's own schema (lists as JSON text), as the Hub has them."""
    return [{"index": str(i), "id": f"TestPhO_2025_{i}", "context": f"A cart of mass {i + 1} kg.",
             "question": "Find (1) its speed in m/s and (2) the direction (A: left, B: right).",
             "answer": json.dumps([f"\\boxed{{{2 * i + 1}}}", "\\boxed{B}"]), "unit": json.dumps(["m/s", None]),
             "points": json.dumps([0.6, 0.4]), "answer_type": json.dumps(["Numerical Value", "Multiple Choice"]),
             "marking": "[]", "modality": "text", "field": "Mechanics", "source": "TestPhO_2025"}
            for i in range(count)]


def test_config_maps_the_reference_script():
    cfg = yaml.safe_load(HIPHO.read_text())
    model = cfg["model"]["init_args"]
    assert model["algorithm"]["advantage"] == "em" and model["algorithm"]["policy_loss"] == "gspo"
    assert (model["algorithm"]["clip_low"], model["algorithm"]["clip_high"]) == (3.0e-4, 5.0e-4)
    assert model["algorithm"]["cliprange_value"] == 0.5
    assert model["sampling"]["max_new_tokens"] == 24576 and model["sampling"]["max_prompt_length"] == 2048
    assert model["sampling"]["n"] == 8 and model["evaluation"]["k"] == 8
    assert model["policy_optimizer"]["init_args"]["lr"] == model["critic_optimizer"]["init_args"]["lr"] == 1.0e-6
    trainer = cfg["trainer"]
    assert trainer["limit_train_batches"] * trainer["max_epochs"] == 128 and trainer["val_check_interval"] == 4
    assert cfg["data"]["init_args"]["batch_size"] * trainer["devices"] == 128
    for key in ("labeled", "unlabeled"):
        assert cfg["data"]["init_args"][key]["grader"] == {"name": "physics", "math_verify": False}
    text = HIPHO.read_text()
    for unsupported in ("critic_warmup_steps", "ulysses_sequence_parallel_size", "tensor_model_parallel_size",
                        "use_dynamic_bsz", "max_actor_ckpt_to_keep"):
        assert unsupported in text  # stated, with the reason


def test_two_steps_of_its_settings_on_the_tiny_model(tmp_path: Path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "hipho.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hipho_source_rows(8)))
    labeled = [{"id": f"l{i}", "problem": f"A ball falls {i + 1} m. Its speed?",
                "answer": {"answers": [f"{i + 2}"], "points": [1.0], "units": ["m/s"]}} for i in range(8)]
    (data_dir / "labeled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labeled))

    hipho = yaml.safe_load(HIPHO.read_text())
    cfg = yaml.safe_load(TINY.read_text())
    tiny_model = copy.deepcopy(cfg["model"]["init_args"])
    model = cfg["model"]["init_args"] = copy.deepcopy(hipho["model"]["init_args"])
    model["policy"], model["critic"] = tiny_model["policy"], tiny_model["critic"]
    # the run's settings at tiny size: responses of 24 tokens, 4 per prompt, every group kept (a random model
    # answers nothing right, so group filtering would drop every labeled group)
    model["sampling"].update(n=4, max_new_tokens=24, max_prompt_length=256)
    model["evaluation"].update(k=2, max_new_tokens=8, pass_ks=[1, 2])
    model["training"].update(mini_batch_size=2, micro_batch_size=4, forward_batch_size=4, group_filter=False,
                             generation_batch_size=None)
    model["policy_optimizer"]["init_args"]["lr"] = model["critic_optimizer"]["init_args"]["lr"] = 1.0e-4
    cfg["data"]["init_args"] = copy.deepcopy(hipho["data"]["init_args"])
    cfg["data"]["init_args"].update(batch_size=2, eval_batch_size=4, data_dir=str(data_dir))
    cfg["data"]["init_args"]["labeled"] = {"path": "labeled.jsonl", "grader": {"name": "physics",
                                                                                "math_verify": False}}
    trainer = cfg["trainer"]
    trainer.update(limit_train_batches=2, max_epochs=1, val_check_interval=2, num_sanity_val_steps=0,
                   limit_val_batches=1, enable_progress_bar=False, enable_model_summary=False)
    trainer["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    trainer["callbacks"] = [{"class_path": "tempo_pl.callbacks.EMSchedule", "init_args": {"mode": "mixed"}}]

    cli = fit(cfg, tmp_path)
    assert cli.model.rl_step == 2
    graders = cli.datamodule.graders
    assert {key: g.name for key, g in graders.items()} == {"labeled": "physics", "unlabeled": "physics",
                                                          "eval_sets[0]": "physics"}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (version,) = list((tmp_path / "runs" / "tiny").glob("version_*"))
    events = EventAccumulator(str(version))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val/hipho/score@2", "val/hipho/mean@2", "val/hipho/grading/scored_by_none"} <= tags
    # a random model answers nothing right: every part of every eval response is decided by no tier
    assert events.Scalars("val/hipho/grading/scored_by_none")[-1].value == pytest.approx(1.0)
    assert {"train/grading/scored_by_rule", "train/grading/scored_by_none"} <= tags
