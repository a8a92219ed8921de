"""Evaluation during fit and ``tempo-pl validate``: k samples per question, graded per question, summarised per
eval set (mean@k, pass@j, maj@k, diversity, critic calibration), written as per-question JSONL.

:class:`Evaluation` holds one validation epoch's records; the module's validation hooks only feed it.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from typing_extensions import override

from tempo_pl.algorithms.advantages import last_token_value
from tempo_pl.config import EvalConfig, SamplingConfig
from tempo_pl.engines.prompts import decode_prompts
from tempo_pl.evaluation.records import score_questions, summarize_questions, write_question_jsonl
from tempo_pl.models.forward import critic_response_values
from tempo_pl.rewards.graders import counter_metrics, row_graders, take_counts
from tempo_pl.run.rng_state import capture_rng, restore_rng
from tempo_pl.stages.minibatch import index_chunks, row_inputs
from tempo_pl.types import PromptBatch, Rollout

# Every rank computes the evaluation metrics from the records of all ranks (gather_records), so they are equal on every
# rank: Lightning's advice to reduce them across ranks (sync_dist=True), one warning per metric, is moot.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('val/")


def eval_sampling(config: EvalConfig, training: SamplingConfig) -> SamplingConfig:
    """The training rollout's sampling with evaluation's k, temperature, top-p and (when set) response budget."""
    budget = training.max_new_tokens if config.max_new_tokens is None else config.max_new_tokens
    return dataclasses.replace(
        training, n=config.k, temperature=config.temperature, top_p=config.top_p,
        max_new_tokens=budget,
    )


def greedy_sampling(config: EvalConfig, training: SamplingConfig) -> SamplingConfig:
    """Evaluation's sampling (:func:`eval_sampling`) decoding one response per question at temperature 0."""
    return dataclasses.replace(eval_sampling(config, training), n=1, temperature=0.0, top_p=1.0)


@torch.no_grad()
def last_token_values(critic: torch.nn.Module, rollout: Rollout, batch_rows: int, device: torch.device) -> Tensor:
    """The critic's value at each response's last token, (N,), computed ``batch_rows`` rows at a time."""
    inputs = row_inputs(rollout, device)
    values = []
    for rows in index_chunks(rollout.num_rows, batch_rows):
        ids, attn, _, resp_mask = inputs(rows)
        per_token = critic_response_values(critic, ids, attn, resp_mask)
        values.append(last_token_value(per_token.float(), resp_mask.float()))
    return torch.cat(values)


