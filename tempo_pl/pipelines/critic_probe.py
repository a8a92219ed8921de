"""``tempo-pl critic-probe``: how a critic values written-out wrong answers to a synthetic-task run's questions, and
how likely a policy is to write them.

::

    tempo-pl critic-probe runs/demo/tempo --critic runs/demo/zero_rl/hf/critic --policy runs/demo/zero_rl/hf/policy

For every question of one evaluation of the run (``<RUN_DIR>/eval/<set>_step<N>.jsonl``, its prompts as the run
rendered them) it writes the responses of :func:`crafted_responses`: the full computation with and without the
``verified`` line, every early stop with and without it and, on a trap-form chain, the shortcut with and without it.
Each is read by the critic as evaluation reads a sample (the value at the response's last token) and by the policy
(the log-probability of the whole response, end token included, at temperature 1). Per response kind it gives the
critic's mean value, the share of questions on which it values that wrong response above the better-valued of the two
right ones and the mean margin by which it does (a reward the policy could game), and the policy's mean log-probability (whether sampling would ever
write it: a sample of log-probability -9 is about one in 8000). It prints a Markdown table and writes
``<output>/critic_probe_<set>_step<N>.csv``. docs/results.md uses it on the drift scenario's stage-1 models.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.nn.functional import pad

from tempo_pl.algorithms.advantages import last_token_value
from tempo_pl.data.synthetic import is_trap_form, parse_problem, render_solution
from tempo_pl.models.builders import CriticSpec, ModelSpec, build_critic, build_policy, build_tokenizer
from tempo_pl.models.forward import critic_response_values, policy_response_stats

RIGHT_KINDS = ("full", "full + verified")
"""The crafted responses that are right: every step computed, with or without the ``verified`` line."""


def crafted_responses(start: int, ops: list[tuple[str, int]]) -> dict[str, str]:
    """The responses the probe writes for one problem, by kind: ``full`` and every ``early stop after k`` (k = 1 to
    the number of operations less one, the running value boxed) and, for a trap-form chain, ``shortcut``; each
    also ``+ verified``. Only the two full ones are right."""
    responses = {}
    for verified in (False, True):
        suffix = " + verified" if verified else ""
        responses[f"full{suffix}"] = render_solution(start, ops, verified=verified)[0]
        for k in range(1, len(ops)):
            responses[f"early stop after {k}{suffix}"] = render_solution(start, ops[:k], verified=verified)[0]
        if is_trap_form(ops):
            responses[f"shortcut{suffix}"] = render_solution(start, ops, shortcut=True, verified=verified)[0]
    return responses


@torch.no_grad()
def read_responses(critic, policy, tokenizer, prompt: str, responses: Sequence[str]) -> tuple[list[float], list[float]]:
    """The critic's last-token value and the policy's log-probability of each response to one prompt (the prompt's
    rendered text, tokenized as it is; each response ends with the end token)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in responses]
    width = max(map(len, encoded))
    response_ids = torch.stack([pad(torch.tensor(ids), (0, width - len(ids)), value=tokenizer.pad_token_id)
                                for ids in encoded])
    response_mask = torch.stack([pad(torch.ones(len(ids)), (0, width - len(ids))) for ids in encoded])
    input_ids = torch.cat([torch.tensor(prompt_ids).expand(len(encoded), -1), response_ids], dim=1)
    attention_mask = torch.cat([torch.ones(len(encoded), len(prompt_ids), dtype=torch.long),
                                response_mask.long()], dim=1)
    values = last_token_value(critic_response_values(critic, input_ids, attention_mask, response_mask), response_mask)
    logprobs = policy_response_stats(policy, input_ids, attention_mask, response_ids, response_mask,
                                     with_entropy=False)["logprobs"].sum(-1)
    return values.tolist(), logprobs.tolist()


@dataclass
class KindReading:
    """What the probe read for one kind of response over the questions that have it."""

    values: list[float] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    """Each question's value of this response less that of its better-valued right response."""
    logprobs: list[float] = field(default_factory=list)

    @property
    def questions(self) -> int:
        return len(self.values)

    @property
    def above_right(self) -> float:
        """The share of questions on which the critic values this response above the right answer."""
        return _mean([float(margin > 0) for margin in self.margins])


