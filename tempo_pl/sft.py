"""Supervised warm start: fine-tune the policy on D_L's worked solutions before any RL.

The conversation is built exactly as the rollout engine builds it, so that what SFT teaches is what RL samples:
user = the prompt template applied to the problem, encoded by the engine's own
:func:`~tempo_pl.engines.prompts.encode_prompts` with the same :class:`~tempo_pl.engines.prompts.PromptFormat` (give SFTModule the
``prompt_format`` the RL stages give ``sampling.prompt_format``); assistant = the worked solution
followed by the tokenizer's eos. The loss covers the assistant tokens only. At the end of fit the policy (LoRA
merged) and tokenizer are saved as a Hugging Face directory that the next stage loads with
``ModelSpec(name_or_path=<save_dir>)``.

Example::

    tempo-pl fit --config configs/demo/sft.yaml
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from tempo_pl.data.conversations import assistant_text, system_text, user_text
from tempo_pl.data.readers import DataError, table_from_dataset
from tempo_pl.data.sources import check_columns, read_tables
from tempo_pl.data.templates import apply_template, resolve_template
from tempo_pl.models.lora import save_merged
from tempo_pl.models.builders import ModelSpec, build_policy, build_tokenizer
from tempo_pl.engines.prompts import PromptFormat, check_prompt_format, encode_prompts

IGNORE_INDEX = -100
"""Label of every position the loss skips (prompt and padding), as in ``torch.nn.functional.cross_entropy``."""


def encode_completion(tokenizer: PreTrainedTokenizerBase, completion: str) -> list[int]:
    """Token ids of an assistant reply followed by eos: the tokens a rollout samples, up to and including EOS."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token: SFT could not teach the policy where a reply ends")
    return tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def collate_sft(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    prompt_format: Optional[PromptFormat] = None,
    system_prompts: Optional[Sequence[Optional[str]]] = None,
) -> dict[str, Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (``IGNORE_INDEX`` outside the completions).

    ``labels`` equal ``input_ids`` on completion tokens; the causal-LM loss shifts them, so each completion token is
    predicted from everything before it, the whole prompt included.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"collate_sft got {len(prompts)} prompts but {len(completions)} completions")
    if not prompts:
        raise ValueError("collate_sft got an empty batch")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sequences, labels = [], []
    for prompt_ids, completion in zip(encode_prompts(tokenizer, prompts, prompt_format, system_prompts), completions):
        completion_ids = encode_completion(tokenizer, completion)
        sequences.append(prompt_ids + completion_ids)
        labels.append([IGNORE_INDEX] * len(prompt_ids) + completion_ids)
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    label_ids = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(zip(sequences, labels)):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        label_ids[row, : len(ids)] = torch.tensor(row_labels)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids}


