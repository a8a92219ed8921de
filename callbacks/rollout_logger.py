"""RolloutSampleLogger: writes what every RL step generated, per rank, as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer

from .checkpoint import check_writable

from tempo_pl.engines.prompts import decode_prompts


class RolloutSampleLogger(Callback):
    """Appends one JSON line per RL step to ``<log_dir>/rollouts/rank<r>.jsonl``.

    Each line has the RL step, the phase, the prompt ids of the step's groups, the number of responses per group, the
    score, length in tokens and ``truncated`` flag (hit the token limit without EOS) of every response, and up to
    ``max_samples`` samples: the rendered prompt (what the policy read: chat template applied, after any left
    truncation; decoded with the module's ``tokenizer``) and the response, each cut to ``max_chars``, with the
    response's score, length and flag. It reads the module's ``last_step`` record, so it sees exactly the rows the
    step trained on (after group filtering).

    Args:
        max_samples: responses written per step (0 = ids and scores only).
        max_chars: longest prompt and response text written.
        dirpath: folder of the files; default ``<trainer.log_dir>/rollouts``.

    Example::

        trainer:
          callbacks:
            - class_path: tempo_pl.callbacks.RolloutSampleLogger
              init_args: {max_samples: 4}
    """

    def __init__(self, max_samples: int = 4, max_chars: int = 2000, dirpath: Optional[str] = None) -> None:
        if max_samples < 0:
            raise ValueError(f"RolloutSampleLogger.max_samples must be >= 0, got {max_samples}")
        if max_chars < 1:
            raise ValueError(f"RolloutSampleLogger.max_chars must be >= 1, got {max_chars}")
        self.max_samples = max_samples
        self.max_chars = max_chars
        self.dirpath = dirpath
        self._file: Optional[Path] = None

    def _path(self, trainer: Trainer) -> Path:
        if self._file is None:
            root = Path(self.dirpath) if self.dirpath else Path(trainer.log_dir or trainer.default_root_dir) / "rollouts"
            check_writable(root, "RolloutSampleLogger: the rollout-log folder", "dirpath", rank=trainer.global_rank)
            self._file = root / f"rank{trainer.global_rank}.jsonl"
        return self._file

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._file = None
            self._path(trainer)  # a folder that cannot be written fails here, before any RL step

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # a resumed run redoes the steps from its checkpoint on: the interrupted run's lines for them go, so that
        # every RL step has one line
        drop_lines_from(self._path(trainer), int(getattr(pl_module, "rl_step", 0)))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        record = getattr(pl_module, "last_step", None)
        if record is None:
            return
        rollout = record.rollout
        group_sizes = [int((rollout.group_ids == g).sum()) for g in range(len(rollout.prompt_batch))]
        lengths, truncated = rollout.response_lengths.tolist(), rollout.truncated.tolist()
        tokenizer = getattr(pl_module, "tokenizer", None)
        shown = min(self.max_samples, rollout.num_rows)
        prompts = decode_prompts(tokenizer, rollout) if tokenizer is not None and shown else []
        line = {
            "rl_step": record.rl_step,
            "phase": record.plan.phase,
            "prompt_ids": list(rollout.prompt_batch.ids),
            "is_labeled": list(rollout.prompt_batch.is_labeled),
            "group_sizes": group_sizes,
            "scores": [round(float(x), 6) for x in record.scores.tolist()],
            "response_lengths": [int(x) for x in lengths],
            "truncated": [bool(x) for x in truncated],
            "metrics": {k: round(float(v), 6) for k, v in sorted(record.metrics.items())},
            "samples": [
                {"prompt_id": rollout.prompt_batch.ids[int(rollout.group_ids[i])],
                 **({"prompt": prompts[int(rollout.group_ids[i])][: self.max_chars]} if prompts else {}),
                 "response": rollout.texts[i][: self.max_chars],
                 "response_length": int(lengths[i]),
                 "truncated": bool(truncated[i]),
                 "score": float(record.scores[i])}
                for i in range(shown)
            ],
        }
        with self._path(trainer).open("a") as f:
            f.write(json.dumps(line) + "\n")


def drop_lines_from(path: Path, rl_step: int) -> None:
    """Rewrites the JSON lines file ``path`` without the lines of RL steps ``>= rl_step`` and any line cut short."""
    if not path.is_file():
        return
    def keep(line: str) -> bool:
        try:
            return json.loads(line).get("rl_step", -1) < rl_step
        except ValueError:  # a line cut short by a kill during its write
            return False

    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and keep(line)]
    if len(kept) != len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)
