"""Small dataclasses that flow between the stages of one RL step.

Every stage of the loop (data -> rollout -> scoring -> advantages -> updates) takes and returns these, so each
stage can be tested without Lightning and replaced by a research subclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

import torch
from torch import Tensor


@dataclass
class PromptBatch:
    """A batch of questions as the data module hands them to the loop.

    ``answers[i]`` is the ground truth of a labeled row and always ``None`` for an unlabeled row of a training
    stream: the data module strips D_U answers before they reach this object, which is what keeps the training path
    blind to them. Likewise ``columns[i]`` of an unlabeled row holds only its question and id columns.
    """

    ids: list[str]
    """Stable row identifier (``<source>:<row id>``), used for logging and resume checks."""
    prompts: list[str]
    """The user message: the question with the prompt template applied (the chat template is the tokenizer's)."""
    answers: list[Optional[str]]
    """Ground truth for labeled rows; ``None`` for unlabeled rows."""
    is_labeled: list[bool]
    system_prompts: Optional[list[Optional[str]]] = None
    """The row's own system message (a ``system`` message of its conversation), rendered by the chat template in
    place of ``sampling.prompt_format.system_prompt``; ``None`` for rows without one. Default: none for every row."""
    conversational: Optional[list[bool]] = None
    """Whether the row's question came as a conversation (TRL's ``prompt`` / ``messages``): reward functions then
    get prompts and completions as message lists, as TRL passes them. Default: false for every row."""
    columns: Optional[list[dict]] = None
    """The dataset columns of each row, by name, for reward functions (TRL passes every column as a keyword); an
    unlabeled row's hold only its question and id columns, since any other column may hold its answer. Default:
    none."""

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.system_prompts is None:
            self.system_prompts = [None] * n
        if self.conversational is None:
            self.conversational = [False] * n
        if self.columns is None:
            self.columns = [{} for _ in range(n)]
        for name in ("prompts", "answers", "is_labeled", *ROW_EXTRAS):
            if len(getattr(self, name)) != n:
                raise ValueError(f"PromptBatch.{name} has {len(getattr(self, name))} entries, ids has {n}")
        for i, (labeled, answer) in enumerate(zip(self.is_labeled, self.answers)):
            if not labeled and answer is not None:
                raise ValueError(f"PromptBatch row {self.ids[i]!r} is unlabeled but carries an answer")

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, indices: list[int]) -> "PromptBatch":
        return PromptBatch(**{name: [getattr(self, name)[i] for i in indices] for name in ROW_FIELDS})

    @staticmethod
    def concat(batches: list["PromptBatch"]) -> "PromptBatch":
        return PromptBatch(**{name: [x for b in batches for x in getattr(b, name)] for name in ROW_FIELDS})


ROW_EXTRAS = ("system_prompts", "conversational", "columns")
"""The per-row fields of :class:`PromptBatch` beside ids, prompts, answers and labels (defaulted when not given)."""
ROW_FIELDS = ("ids", "prompts", "answers", "is_labeled", *ROW_EXTRAS)