class Evaluation:
    """The per-question records of one validation epoch, per eval set (dataloader index).

    Args:
        config: the run's evaluation options.
        tokenizer: decodes each question's prompt tokens into the record's ``prompt`` (the rendered prompt); None
            leaves it out.
    """

    def __init__(self, config: EvalConfig, tokenizer=None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.records: dict[int, list] = {}
        self.counts: dict[int, dict[str, float]] = {}
        self.greedy_correct: dict[int, list[bool]] = {}

    def add(self, dataloader_idx: int, rollout: Rollout, critic: Optional[torch.nn.Module] = None,
            batch_rows: int = 16, device: Optional[torch.device] = None) -> None:
        """Grade a rollout of k samples per question and keep its records, with the critic's last-token value of
        each sample (``batch_rows`` rows per forward pass) when there is a critic."""
        values_last = None
        if critic is not None and rollout.num_rows:
            values_last = last_token_values(critic, rollout, batch_rows, device or torch.device("cpu"))
        groups = [rollout.group_rows([g]).tolist() for g in range(len(rollout.prompt_batch))]
        graders = row_graders(rollout.prompt_batch)
        take_counts(graders)  # what training counted is the training step's, not this set's
        records = score_questions(
            rollout.prompt_batch.ids,
            rollout.prompt_batch.answers,
            [[rollout.texts[i] for i in rows] for rows in groups],
            values=None if values_last is None else [values_last[rows].tolist() for rows in groups],
            extraction=self.config.extraction,
            graders=graders,
        )
        totals = self.counts.setdefault(dataloader_idx, {})
        for key, value in take_counts(graders).items():
            totals[key] = totals.get(key, 0.0) + value
        prompts = decode_prompts(self.tokenizer, rollout) if self.tokenizer is not None else [None] * len(records)
        lengths, truncated = rollout.response_lengths.tolist(), rollout.truncated.tolist()
        for record, rows, prompt in zip(records, groups, prompts):
            record.prompt = prompt
            record.response_lengths = [int(lengths[i]) for i in rows]
            record.truncated = [bool(truncated[i]) for i in rows]
        self.records.setdefault(dataloader_idx, []).extend(records)

    def add_greedy(self, dataloader_idx: int, rollout: Rollout) -> None:
        """Grade a rollout of one greedy response per question (:func:`greedy_sampling`) and keep its verdicts."""
        records = score_questions(rollout.prompt_batch.ids, rollout.prompt_batch.answers,
                                  [[text] for text in rollout.texts], extraction=self.config.extraction)
        self.greedy_correct.setdefault(dataloader_idx, []).extend(bool(r.correct[0]) for r in records)

    def finish(
        self,
        set_names: list[str],
        gather: Callable[[list], list],
        jsonl_dir: Optional[Path],
        rl_step: int,
    ) -> dict[str, float]:
        """``val/<set>/<metric>`` of every eval set, with ``val/<set>/grading/<counter>`` of its graders (this rank's)
        and ``val/<set>/greedy_accuracy`` where greedy verdicts were added; writes ``<set>_step<rl_step>.jsonl`` under
        ``jsonl_dir`` (when given). ``gather`` collects the records and verdicts of every rank (identity on one
        process)."""
        metrics: dict[str, float] = {}
        for idx, records in sorted(self.records.items()):
            records = gather(records)
            name = set_names[idx] if idx < len(set_names) else f"set{idx}"
            summary = summarize_questions(records, ks=list(self.config.pass_ks))
            metrics.update({f"val/{name}/{k}": float(v) for k, v in summary.items()})
            counts = counter_metrics(self.counts.get(idx, {}))
            metrics.update({f"val/{name}/grading/{k}": float(v) for k, v in counts.items()})
            if idx in self.greedy_correct:
                verdicts = gather(self.greedy_correct[idx])
                metrics[f"val/{name}/greedy_accuracy"] = sum(verdicts) / len(verdicts)
            if jsonl_dir is not None:
                write_question_jsonl(jsonl_dir / f"{name}_step{rl_step:06d}.jsonl", records)
        self.records, self.counts, self.greedy_correct = {}, {}, {}
        return metrics


def gather_records(records: list) -> list:
    """The records of every rank, in rank order (identity without torch.distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return records
    gathered: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, records)
    return [r for part in gathered for r in part]


def eval_dir(trainer) -> Path:
    """``<log_dir>/eval``, created; every rank must call it (``trainer.log_dir`` broadcasts from rank 0)."""
    path = Path(trainer.log_dir or trainer.default_root_dir) / "eval"
    path.mkdir(parents=True, exist_ok=True)
    return path


class EvaluationHooks(LightningModule):
    """The validation hooks of :class:`~tempo_pl.module.TempoModule`: k samples per question from its ``engine``
    (with ``evaluation``'s sampling), fed to an :class:`Evaluation` and logged at the RL step. Evaluation samples
    from the global RNGs; they are restored afterwards, so training samples what it would have without it."""

    _evaluation: Optional[Evaluation] = None
    _rng_before_eval: Optional[dict] = None

    @override
    def on_validation_epoch_start(self) -> None:
        # evaluation samples from the global RNGs; restoring them afterwards keeps training's samples unchanged
        self._rng_before_eval = capture_rng()
        self._evaluation = Evaluation(self.evaluation, tokenizer=self.tokenizer)

    @override
    def validation_step(self, batch: PromptBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        with self.generation_context():
            rollout = self.engine.generate(self.policy, batch, self.evaluation.k,
                                           sampling=eval_sampling(self.evaluation, self.sampling))
        self._evaluation.add(dataloader_idx, rollout, self.critic, self.training_cfg.forward_batch_size, self.device)
        if self.evaluation.greedy:
            with self.generation_context():
                greedy = self.engine.generate(self.policy, batch, 1,
                                              sampling=greedy_sampling(self.evaluation, self.sampling))
            self._evaluation.add_greedy(dataloader_idx, greedy)

    @override
    def on_validation_epoch_end(self) -> None:
        restore_rng(self._rng_before_eval)
        # trainer.log_dir broadcasts from rank 0: every rank must ask for it, not rank 0 alone
        jsonl_dir = eval_dir(self.trainer) if self.evaluation.write_jsonl else None
        names = list(getattr(getattr(self.trainer, "datamodule", None), "eval_set_names", []) or [])
        metrics = self._evaluation.finish(names, gather_records,
                                          jsonl_dir if self.trainer.is_global_zero else None, self.rl_step)
        if metrics:  # straight to the loggers also when Lightning's sanity check mutes self.log
            self.log_at_rl_step(metrics)
