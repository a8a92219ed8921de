"""TempoDataModule: the labeled pool D_L, the unlabeled pool D_U and the evaluation sets, from YAML."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, Optional, Union

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from tempo_pl.data.sources import DataError, DatasetSpec, Record, load_records
from tempo_pl.data.streams import EMStreams, PromptRow, PromptStream, rows_to_batch
from tempo_pl.data.templates import DEFAULT_TEMPLATE, apply_template, resolve_template


def _spec_dict(spec: Optional[DatasetSpec]) -> Optional[dict]:
    if spec is None:
        return None
    # an in-memory dataset is described, not copied: hyperparameters are logged and saved in every checkpoint
    data = None if spec.data is None else f"{spec.source} of {spec.data.num_rows} rows (not saved)"
    return {**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "data"}, "data": data}


def _as_spec(value: Any, name: str) -> Any:
    """A ``datasets.Dataset`` / ``DatasetDict`` passed in Python becomes ``DatasetSpec(data=value, name=name)``."""
    from datasets import Dataset, DatasetDict

    if isinstance(value, (Dataset, DatasetDict)):
        return DatasetSpec(data=value, name=name)
    return value


def rows_hash(rows: list[PromptRow]) -> str:
    """SHA-256 of the rows in order (id, prompt, answer, labeled), one JSON line each."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row.id, row.prompt, row.answer, row.is_labeled]).encode() + b"\n")
    return digest.hexdigest()


def normalized_question(text: str) -> str:
    """A question compared across pools: case-folded, whitespace runs collapsed."""
    return " ".join(text.split()).casefold()


def warn_capped_eval_sets(limit: Union[int, float, None], names: list[str], sizes: list[int], batch_size: int) -> bool:
    """Warn, naming the cap, when ``trainer.limit_val_batches`` leaves questions of an eval set unevaluated (its
    metrics would otherwise read as the whole set's); True when it does."""
    if limit is None or limit == 0 or (isinstance(limit, float) and limit >= 1.0):
        return False
    cut = []
    for name, size in zip(names, sizes):
        batches = math.ceil(size / batch_size)
        kept = min(batches, int(limit)) if isinstance(limit, int) else int(batches * limit)
        evaluated = min(size, kept * batch_size)
        if evaluated < size:
            cut.append(f"{name} {evaluated} of {size} questions")
    if cut:
        rank_zero_warn(f"trainer.limit_val_batches = {limit} caps every evaluation set at {limit} batch(es) of "
                       f"{batch_size} prompts: {', '.join(cut)}; val/* metrics cover those questions only. Remove "
                       "trainer.limit_val_batches (or set it to 1.0) to evaluate every question, or cap a set "
                       "explicitly with data.init_args.eval_limit / its `limit`.")
    return bool(cut)