@dataclass
class Rollout:
    """n sampled responses per prompt, the n of a prompt in consecutive rows (row = group * n + k).

    Shapes: N = prompts * n rows; P = padded prompt length (left-padded); R = padded response length
    (right-padded). ``response_mask`` is 1 on every generated token up to and including EOS.
    """

    prompt_ids: Tensor  # (N, P) long, left-padded
    prompt_mask: Tensor  # (N, P) long
    response_ids: Tensor  # (N, R) long, right-padded
    response_mask: Tensor  # (N, R) float
    texts: list[str]  # decoded responses (special tokens skipped)
    group_ids: Tensor  # (N,) long, index of the prompt within this rollout
    is_labeled: Tensor  # (N,) bool
    truncated: Tensor  # (N,) bool: hit max_new_tokens without EOS
    prompt_batch: PromptBatch  # the prompts, one entry per group
    sampling_logprobs: Optional[Tensor] = None  # (N, R) log-probs the sampler drew with, if the engine keeps them
    extra: dict = field(default_factory=dict)

    @staticmethod
    def empty(prompt_batch: PromptBatch, extra: Optional[dict] = None) -> "Rollout":
        """A rollout with no rows (every prompt dropped, or no group kept), carrying ``prompt_batch`` for logging."""
        nothing = torch.zeros(0, 0, dtype=torch.long)
        return Rollout(
            prompt_ids=nothing, prompt_mask=nothing.clone(), response_ids=nothing.clone(),
            response_mask=torch.zeros(0, 0), texts=[], group_ids=torch.zeros(0, dtype=torch.long),
            is_labeled=torch.zeros(0, dtype=torch.bool), truncated=torch.zeros(0, dtype=torch.bool),
            prompt_batch=prompt_batch, extra=dict(extra or {}),
        )

    @property
    def num_rows(self) -> int:
        return self.response_ids.shape[0]

    @property
    def n_per_prompt(self) -> int:
        return self.num_rows // max(len(self.prompt_batch), 1)

    @property
    def response_lengths(self) -> Tensor:
        return self.response_mask.sum(-1).long()

    def answers_per_row(self) -> list[Optional[str]]:
        return [self.prompt_batch.answers[g] for g in self.group_ids.tolist()]

    def group_rows(self, groups: list[int]) -> Tensor:
        """Row indices of the listed prompt groups, in that order (row = group * n + k)."""
        n = self.n_per_prompt
        return torch.tensor([g * n + k for g in groups for k in range(n)], dtype=torch.long,
                            device=self.group_ids.device)

    def select_groups(self, groups: list[int]) -> "Rollout":
        """Keep the listed prompt groups (in that order), renumbering them 0..len(groups)-1."""
        rows = self.group_rows(groups)
        return self._take(rows, self.prompt_batch.select(groups),
                          torch.arange(len(groups), device=self.group_ids.device).repeat_interleave(self.n_per_prompt))

    def to(self, device) -> "Rollout":
        """The same rollout with every tensor (``extra``'s included) on ``device``."""
        move = lambda t: t.to(device) if isinstance(t, Tensor) else t  # noqa: E731
        return Rollout(**{f.name: move(getattr(self, f.name)) for f in fields(self) if f.name != "extra"},
                       extra={k: move(v) for k, v in self.extra.items()})

    def select_rows(self, rows: Tensor) -> "Rollout":
        """Keep the listed rows; prompts and group ids stay as they are (a group may lose some of its rows)."""
        return self._take(rows, self.prompt_batch, self.group_ids[rows])

    def _take(self, rows: Tensor, prompt_batch: PromptBatch, group_ids: Tensor) -> "Rollout":
        idx = rows.tolist()
        return Rollout(
            prompt_ids=self.prompt_ids[rows],
            prompt_mask=self.prompt_mask[rows],
            response_ids=self.response_ids[rows],
            response_mask=self.response_mask[rows],
            texts=[self.texts[i] for i in idx],
            group_ids=group_ids,
            is_labeled=self.is_labeled[rows],
            truncated=self.truncated[rows],
            prompt_batch=prompt_batch,
            sampling_logprobs=None if self.sampling_logprobs is None else self.sampling_logprobs[rows],
            extra={k: v[rows] if isinstance(v, Tensor) else v for k, v in self.extra.items()},
        )

    @staticmethod
    def concat(rollouts: list["Rollout"], pad_token_id: int) -> "Rollout":
        """Concatenate rollouts, re-padding prompts (left) and responses (right) to a common width.

        ``extra`` keeps the per-row tensors (first dimension = rows) that every part has; other entries are dropped.
        """
        from torch.nn.functional import pad

        if len(rollouts) == 1:
            return rollouts[0]
        p = max(r.prompt_ids.shape[1] for r in rollouts)
        rr = max(r.response_ids.shape[1] for r in rollouts)

        def lpad(t: Tensor, width: int, value) -> Tensor:
            return pad(t, (width - t.shape[1], 0), value=value)

        def rpad(t: Tensor, width: int, value) -> Tensor:
            return pad(t, (0, width - t.shape[1]), value=value)

        offsets, total = [], 0
        for r in rollouts:
            offsets.append(total)
            total += len(r.prompt_batch)
        logps = [r.sampling_logprobs for r in rollouts]
        return Rollout(
            prompt_ids=torch.cat([lpad(r.prompt_ids, p, pad_token_id) for r in rollouts]),
            prompt_mask=torch.cat([lpad(r.prompt_mask, p, 0) for r in rollouts]),
            response_ids=torch.cat([rpad(r.response_ids, rr, pad_token_id) for r in rollouts]),
            response_mask=torch.cat([rpad(r.response_mask, rr, 0) for r in rollouts]),
            texts=[t for r in rollouts for t in r.texts],
            group_ids=torch.cat([r.group_ids + o for r, o in zip(rollouts, offsets)]),
            is_labeled=torch.cat([r.is_labeled for r in rollouts]),
            truncated=torch.cat([r.truncated for r in rollouts]),
            prompt_batch=PromptBatch.concat([r.prompt_batch for r in rollouts]),
            sampling_logprobs=None if any(x is None for x in logps) else torch.cat([rpad(x, rr, 0.0) for x in logps]),
            extra={key: torch.cat([r.extra[key] for r in rollouts]) for key in rollouts[0].extra
                   if all(isinstance(r.extra.get(key), Tensor) and r.extra[key].dim() == 1 for r in rollouts)},
        )


