"""Under FSDP2 a checkpoint saved before an optimizer's first step changes nothing (FSDP2Strategy drops the state
torch makes up for it with a zero-lr step): a run that saves every RL step, and a run resumed from the checkpoint
written before the policy's first step, end on the weights of a run that never saves. One process each (a fresh
interpreter: the strategy opens its own process group)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_run import ROOT, finish_worker, fit, subprocess_env, tiny_config  # noqa: E402

STEPS = 3  # alternate E, M, E: the checkpoint after step 0 holds a policy optimizer that never stepped


def config(out: Path, save: bool) -> dict:
    strategy = yaml.safe_load((ROOT / "configs" / "fsdp2_tiny.yaml").read_text())["trainer"]["strategy"]

    def edit(cfg: dict) -> None:
        trainer = cfg["trainer"]
        trainer.update(devices=1, strategy=strategy, enable_checkpointing=save)
        callbacks = [cb for cb in trainer["callbacks"] if not cb["class_path"].endswith(("RLStepCheckpoint",
                                                                                         "EMSchedule"))]
        callbacks.append({"class_path": "tempo_pl.callbacks.EMSchedule",
                          "init_args": {"mode": "alternate", "e_steps": 1, "m_steps": 1}})
        if save:
            callbacks.append({"class_path": "tempo_pl.callbacks.RLStepCheckpoint",
                              "init_args": {"every_n_rl_steps": 1, "save_top_k": -1, "dirpath": str(out / "ckpt")}})
        trainer["callbacks"] = callbacks

    return tiny_config(out, edit, steps=STEPS)


def worker(out: Path, mode: str) -> None:
    from torch.distributed.tensor import DTensor

    ckpt = str(next((out.parent / "save" / "ckpt").glob("step000001*"))) if mode == "resume" else None
    cli = fit(config(out, save=mode == "save"), out, ckpt_path=ckpt)
    full = lambda model: {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()  # noqa: E731
                          for k, v in model.state_dict().items()}
    steps = [float(s["step"]) for s in cli.model.optimizers()[0].optimizer.state.values() if "step" in s]
    torch.save({"policy": full(cli.model.policy), "critic": full(cli.model.critic), "policy_adam_steps": steps},
               out / "result.pt")
    finish_worker()


def run(out: Path, mode: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, __file__, str(out), mode], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"FSDP2 worker ({mode}) failed ({done.returncode}):\n{done.stderr[-6000:]}")
    return torch.load(out / "result.pt")


@pytest.mark.slow
def test_saving_before_an_optimizers_first_step_changes_nothing(tmp_path: Path) -> None:
    from tempo_pl.strategies import FRESH_OPTIMIZERS_KEY

    straight, saved, resumed = (run(tmp_path / mode, mode) for mode in ("straight", "save", "resume"))
    # E, M, E: the policy's Adam counts the M-step's mini-batches alone, as in the run that never saved
    assert straight["policy_adam_steps"] and set(straight["policy_adam_steps"]) == {2.0}
    for other in (saved, resumed):
        assert other["policy_adam_steps"] == straight["policy_adam_steps"]
        for model in ("policy", "critic"):
            for name, tensor in straight[model].items():
                assert torch.equal(other[model][name], tensor), (model, name)
    first = next((tmp_path / "save" / "ckpt").glob("step000001*"))
    meta = torch.load(first / "meta.pt" if first.is_dir() else first, weights_only=False)
    assert meta[FRESH_OPTIMIZERS_KEY] == [0]  # the policy's had not stepped; the critic's had


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2])