def probe_questions(records: Sequence[dict], critic, policy, tokenizer) -> dict[str, KindReading]:
    """Every crafted response of every record's question, read by the critic and the policy, by kind."""
    readings: dict[str, KindReading] = {}
    for number, record in enumerate(records, start=1):
        parsed = parse_problem(record.get("prompt") or "")
        if parsed is None:
            raise ValueError(f"critic-probe: record {number} ({record.get('question_id')!r}) holds no synthetic "
                             f"problem ('Start with N. ...') in its prompt; the probe writes the synthetic task's "
                             f"solutions")
        responses = crafted_responses(*parsed)
        values, logprobs = read_responses(critic, policy, tokenizer, record["prompt"], list(responses.values()))
        by_kind = dict(zip(responses, zip(values, logprobs)))
        best_right = max(by_kind[kind][0] for kind in RIGHT_KINDS)
        for kind, (value, logprob) in by_kind.items():
            reading = readings.setdefault(kind, KindReading())
            reading.values.append(value)
            reading.margins.append(value - best_right)
            reading.logprobs.append(logprob)
    return readings


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _wrong_only(kind: str, number: float, spec: str) -> str:
    return "-" if kind in RIGHT_KINDS else format(number, spec)


def markdown_table(readings: dict[str, KindReading]) -> str:
    lines = ["| response | right | questions | critic's mean value | valued above the right answer | "
             "mean margin over it | policy's mean log-prob |", "|---|---|---|---|---|---|---|"]
    for kind, reading in readings.items():
        lines.append(f"| {kind} | {'yes' if kind in RIGHT_KINDS else 'no'} | {reading.questions} | "
                     f"{_mean(reading.values):+.2f} | {_wrong_only(kind, reading.above_right, '.2f')} | "
                     f"{_wrong_only(kind, _mean(reading.margins), '+.2f')} | {_mean(reading.logprobs):.1f} |")
    return "\n".join(lines)


def critic_probe(run_dir: Path, critic_path: str, policy_path: str, eval_set: str = "unlabeled", step: int = 0,
                 questions: Optional[int] = None, output: Optional[Path] = None) -> Path:
    """Probe the critic and the policy on one evaluation's questions; print the table, write and return the CSV."""
    path = Path(run_dir) / "eval" / f"{eval_set}_step{step:06d}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"critic-probe: no evaluation {path} (--eval-set and --step name one the run wrote)")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = records[:questions] if questions is not None else records
    tokenizer = build_tokenizer(ModelSpec(name_or_path=policy_path))
    policy = build_policy(ModelSpec(name_or_path=policy_path)).eval()
    critic = build_critic(CriticSpec(name_or_path=critic_path)).eval()
    readings = probe_questions(records, critic, policy, tokenizer)
    print(f"\n{run_dir} ({eval_set}, RL step {step}, {len(records)} questions); critic {critic_path}, "
          f"policy {policy_path}\n", flush=True)
    print(markdown_table(readings), flush=True)
    out = Path(output if output is not None else run_dir) / f"critic_probe_{eval_set}_step{step:06d}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["response", "right", "questions", "mean_value", "above_right_share", "mean_margin",
                         "mean_logprob"])
        for kind, reading in readings.items():
            writer.writerow([kind, kind in RIGHT_KINDS, reading.questions, f"{_mean(reading.values):.4f}",
                             *(("", "") if kind in RIGHT_KINDS else
                               (f"{reading.above_right:.4f}", f"{_mean(reading.margins):.4f}")),
                             f"{_mean(reading.logprobs):.4f}"])
    print(f"\n[critic-probe] {out}", flush=True)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tempo-pl critic-probe",
        description="Write the synthetic task's right and wrong solutions (full, early stops, shortcut; with or "
                    "without the verified line) to one evaluation's questions; give the critic's mean value of each, "
                    "how often it values a wrong one above the right answer, and the policy's log-probability.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="a run's log folder (its eval/<set>_step<N>.jsonl has the prompts)")
    p.add_argument("--critic", required=True, help="the critic to probe: a Hugging Face folder (e.g. <run>/hf/critic)")
    p.add_argument("--policy", required=True, help="the policy whose log-probabilities to read (and its tokenizer)")
    p.add_argument("--eval-set", default="unlabeled", help="the evaluation set whose questions to use (default: D_U)")
    p.add_argument("--step", type=int, default=0, help="the RL step of that evaluation (default 0)")
    p.add_argument("--questions", type=int, help="the first N questions only (default: all)")
    p.add_argument("--output", help="folder of the CSV (default: RUN_DIR)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Entry point of ``tempo-pl critic-probe`` (``cli.main`` dispatches here)."""
    ns = build_parser().parse_args(None if argv is None else list(argv))
    return critic_probe(Path(ns.run), ns.critic, ns.policy, ns.eval_set, ns.step, ns.questions,
                        None if ns.output is None else Path(ns.output))


if __name__ == "__main__":  # pragma: no cover
    main()
