"""The pieces of the signal path that one process can check: the handlers note a signal and the stop is decided by
``agreed`` (not in the handler), Lightning's own handlers stay off, SIGUSR1 in a SLURM job runs ``scontrol requeue``
once on rank zero, and a requeued job's command line resumes its run. The multi-process behaviour is tested in
tests/test_signals_two_ranks.py and tests/test_resume_signals.py."""

from __future__ import annotations

import os
import signal
import types
from pathlib import Path

import jsonargparse
import pytest

from tempo_pl.callbacks.signal_stop import StopRequest, _NoLightningSignals, own_signals, requeue_slurm_job
from tempo_pl.cli import resume_requeued_job


def _fake_scontrol(tmp_path: Path, monkeypatch, exit_code: int = 0) -> Path:
    calls = tmp_path / "calls.txt"
    script = tmp_path / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit {exit_code}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_a_signal_is_noted_and_the_stop_decided_at_the_agreement() -> None:
    owner = object()
    request = StopRequest.watch(owner)
    try:
        trainer = types.SimpleNamespace(world_size=1)
        assert not request.agreed(trainer)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert request.signum == signal.SIGUSR1 and not request.decided  # the handler only notes it
        assert request.agreed(trainer) and request.decided
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        request.release(owner)
    assert signal.getsignal(signal.SIGUSR1) is not request._handle


def test_lightning_signal_handlers_are_switched_off() -> None:
    from lightning.pytorch import Trainer

    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    before = signal.getsignal(signal.SIGTERM)
    own_signals(trainer)
    assert isinstance(trainer._signal_connector, _NoLightningSignals)
    trainer._signal_connector.register_signal_handlers()
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigusr1_in_a_slurm_job_requeues_it_once_on_rank_zero(tmp_path: Path, monkeypatch) -> None:
    calls = _fake_scontrol(tmp_path, monkeypatch)
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert requeue_slurm_job(signal.SIGTERM, True) is None
    assert requeue_slurm_job(signal.SIGUSR1, False) is None
    assert requeue_slurm_job(signal.SIGUSR1, True) == "123"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert requeue_slurm_job(signal.SIGUSR1, True) == "77_3"
    assert calls.read_text().splitlines() == ["requeue 123", "requeue 77_3"]


def test_a_failed_requeue_is_said(tmp_path: Path, monkeypatch, capsys) -> None:
    _fake_scontrol(tmp_path, monkeypatch, exit_code=1)
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert requeue_slurm_job(signal.SIGUSR1, True) is None
    assert "scontrol requeue 123 failed (exit 1" in capsys.readouterr().err


def _config(save_dir: Path) -> jsonargparse.Namespace:
    logger = jsonargparse.Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger",
                                    init_args=jsonargparse.Namespace(save_dir=str(save_dir), name="tiny", version=None))
    return jsonargparse.Namespace(trainer=jsonargparse.Namespace(logger=logger, default_root_dir=None))


def test_a_requeued_job_resumes_its_run_when_it_has_a_last_checkpoint(tmp_path: Path, monkeypatch) -> None:
    config = _config(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert not resume_requeued_job(config)  # no run yet: a fresh start
    checkpoints = tmp_path / "tiny" / "version_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    assert not resume_requeued_job(config)  # a run that never saved
    (checkpoints / "last.ckpt").write_bytes(b"")
    assert resume_requeued_job(config)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert not resume_requeued_job(config)  # the job's first start
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert not resume_requeued_job(config)  # not a SLURM job
