"""Live progress of runs in child processes: a callback in each run writes a small JSON file, and a console table in
the pipeline polls those files (a child's own progress bar would garble a shared console and its log file)."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Optional

from lightning.pytorch import Callback, LightningModule, Trainer

PROGRESS_FILE = "progress.json"


class StageProgress(Callback):
    """Writes a stage's progress to a small JSON file that the ``tempo-pl demo`` display polls: ``done`` and ``total``
    training batches (SFT steps or RL steps) and whether it is training or evaluating.

    The demo appends it to every stage's callbacks; it is not meant for configs.

    Args:
        path: the JSON file to (re)write.

    Example::

        tempo-pl fit --config configs/demo/sft.yaml '--trainer.callbacks+={"class_path":
            "tempo_pl.pipelines.progress.StageProgress", "init_args": {"path": "p.json"}}'
    """

    def __init__(self, path: str) -> None:
        if not str(path).strip():
            raise ValueError("StageProgress.path must be a file path, got an empty string")
        self.path = Path(path)

    def _write(self, trainer: Trainer, phase: str) -> None:
        if not trainer.is_global_zero:
            return
        total = trainer.estimated_stepping_batches if trainer.state.fn == "fit" else 0
        state = {"done": int(trainer.fit_loop.epoch_loop.total_batch_idx + 1) if phase != "start" else 0,
                 "total": int(total) if math.isfinite(total) else 0, "phase": phase}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.path)  # atomic: the poller never reads half a file

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, "start")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        self._write(trainer, "train")

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._write(trainer, "eval")


def read_progress(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class StageDisplay:
    """A rich progress table of the stages, refreshed from the stages' progress files by a background thread.

    Args:
        progress_files: each stage's :class:`StageProgress` file, by stage name, in display order.
        label: the pipeline's name, the prefix of :meth:`log` lines.
    """

    def __init__(self, progress_files: dict[str, Path], label: str = "demo") -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress_files = progress_files
        self.label = label
        self.progress = Progress(
            TextColumn("{task.fields[name]:<14}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
        )
        self.tasks = {name: self.progress.add_task("", total=None, name=name, status="waiting", start=False)
                      for name in progress_files}
        self.running: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "StageDisplay":
        self.progress.start()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._refresh()
        self.progress.stop()

    def log(self, message: str) -> None:
        self.progress.console.print(f"[{self.label}] {message}", highlight=False)

    def start(self, name: str) -> None:
        self.running.add(name)
        self.progress.start_task(self.tasks[name])
        self.progress.update(self.tasks[name], status="starting")

    def finish(self, name: str, status: str) -> None:
        self.running.discard(name)
        task = self.tasks[name]
        total = self.progress.tasks[task].total or 1
        self.progress.update(task, total=total, completed=total, status=status)
        self.progress.stop_task(task)

    def _refresh(self) -> None:
        for name in list(self.running):
            state = read_progress(self.progress_files[name])
            if state and state.get("total"):
                status = {"start": "starting", "train": "training", "eval": "evaluating"}.get(state["phase"], "")
                self.progress.update(self.tasks[name], total=state["total"], completed=state["done"], status=status)

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self._refresh()
