"""The trackers users log to, end to end from YAML: CSV (Lightning's CSVLogger) as the run's logger, MLflow (a
local file store, offline) and W&B (offline) beside it; every one keeps the RL step as its x-axis, and `tempo-pl plot`
reads the run's eval JSONL whatever the tracker (a validate-only folder labeled as such)."""

from __future__ import annotations

import csv
import importlib
import inspect
import json
import re
from pathlib import Path

import pytest
import yaml

from _tiny_run import ROOT, tiny_config, write_config
from tempo_pl.cli import main
from tempo_pl.pipelines.plot import plot_runs

CSV_LOGGER = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": None, "name": "tiny"}}


def tracked_run(tmp_path: Path, *extra_loggers: dict, command: str = "fit") -> Path:
    """``tempo-pl <command>`` of 2 RL steps, evaluated at steps 0 and 2, whose first logger is CSV; returns the
    run folder."""
    def edit(cfg):
        first = json.loads(json.dumps(CSV_LOGGER))
        first["init_args"]["save_dir"] = str(tmp_path / "runs")
        cfg["trainer"]["logger"] = [first, *extra_loggers]

    before = set((tmp_path / "runs" / "tiny").glob("version_*"))
    config = write_config(tiny_config(tmp_path, edit, steps=2, validate=True), tmp_path / f"{command}.yaml")
    main([command, "--config", str(config)])
    (run,) = set((tmp_path / "runs" / "tiny").glob("version_*")) - before
    return run


def csv_points(run: Path, tag: str) -> list[tuple[int, float]]:
    with (run / "metrics.csv").open() as f:
        return [(int(row["step"]), float(row[tag])) for row in csv.DictReader(f) if row.get(tag)]


@pytest.mark.slow
def test_csv_logger_keeps_the_rl_step_and_plot_reads_the_eval_jsonl(tmp_path: Path, capsys):
    run = tracked_run(tmp_path)
    assert csv_points(run, "train/rl_step") == [(0, 0.0), (1, 1.0)]  # the x-axis is the RL step
    assert [step for step, _ in csv_points(run, "val/heldout/mean@2")] == [0, 2]
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["heldout_step000000.jsonl", "heldout_step000002.jsonl"]
    assert (run / "checkpoints" / "last.ckpt").is_file() and not list(run.glob("events.out.tfevents.*"))

    checked = tracked_run(tmp_path, command="validate")
    written = plot_runs([tmp_path / "runs" / "tiny"])
    table = written["heldout:markdown"].read_text()
    assert f"| {run.name} | no | 2 |" in table
    assert f"| {checked.name} (validate only) | no | 0 |" in table
    # plot's mean@2 from the JSONL is the value the run logged
    (_, logged_start), (_, logged_final) = csv_points(run, "val/heldout/mean@2")
    row = next(line for line in table.splitlines() if line.startswith(f"| {run.name} |")).split("|")
    assert [float(row[4]), float(row[5])] == pytest.approx([logged_start, logged_final])


@pytest.mark.slow
def test_mlflow_offline_file_store_keeps_the_rl_step(tmp_path: Path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store behind this switch
    store = tmp_path / "mlruns"
    tracked_run(tmp_path, {"class_path": "lightning.pytorch.loggers.MLFlowLogger",
                           "init_args": {"experiment_name": "tempo", "save_dir": str(store)}})
    client = MlflowClient(tracking_uri=f"file:{store}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "tempo"]
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "train/rl_step")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.0), (1, 1.0)]
    # MLflow allows no '@' in a metric name: Lightning's MLFlowLogger logs val/heldout/mean@2 as val/heldout/mean2
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/heldout/mean2")) == [0, 2]


@pytest.mark.slow
def test_wandb_offline_logs_the_rl_step_as_its_step_metric(tmp_path: Path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sent: list[dict] = []
    log = wandb.sdk.wandb_run.Run.log
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", lambda run, data, *a, **k: (sent.append(dict(data)),
                                                                                      log(run, data, *a, **k))[1])
    tracked_run(tmp_path, {"class_path": "lightning.pytorch.loggers.WandbLogger",
                           "init_args": {"project": "tempo", "offline": True, "save_dir": str(tmp_path)}})
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))  # the offline run, for `wandb sync`
    # Lightning's WandbLogger sends the step it is given as trainer/global_step: the RL step
    train = [(row["trainer/global_step"], row["train/rl_step"]) for row in sent if "train/rl_step" in row]
    assert train == [(0, 0.0), (1, 1.0)]
    assert [row["trainer/global_step"] for row in sent if "val/heldout/mean@2" in row] == [0, 2]


def test_the_trackers_yaml_block_of_the_docs_names_loggers_that_exist():
    (block,) = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "trackers.md").read_text(), re.DOTALL)
    loggers = yaml.safe_load(block)["trainer"]["logger"]
    assert [entry["class_path"].rsplit(".", 1)[1] for entry in loggers] == ["CSVLogger", "MLFlowLogger", "WandbLogger"]
    for entry in loggers:
        module, _, name = entry["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        assert set(entry["init_args"]) <= set(inspect.signature(cls).parameters), entry