def _check_positive_int(name: str, value: object, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "an integer >= 1 or None" if allow_none else "an integer >= 1"
        raise ValueError(f"TempoDataModule.{name} must be {allowed}, got {value!r}")


class TempoDataModule(LightningDataModule):
    """Prompts for test-time training: D_L (labeled), D_U (unlabeled test questions) and evaluation sets.

    Give either ``labeled`` and/or ``unlabeled``, or one ``mixed`` dataset whose ``labeled_field`` splits it into
    the two pools (the reference code's single parquet). D_U answers never reach a training batch: they are kept in
    :attr:`heldout_answers` for evaluation telemetry, unless ``expose_unlabeled_answers`` turns the run into the
    oracle baseline (the rows then travel as labeled rows, with their answers).

    ``train_dataloader()`` returns :class:`~tempo_pl.data.streams.EMStreams`, an endless iterable whose ``source``
    the ``EMSchedule`` callback switches; train with ``max_steps``.

    Args:
        labeled: D_L, every row with an answer.
        unlabeled: D_U, answers optional.
        mixed: one dataset holding both, with ``labeled_field`` set; excludes ``labeled`` and ``unlabeled``.
        eval_sets: evaluation datasets (answers required), one validation dataloader each, in this order.
        batch_size: prompts per RL step per rank.
        mixed_labeled_fraction: share of D_L rows in a mixed batch (``round(batch_size * fraction)`` rows).
        prompt_template: a template containing ``{problem}``, or a name from ``tempo_pl.data.templates.TEMPLATES``.
        eval_batch_size: prompts per evaluation batch.
        eval_limit: keep only the first ``eval_limit`` rows of every evaluation set.
        seed: seed of the training streams' per-epoch shuffles.
        expose_unlabeled_answers: oracle upper bound: train on D_U with its ground truth. Never for a TTT result.
        data_dir: folder for relative dataset paths and for offline copies of the shipped benchmarks.
        allow_overlap: accept questions that are in both D_L and D_U (same text after case-folding and collapsing
            whitespace). Refused by default: the critic would be recalibrated on the test questions' answers.
        allow_changed_data: resume a checkpoint although the rows of D_L or D_U differ from the ones it was trained
            on. Checkpoints record each training pool's row count and a hash of its rows (id, prompt, answer); a
            resume on other rows is refused by default, naming the pool and its file. A changed row count cannot
            be resumed either way (the saved stream position counts rows).

    In Python every dataset argument also takes an in-memory ``datasets.Dataset`` or ``DatasetDict`` (its ``train``
    split), named after the argument (``labeled``, ``unlabeled``, ``mixed``, ``eval0`` ...); give a
    ``DatasetSpec(data=..., problem_field=...)`` to map columns or pick the split.

    Example (YAML)::

        data:
          class_path: tempo_pl.data.TempoDataModule
          init_args:
            labeled: {path: data/dapo_subset.parquet, answer_field: reward_model.ground_truth}
            unlabeled: {path: aime2024, repeat: 8}
            eval_sets: [{path: aime2024}, {path: aime2025}]
            batch_size: 8
            data_dir: ../shared/data
    """

    def __init__(
        self,
        labeled: Optional[DatasetSpec] = None,
        unlabeled: Optional[DatasetSpec] = None,
        mixed: Optional[DatasetSpec] = None,
        eval_sets: Optional[list[DatasetSpec]] = None,
        batch_size: int = 8,
        mixed_labeled_fraction: float = 0.5,
        prompt_template: str = DEFAULT_TEMPLATE,
        eval_batch_size: int = 8,
        eval_limit: Optional[int] = None,
        seed: int = 1,
        expose_unlabeled_answers: bool = False,
        data_dir: Optional[str] = None,
        allow_overlap: bool = False,
        allow_changed_data: bool = False,
    ) -> None:
        super().__init__()
        labeled, unlabeled, mixed = (_as_spec(v, k) for k, v in
                                     (("labeled", labeled), ("unlabeled", unlabeled), ("mixed", mixed)))
        eval_sets = [_as_spec(spec, f"eval{i}") for i, spec in enumerate(eval_sets or [])]
        for key, flag in (("allow_overlap", allow_overlap), ("allow_changed_data", allow_changed_data)):
            if not isinstance(flag, bool):
                raise ValueError(f"TempoDataModule.{key} must be true or false, got {flag!r}")
        if mixed is not None and (labeled is not None or unlabeled is not None):
            given = [key for key, spec in (("labeled", labeled), ("unlabeled", unlabeled)) if spec is not None]
            raise ValueError(f"TempoDataModule: `mixed` is split into both pools and excludes {' and '.join(given)}")
        if mixed is not None and mixed.labeled_field is None:
            raise ValueError("TempoDataModule.mixed needs labeled_field (e.g. 'reward_model.is_labeled')")
        for key, spec in [("labeled", labeled), ("unlabeled", unlabeled)] + [
            (f"eval_sets[{i}]", spec) for i, spec in enumerate(eval_sets or [])
        ]:
            if spec is not None and spec.labeled_field is not None:
                raise ValueError(f"TempoDataModule.{key}.labeled_field is only read for the `mixed` dataset")
        _check_positive_int("batch_size", batch_size)
        _check_positive_int("eval_batch_size", eval_batch_size)
        _check_positive_int("eval_limit", eval_limit, allow_none=True)
        if isinstance(mixed_labeled_fraction, bool) or not 0.0 <= float(mixed_labeled_fraction) <= 1.0:
            raise ValueError(
                f"TempoDataModule.mixed_labeled_fraction must be in [0, 1], got {mixed_labeled_fraction!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"TempoDataModule.seed must be an integer, got {seed!r}")
        try:
            template = resolve_template(prompt_template)
        except ValueError as error:
            raise ValueError(f"TempoDataModule.{error}") from None
        # Plain dicts, not DatasetSpec objects: checkpoints must stay loadable with torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "labeled": _spec_dict(labeled),
                "unlabeled": _spec_dict(unlabeled),
                "mixed": _spec_dict(mixed),
                "eval_sets": [_spec_dict(spec) for spec in eval_sets or []],
                "batch_size": batch_size,
                "mixed_labeled_fraction": float(mixed_labeled_fraction),
                "prompt_template": prompt_template,
                "eval_batch_size": eval_batch_size,
                "eval_limit": eval_limit,
                "seed": seed,
                "expose_unlabeled_answers": expose_unlabeled_answers,
                "data_dir": data_dir,
                "allow_overlap": allow_overlap,
                "allow_changed_data": allow_changed_data,
            }
        )

        self.labeled = labeled
        self.unlabeled = unlabeled
        self.mixed = mixed
        self.eval_sets = list(eval_sets or [])
        self.batch_size = batch_size
        self.mixed_labeled_fraction = float(mixed_labeled_fraction)
        self.prompt_template = template
        self.eval_batch_size = eval_batch_size
        self.eval_limit = eval_limit
        self.seed = seed
        self.expose_unlabeled_answers = expose_unlabeled_answers
        self.data_dir = data_dir
        self.allow_overlap = allow_overlap
        self.allow_changed_data = allow_changed_data

        self.heldout_answers: dict[str, str] = {}
        """D_U answers by row id, for evaluation telemetry only; never part of a training batch."""
        self.streams: Optional[EMStreams] = None
        self.labeled_rows: list[PromptRow] = []
        self.unlabeled_rows: list[PromptRow] = []
        self._eval_rows: Optional[list[list[PromptRow]]] = None

    @property
    def eval_set_names(self) -> list[str]:
        """Names of the evaluation sets, in ``val_dataloader()`` order."""
        return [spec.display_name for spec in self.eval_sets]

    def setup(self, stage: Optional[str] = None) -> None:
        """Read and check every dataset the stage needs (malformed rows raise :class:`DataError` here)."""
        if stage in (None, "fit") and self.streams is None:
            self._build_streams()
        if self._eval_rows is None:
            self._eval_rows = [
                self._to_rows(load_records(spec, "eval", self.data_dir))[: self.eval_limit] for spec in self.eval_sets
            ]

    def train_dataloader(self) -> EMStreams:
        if self.streams is None:
            raise RuntimeError("TempoDataModule.train_dataloader() needs setup('fit') first")
        return self.streams

    def val_dataloader(self) -> list[DataLoader]:
        if self._eval_rows is None:
            raise RuntimeError("TempoDataModule.val_dataloader() needs setup() first")
        if self.trainer is not None:
            warn_capped_eval_sets(self.trainer.limit_val_batches, self.eval_set_names,
                                  [len(rows) for rows in self._eval_rows], self.eval_batch_size)
        # Each new iterator of a DataLoader draws a base seed from its generator; without one it draws from the
        # global torch RNG, so every evaluation would shift the rollouts that follow it.
        return [
            DataLoader(rows, batch_size=self.eval_batch_size, shuffle=False, collate_fn=rows_to_batch,
                       generator=torch.Generator().manual_seed(self.seed))
            for rows in self._eval_rows
        ]

    def fingerprints(self) -> dict[str, dict[str, Any]]:
        """Each training pool's ``{"rows": count, "sha256": hash of its rows, "source": file}`` (built by setup)."""
        sources = {"labeled": self.mixed or self.labeled, "unlabeled": self.mixed or self.unlabeled}
        return {name: {"rows": len(rows), "sha256": rows_hash(rows),
                       "source": sources[name].source if sources[name] is not None else None}
                for name, rows in (("labeled", self.labeled_rows), ("unlabeled", self.unlabeled_rows))}

    def state_dict(self) -> dict[str, Any]:
        return {"fingerprints": self.fingerprints()} if self.streams is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuses (:class:`DataError`) a checkpoint trained on other D_L or D_U rows, unless ``allow_changed_data``."""
        saved = state_dict.get("fingerprints")
        if not saved or self.streams is None:
            return
        for name, now in self.fingerprints().items():
            then = saved.get(name)
            if then is None or (then["rows"], then["sha256"]) == (now["rows"], now["sha256"]):
                continue
            change = (f"{then['rows']} rows then, {now['rows']} now" if then["rows"] != now["rows"] else
                      f"the same {now['rows']} rows in number, with other content")
            message = (f"TempoDataModule: the {name} pool ({now['source']}) differs from the one the checkpoint was "
                       f"trained on ({then['source']}; {change})")
            if not self.allow_changed_data:
                raise DataError(f"{message}: resuming would go on over other questions. Restore the file, or set "
                                "data.init_args.allow_changed_data: true to resume on the new rows")
            rank_zero_warn(f"{message}; resuming on the new rows (allow_changed_data: true)")

    def _build_streams(self) -> None:
        if self.mixed is not None:
            records = load_records(self.mixed, "mixed", self.data_dir)
            labeled = [r for r in records if r.is_labeled]
            unlabeled = [r for r in records if not r.is_labeled]
        else:
            if self.labeled is None and self.unlabeled is None:
                raise ValueError("TempoDataModule: training needs `labeled` and/or `unlabeled`, or `mixed`")
            labeled = load_records(self.labeled, "labeled", self.data_dir) if self.labeled is not None else []
            unlabeled = load_records(self.unlabeled, "unlabeled", self.data_dir) if self.unlabeled is not None else []

        self._check_overlap(labeled, unlabeled)
        self.heldout_answers = {r.id: r.answer for r in unlabeled if r.answer is not None}
        if self.expose_unlabeled_answers:
            if not self.heldout_answers:
                raise DataError("expose_unlabeled_answers=True, but no unlabeled row carries an answer")
            rank_zero_warn(
                f"ORACLE BASELINE: expose_unlabeled_answers=True puts the ground truth of {len(self.heldout_answers)}"
                f" of {len(unlabeled)} unlabeled rows into training batches (as labeled rows). This is an upper "
                "bound, not test-time training."
            )
        self.labeled_rows = self._to_rows(labeled)
        self.unlabeled_rows = self._to_rows(unlabeled, expose=self.expose_unlabeled_answers)

        rank, world_size = 0, 1
        if self.trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
        self.streams = EMStreams(
            labeled=PromptStream(self.labeled_rows, self.batch_size, self.seed, rank, world_size, name="labeled"),
            unlabeled=PromptStream(self.unlabeled_rows, self.batch_size, self.seed, rank, world_size, name="unlabeled"),
            mixed_labeled_fraction=self.mixed_labeled_fraction,
        )

    def _check_overlap(self, labeled: list[Record], unlabeled: list[Record]) -> None:
        """Refuse (or, with ``allow_overlap``, warn about) D_U questions that are also in D_L."""
        labeled_by_text = {normalized_question(r.problem): r for r in labeled}
        shared: dict[str, tuple[Record, Record]] = {}
        for record in unlabeled:
            key = normalized_question(record.problem)
            if key in labeled_by_text and key not in shared:
                shared[key] = (labeled_by_text[key], record)
        if not shared:
            return
        first_labeled, first_unlabeled = next(iter(shared.values()))
        question = first_labeled.problem if len(first_labeled.problem) <= 120 else first_labeled.problem[:117] + "..."
        pools = ("the mixed dataset's labeled and unlabeled rows" if self.mixed is not None else
                 f"D_L ({self.labeled.source}) and D_U ({self.unlabeled.source})")
        message = (f"{len(shared)} question(s) are in both {pools} (compared case-folded, whitespace collapsed), "
                   f"e.g. labeled row {first_labeled.id!r} and unlabeled row {first_unlabeled.id!r}: {question!r}")
        if not self.allow_overlap:
            raise DataError(f"TempoDataModule: {message}. E-steps would train the critic on the answers of test "
                            "questions. Remove them from one pool, or set allow_overlap: true.")
        rank_zero_warn(f"TempoDataModule (allow_overlap: true): {message}")

    def _to_rows(self, records: list[Record], expose: bool = False) -> list[PromptRow]:
        """Apply the prompt template; an unlabeled row keeps its answer, and its columns beside the question and
        id, only when ``expose`` (the oracle baseline)."""
        rows = []
        for record in records:
            labeled = record.is_labeled or (expose and record.answer is not None)
            rows.append(
                PromptRow(
                    id=record.id,
                    prompt=apply_template(self.prompt_template, record.problem),
                    answer=record.answer if labeled else None,
                    is_labeled=labeled,
                    system_prompt=record.system_prompt,
                    conversational=record.conversational,
                    columns=record.visible_columns(labeled),
                )
            )
        return rows
