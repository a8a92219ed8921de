"""Grading worker faults: a worker killed with a pair in flight is replaced and the pair graded again once (a second
death makes it a counted, logged grader error); a worker that cannot start raises with its own reason."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest

from tempo_pl.rewards import grading_pool

PAIRS = [("\\frac{1}{2}", "0.5"), ("3", "4"), ("x+1", "1+x")]
RIGHT = [True, False, True]


@pytest.fixture
def kill_on_send(monkeypatch):
    """``kills[0]`` times, the worker a pair of index 0 is sent to is killed (SIGKILL) as the pair is sent."""
    kills = [0]
    send = grading_pool._Worker.send

    def send_and_die(self, item, *args, **kwargs):
        if item == 0 and kills[0] > 0:
            kills[0] -= 1
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        send(self, item, *args, **kwargs)

    monkeypatch.setattr(grading_pool._Worker, "send", send_and_die)
    yield kills
    grading_pool.shutdown_workers()


def test_a_killed_worker_is_replaced_and_its_pair_graded_again(kill_on_send) -> None:
    kill_on_send[0] = 1
    before = grading_pool.grader_errors()
    assert grading_pool.run_pairs(PAIRS, timeout=20.0, processes=1) == RIGHT
    assert kill_on_send[0] == 0 and grading_pool.grader_errors() == before


def test_a_pair_whose_worker_dies_twice_is_a_counted_grader_error(kill_on_send, caplog) -> None:
    kill_on_send[0] = 2
    before = grading_pool.grader_errors()
    with caplog.at_level(logging.WARNING, logger=grading_pool.__name__):
        assert grading_pool.run_pairs(PAIRS, timeout=20.0, processes=1) == [False, False, True]
    assert grading_pool.grader_errors() == before + 1
    assert "grader error: the grading worker died twice on the pair (pred '\\\\frac{1}{2}', gold '0.5')" in caplog.text


@pytest.mark.parametrize("body, reason", [
    ("raise ImportError('libgmp.so.10: cannot open shared object file')",
     "a grading worker could not start: ImportError: libgmp.so.10: cannot open shared object file"),
    ("import os; os._exit(3)", "a grading worker could not start: its process exited with code 3 before it was ready"),
])
def test_a_worker_that_cannot_start_says_why(body: str, reason: str, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "math_verify.py").write_text(body + "\n")  # shadows the installed math-verify in the worker
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    grading_pool.shutdown_workers()
    try:
        with pytest.raises(RuntimeError) as err:
            grading_pool.run_pairs(PAIRS, timeout=5.0, processes=1)
        assert str(err.value).startswith(reason), str(err.value)
        with pytest.raises(RuntimeError, match=reason.split(":")[0]):
            grading_pool.start_workers(1)
    finally:
        monkeypatch.undo()
        grading_pool.shutdown_workers()