@dataclass
class ForwardStats:
    """What the no-grad pass over a rollout computes, one row per response, aligned with ``response_ids``."""

    old_logprobs: Optional[Tensor]  # (N, R) log pi_old(y_t | x, y_<t); None until the update fills it (on-policy)
    entropy: Optional[Tensor]  # (N, R) policy entropy per token; likewise
    values: Optional[Tensor] = None  # (N, R) critic V(x, y_<t), masked; None when the run has no critic
    self_certainty: Optional[Tensor] = None  # (N, R) KL(Uniform || pi) per token, when a reward asks for it
    ref_logprobs: Optional[Tensor] = None  # (N, R) reference log-probs, when KL to a reference is on

    @staticmethod
    def zeros(rollout: Rollout) -> "ForwardStats":
        """Placeholder statistics for a reward source that reads none of them (the verifier during filtering)."""
        empty = torch.zeros_like(rollout.response_mask, dtype=torch.float)
        return ForwardStats(old_logprobs=empty, entropy=empty)

    def select(self, rows: Tensor) -> "ForwardStats":
        """The statistics of the listed rows."""
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return ForwardStats(
            old_logprobs=pick(self.old_logprobs), entropy=pick(self.entropy), values=pick(self.values),
            self_certainty=pick(self.self_certainty), ref_logprobs=pick(self.ref_logprobs),
        )


PHASE_CODES = {"E": 0, "M": 1, "EM": 2, "RL": 3}


@dataclass(frozen=True)
class StepPlan:
    """What one RL step does; the EMSchedule callback sets it before every step.

    ``phase``: "E" (critic recalibration on D_L), "M" (policy refinement on D_U), "EM" (the reference code's step:
    one mixed batch, critic then policy), "RL" (zero-RL stage 1: D_L only, critic and policy).
    ``source``: which stream the step's prompts come from: "labeled", "unlabeled" or "mixed".
    """

    phase: str
    source: str
    update_critic: bool
    update_policy: bool

    def __post_init__(self) -> None:
        if self.phase not in PHASE_CODES:
            raise ValueError(f"StepPlan.phase must be one of {sorted(PHASE_CODES)}, got {self.phase!r}")
        if self.source not in ("labeled", "unlabeled", "mixed"):
            raise ValueError(f"StepPlan.source must be 'labeled', 'unlabeled' or 'mixed', got {self.source!r}")


@dataclass
class StepRecord:
    """What the last RL step did, for callbacks (sample logging, baseline telemetry) to read in
    ``on_train_batch_end``: the rollout actually trained on, its per-row scores, and the logged metrics."""

    rl_step: int
    plan: StepPlan
    rollout: Rollout
    scores: Tensor
    metrics: dict[str, float]