def completion_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross-entropy over the labeled (completion) positions of a batch."""
    shifted_logits = logits[:, :-1].float()
    shifted_labels = labels[:, 1:]
    return nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]), shifted_labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warm-up from ``1/warmup_steps`` to 1, then cosine decay to ``min_lr_ratio`` at
    ``total_steps`` (held there after)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class SFTModule(LightningModule):
    """Supervised fine-tuning of the policy on worked solutions (loss on the assistant tokens only).

    Args:
        model: the policy's :class:`~tempo_pl.models.builders.ModelSpec` (the same spec the RL module takes); its tokenizer
            renders the chat template.
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warm-up steps; then cosine decay over the rest of the fit (``trainer.max_steps``, or
            ``max_epochs`` times the batches per epoch).
        min_lr_ratio: the learning rate at the end of the decay, as a fraction of ``learning_rate``.
        save_dir: where the policy and tokenizer are saved (``save_pretrained``) at the end of fit; None = not saved.
        prompt_format: system prompt, chat-template variables or no chat template, as the RL stages'
            ``sampling.prompt_format`` (they must match, or SFT teaches answers to prompts RL never asks).

    Example::

        module = SFTModule(ModelSpec(config=tiny_qwen3_config(100), tokenizer="builtin:char", seed=0),
                           save_dir="runs/sft/policy")
        Trainer(max_steps=500).fit(module, SFTDataModule("synthetic:labeled"))
        # next stage: ModelSpec(name_or_path="runs/sft/policy")
    """

    def __init__(
        self,
        model: ModelSpec,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.1,
        save_dir: Optional[str] = None,
        prompt_format: Optional[PromptFormat] = None,
    ) -> None:
        super().__init__()
        if learning_rate <= 0:
            raise ValueError(f"SFTModule.learning_rate must be positive, got {learning_rate}")
        if weight_decay < 0:
            raise ValueError(f"SFTModule.weight_decay must be >= 0, got {weight_decay}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"SFTModule.betas must be two numbers in [0, 1), got {betas!r}")
        if warmup_steps < 0:
            raise ValueError(f"SFTModule.warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"SFTModule.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.save_hyperparameters()
        self.model_spec = model
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.betas = tuple(betas)
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.save_dir = save_dir
        self.prompt_format = prompt_format or PromptFormat()
        self.tokenizer = build_tokenizer(model)
        check_prompt_format(self.tokenizer, self.prompt_format, "SFTModule.prompt_format")
        self.policy: Optional[nn.Module] = None

    def configure_model(self) -> None:
        # built here, not in __init__, so that `trainer.init_module()` and sharded strategies see the construction
        if self.policy is None:
            self.policy = build_policy(self.model_spec)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        tensors = collate_sft(self.tokenizer, batch["prompts"], batch["completions"], self.prompt_format,
                              batch.get("system_prompts"))
        tensors = {key: value.to(self.device) for key, value in tensors.items()}
        logits = self.policy(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits
        loss = completion_loss(logits, tensors["labels"])
        self.log("sft/loss", loss, prog_bar=True, batch_size=len(batch["prompts"]))
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            [p for p in self.policy.parameters() if p.requires_grad],
            lr=self.learning_rate,
            weight_decay=self.weight_decay,
            betas=self.betas,
        )
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("SFTModule needs a finite fit (trainer.max_steps or max_epochs) to place its LR decay")
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, self.warmup_steps, int(total), self.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_end(self) -> None:
        if self.save_dir is not None and self.trainer.is_global_zero:
            save_merged(self.policy, self.save_dir, self.tokenizer)  # LoRA merged into a copy
            rank_zero_info(f"SFT policy saved to {self.save_dir} (load it with ModelSpec(name_or_path=...))")


class SFTDataModule(LightningDataModule):
    """Rows with a question and its worked solution, batched as ``{"prompts", "completions"}`` strings.

    The module that trains on them tokenizes (it owns the tokenizer); this one only reads, checks, templates and
    shuffles.

    Args:
        path: any dataset path :mod:`tempo_pl.data.sources` reads: ``"synthetic:labeled?size=2048"``, a ``.jsonl`` /
            ``.parquet`` file, a folder of them, a ``save_to_disk`` folder, or a Hub dataset; in Python also an
            in-memory ``datasets.Dataset`` / ``DatasetDict``.
        problem_field: column of the question; a conversation column (TRL's ``prompt`` or ``messages``) gives its
            user message.
        solution_field: column of the worked solution (the assistant reply to learn); a conversation column (TRL's
            ``completion`` or ``messages``) gives its last, assistant, message.
        prompt_template: a template containing ``{problem}`` or a name from ``tempo_pl.data.templates.TEMPLATES``;
            use the one the RL stages use, or the policy learns to answer a prompt it will never see.
        batch_size: rows per optimizer step.
        limit: keep only the first ``limit`` rows; None = all.
        split: the split of a Hub dataset (local files and registered sources have one split).
        seed: seeds the shuffling of the rows, epoch by epoch.

    Example::

        SFTDataModule("synthetic:labeled?seed=0&size=2048", prompt_template="plain", batch_size=32)
    """

    def __init__(
        self,
        path: str,
        problem_field: str = "problem",
        solution_field: str = "solution",
        prompt_template: str = "boxed",
        batch_size: int = 32,
        limit: Optional[int] = None,
        split: str = "train",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"SFTDataModule.batch_size must be >= 1, got {batch_size}")
        if limit is not None and limit < 1:
            raise ValueError(f"SFTDataModule.limit must be >= 1 or None, got {limit}")
        self.path = path
        self.problem_field = problem_field
        self.solution_field = solution_field
        self.prompt_template = resolve_template(prompt_template)
        self.batch_size = batch_size
        self.limit = limit
        self.split = split
        self.seed = seed
        self.pairs: list[tuple[str, str, Optional[str]]] = []

    def setup(self, stage: str) -> None:
        if not self.pairs:
            self.pairs = self.load_pairs()

    def load_pairs(self) -> list[tuple[str, str, Optional[str]]]:
        """``(templated prompt, solution, the row's own system message or None)`` of every row; raises
        :class:`DataError` naming the bad rows and field."""
        pairs, problems = [], []
        if isinstance(self.path, str):
            tables = read_tables(self.path, self.split)
        else:
            tables = [table_from_dataset(self.path, self.split, f"in-memory {type(self.path).__name__}")]
        for table in tables:
            check_columns(table, {"problem_field": self.problem_field, "solution_field": self.solution_field},
                          "SFT dataset")
            for index, row in enumerate(table.rows):
                where = table.where(index, row.get("id", "?"))
                try:
                    problem = _text_field(row, self.problem_field, user_text)
                    solution = _text_field(row, self.solution_field, assistant_text)
                    system = system_text(row[self.problem_field])
                except ValueError as error:
                    problems.append(f"{where}: {error}")
                    continue
                pairs.append((apply_template(self.prompt_template, problem), solution, system))
        name = self.path if isinstance(self.path, str) else f"in-memory {type(self.path).__name__}"
        if problems:
            shown = "\n  ".join(problems[:5])
            raise DataError(f"SFT dataset {name!r}: {len(problems)} malformed row(s):\n  {shown}")
        if not pairs:
            raise DataError(f"SFT dataset {name!r} has no rows")
        return pairs[: self.limit] if self.limit is not None else pairs

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.pairs, batch_size=self.batch_size, shuffle=True, generator=generator, collate_fn=_collate_strings
        )


def _text_field(row: dict, field: str, from_conversation) -> str:
    """A non-empty string column, or the text ``from_conversation`` takes from a conversation column."""
    value = row.get(field)
    if value is None:
        raise ValueError(f"field {field!r}: missing")
    if isinstance(value, (list, tuple)):
        try:
            value = from_conversation(value)
        except ValueError as error:
            raise ValueError(f"field {field!r}: {error}") from None
    if not isinstance(value, str) or not value.strip():
        shown = repr(value) if isinstance(value, str) else type(value).__name__
        raise ValueError(f"field {field!r}: expected a non-empty string, got {shown}")
    return value


def _collate_strings(pairs: list[tuple[str, str, Optional[str]]]) -> dict[str, list]:
    return {"prompts": [p for p, _, _ in pairs], "completions": [c for _, c, _ in pairs],
            "system_prompts": [s for _, _, s in pairs]}
