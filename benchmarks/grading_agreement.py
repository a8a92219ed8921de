"""How often ``grade`` agrees with answer-equivalence verdicts, in ``boxed`` and ``lenient`` extraction.

Two measurements:

1. **Prose answers built from MATH-500.** Every row's gold answer is written into six sentence templates (a final
   ``$...$``, "The final answer is $...$. I hope it is correct.", "Answer: ...", ``\\(...\\)``, "x = ...", a plain
   number where the answer is one; "x = ..." only for answers without "=" or text), after a distractor line with
   other math in it; and, reported apart, four templates that write the answer bare, without math delimiters, as
   MATH-500 writes it: the whole response, a line of its own after the distractor, "So the answer is ...", "Thus we
   get ....". Each response is graded against its own gold (expected right) and against the gold of the next row
   (expected wrong, unless the two golds are equivalent by ``is_equivalent``). This measures extraction: the
   equivalence itself is the grader's own.
2. **External verdicts** (``--verdicts FILE.jsonl``, rows ``{"gold", "pred", "expected", "source", "options",
   "gold_as", "pred_as"}``): verdicts written by other projects for their own graders, built from their test tables
   at run time by ``benchmarks/external_verdicts.py`` (nothing of theirs is shipped). ``pred`` is graded as a
   response against ``gold`` (as ``\\boxed{pred}`` where the source's grader took it as a bare answer, ``"pred_as":
   "answer"``, unless ``--pred-as-response``). A gold the source's grader extracts as it extracts the prediction
   (``"gold_as": "response"``: math-verify's suite writes golds as ``$...$``, several boxes, sometimes a whole worked
   solution) has its answer extracted the lenient way first, since ``grade`` takes a bare gold answer; a bare gold
   (``"answer"``) is taken as it is. Rows are reported by subset: development rows (``source`` contains ``--dev``:
   looked at while writing the lenient extractor) and held-back rows; rows judged with math-verify's default notion
   of equivalence and rows written for another (a LaTeX-only extraction of unwrapped text, a coarser rounding,
   set-relation or non-strict comparison, a grader's own normalisation such as a dropped percent sign or an ordered
   comma list, a judge told to accept trivial simplifications only: :func:`_default_options`, its clauses for the
   second source written before its rows were graded). Several files are also reported together.

Reported per mode: agreement (verdicts equal), wrong answers accepted (grade True where the verdict is False), right
answers refused, and the misses. math-verify's own ``parse`` + ``verify`` on the same pairs is given for reference
(``--no-math-verify`` skips it).

Run::

    python benchmarks/grading_agreement.py                                   # prose set only
    python benchmarks/external_verdicts.py math-verify PATH/Math-Verify -o /tmp/math_verify_tests.jsonl
    python benchmarks/grading_agreement.py --verdicts /tmp/math_verify_tests.jsonl --dev test_all.py --show-misses
    python benchmarks/external_verdicts.py nemo-skills PATH/NeMo-Skills -o /tmp/nemo_skills_tests.jsonl  # and
    # hendrycks-math -> /tmp/hendrycks_math_tests.jsonl, simple-evals -> /tmp/simple_evals_examples.jsonl, then
    python benchmarks/grading_agreement.py --no-prose --verdicts /tmp/nemo_skills_tests.jsonl \\
        --verdicts /tmp/hendrycks_math_tests.jsonl --verdicts /tmp/simple_evals_examples.jsonl [--pred-as-response]

Measured figures, with their date and machine: ``docs/results.md``, "Grading".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Optional

from tempo_pl.rewards import grading

DISTRACTOR = "First, $2+3=5$ and 7 more steps give 12.\n"
TEMPLATES = (
    "Therefore the area is ${a}$.",
    "The final answer is ${a}$. I hope it is correct.",
    "Answer: {a}",
    "Putting it together, we get \\({a}\\).",
    "So $x = {a}$.",
)
VALUE_TEMPLATE = "So $x = {a}$."  # only for golds that are values (no equation, no text)
PLAIN_TEMPLATE = "That makes {a} in total."
# the answer written bare, without math delimiters, as MATH-500 writes it: the whole response (no distractor), on its
# own line after the distractor, after "the answer is", after a prose lead with no anchor word
WHOLE_TEMPLATE = "{a}"
BARE_TEMPLATES = ("\n{a}", "So the answer is {a}", "Thus we get {a}.")
DELIMITED, BARE = "delimited", "bare"


def _plain_number(answer: str) -> bool:
    return re.fullmatch(r"-?\d+(?:\.\d+)?", answer) is not None


def prose_pairs(data_dir: Path) -> list[tuple[str, str, bool, str]]:
    """(response, gold, expected, template) rows of the prose set; the distractor line comes first except in the
    whole-response template ``{a}``."""
    rows = [json.loads(line) for line in (data_dir / "math500.jsonl").read_text().splitlines() if line.strip()]
    golds = [r["answer"] for r in rows]
    other = [golds[(i + 1) % len(golds)] for i in range(len(golds))]
    same = grading.are_equivalent(golds, other, timeout=5.0)
    pairs = []
    for gold, wrong, wrong_is_right in zip(golds, other, same):
        templates = [t for t in TEMPLATES if t != VALUE_TEMPLATE or not re.search(r"=|\\text", gold + wrong)]
        templates += [PLAIN_TEMPLATE] if _plain_number(gold) and _plain_number(wrong) else []
        for template in [*templates, WHOLE_TEMPLATE, *BARE_TEMPLATES]:
            lead = "" if template == WHOLE_TEMPLATE else DISTRACTOR
            pairs.append((lead + template.format(a=gold), gold, True, template))
            pairs.append((lead + template.format(a=wrong), gold, bool(wrong_is_right), template))
    return pairs


def template_kind(template: str) -> str:
    """``bare`` for the templates that write the answer without math delimiters, else ``delimited``."""
    return BARE if template == WHOLE_TEMPLATE or template in BARE_TEMPLATES else DELIMITED


def _default_options(options: dict) -> bool:
    """A verdict made with math-verify's default notion of equivalence: its default extraction (LaTeX and plain
    expressions; a LaTeX-only extraction of an answer the grader wrapped whole in ``$...$`` reads the same), 6-digit
    rounding, strict variable comparison, no set-relation comparison, and no normalisation of the grader's own on
    top (``extra_normalization``: a dropped percent sign, an ordered comma list...; ``simplification``: a judge told
    to accept trivial simplifications only). Rows written for another notion judge a different grader. This rule was
    fixed before the rows of the second external source were graded."""
    extraction = sorted(options.get("match_types", ["latex", "expr"]))
    whole = extraction == ["latex"] and bool(options.get("whole_answer_in_math_mode"))
    return ((extraction == ["expr", "latex"] or whole)
            and options.get("precision", 6) == 6 and options.get("strict", True)
            and not options.get("allow_set_relation_comp", False)
            and not options.get("extra_normalization") and not options.get("simplification"))


def math_verify_verdicts(pairs: list[tuple[str, str]]) -> list[bool]:
    """math-verify's own extraction and equivalence (its defaults, the gold parsed the same way, ``verify(gold,
    pred)``), in this process. A bare LaTeX gold is given to it in ``$...$``, as the grading worker does."""
    from math_verify import parse, verify

    out = []
    for pred, gold in pairs:
        try:
            out.append(bool(verify(parse(gold), parse(pred))))
        except Exception:  # noqa: BLE001 - a crash is a "not equal" verdict here
            out.append(False)
    return out


def report(name: str, expected: list[bool], got: list[bool], labels: list[str], show: bool) -> None:
    n = len(expected)
    agree = sum(e == g for e, g in zip(expected, got))
    accepted_wrong = [i for i, (e, g) in enumerate(zip(expected, got)) if g and not e]
    refused_right = [i for i, (e, g) in enumerate(zip(expected, got)) if e and not g]
    print(f"  {name:<22} agreement {agree}/{n} = {100 * agree / max(n, 1):5.1f}%   wrong accepted "
          f"{len(accepted_wrong)}   right refused {len(refused_right)}")
    if show:
        for i in accepted_wrong + refused_right:
            print(f"      {'ACCEPTED WRONG' if i in accepted_wrong else 'refused right '}: {labels[i]}")


def run_set(title: str, pairs: list[tuple[str, str, bool, str, str]], math_verify: bool, show: bool,
            groups: Optional[dict[str, list[int]]] = None) -> None:
    """Grade (response, gold for grade, expected, label, gold as math-verify reads it) rows in both modes, and report
    the rows of each of ``groups`` (name: row indices) from the same verdicts."""
    responses, golds, expected, labels, raw_golds = (list(x) for x in zip(*pairs))
    print(f"\n{title}: {len(pairs)} pairs ({sum(expected)} right, {len(pairs) - sum(expected)} wrong)")

    def report_all(name: str, got: list[bool], show_misses: bool) -> None:
        report(name, expected, got, labels, show_misses)
        for group, rows in (groups or {}).items():
            report(f"  {group}", [expected[i] for i in rows], [got[i] for i in rows], [labels[i] for i in rows],
                   False)

    for mode in ("boxed", "lenient"):
        start = time.perf_counter()
        got = grading.grade_many(responses, golds, timeout=2.0, extraction=mode)
        report_all(f"grade({mode})", got, show and mode == "lenient")
        print(f"  {'':<22} {time.perf_counter() - start:.1f} s")
    if math_verify:
        report_all("math-verify alone", math_verify_verdicts(list(zip(responses, raw_golds))), False)


def verdict_pairs(path: Path, pred_as_response: bool = False) -> list[tuple[tuple, dict]]:
    """(pair for :func:`run_set`, row) of a verdict file. A gold written as a response (``"gold_as": "response"``, the
    default: the source's grader extracts it as it extracts the prediction) has its answer extracted the lenient way
    first; a bare gold (``"answer"``) is given as it is, and to math-verify in ``$...$``, as such graders wrap it. A
    prediction marked ``"pred_as": "answer"`` is graded as ``\\boxed{pred}`` unless ``pred_as_response``."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [key for key in ("gold", "pred", "expected", "source") if key not in row]
        if missing:
            raise SystemExit(f"{path}, row {n}: missing {', '.join(missing)}")
        rows.append(row)
    lenient = grading.EXTRACTION_MODES["lenient"]
    out = []
    for row in rows:
        bare = row.get("gold_as", "response") == "answer"
        gold = row["gold"] if bare else grading.extract_answer(row["gold"], lenient) or row["gold"]
        label = f"{row['source']}: gold={row['gold'][-80:]!r} pred={row['pred'][-120:]!r}"
        # a prediction that the source's grader took as an extracted answer is graded as that answer, not as prose
        as_answer = row.get("pred_as", "response") == "answer" and not pred_as_response
        response = f"\\boxed{{{row['pred']}}}" if as_answer else row["pred"]
        out.append(((response, gold, bool(row["expected"]), label, f"${row['gold']}$" if bare else row["gold"]), row))
    return out


def report_verdicts(name: str, pairs: list[tuple[tuple, dict]], args: argparse.Namespace) -> None:
    """Agreement on the rows of a verdict file (or several), by subset: development / held back (``--dev``), and
    judged with math-verify's default notion of equivalence or another (:func:`_default_options`)."""
    dev = (lambda row: args.dev in row["source"]) if args.dev else (lambda row: False)
    default = lambda row: _default_options(row.get("options") or {})  # noqa: E731
    subsets = [("all rows", lambda row: True),
               ("development rows", dev),
               ("held-back rows", lambda row: not dev(row)),
               ("default settings", default),
               ("other settings", lambda row: not default(row)),
               ("held-back, default settings", lambda row: not dev(row) and default(row))]
    shown: list[tuple[str, list]] = []
    for title, keep in subsets:
        chosen = [pair for pair, row in pairs if keep(row)]
        same = next((earlier for earlier, rows in shown if rows == chosen), None)
        if same is not None:  # a subset equal to one already shown is named, not graded again
            print(f"\n{name}, {title}: the same {len(chosen)} pairs as {same}")
        elif chosen:
            shown.append((title, chosen))
            run_set(f"{name}, {title}", chosen, not args.no_math_verify, args.show_misses and title == "all rows")


def main() -> None:
    default_dir = os.environ.get("TEMPO_PL_DATA_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=default_dir, help="folder holding math500.jsonl")
    parser.add_argument("--verdicts", action="append", default=[], help="external verdict JSONL (repeatable)")
    parser.add_argument("--dev", default=None, help="verdict rows whose source contains this were used in development")
    parser.add_argument("--no-math-verify", action="store_true", help="skip math-verify's own verdicts")
    parser.add_argument("--pred-as-response", action="store_true",
                        help="grade every pred as a response, also those the source's grader took as bare answers")
    parser.add_argument("--no-prose", action="store_true", help="skip the prose set (external verdicts only)")
    parser.add_argument("--show-misses", action="store_true", help="print every lenient disagreement")
    args = parser.parse_args()
    print(f"{len(os.sched_getaffinity(0))} CPUs available; grading workers: {grading.default_processes()}")
    if not args.no_prose:
        prose = prose_pairs(Path(args.data_dir))
        groups: dict[str, list[int]] = {}
        for i, (_, _, _, template) in enumerate(prose):
            groups.setdefault(f"{template_kind(template)} answers", []).append(i)
        for i, (_, _, _, template) in enumerate(prose):
            if template_kind(template) == BARE:
                groups.setdefault(f"  {template!r}", []).append(i)
        run_set("prose answers (MATH-500 golds in sentence templates)",
                [(r, g, e, f"{t!r} gold={g!r} response={r.removeprefix(DISTRACTOR)!r}", f"${g}$")
                 for r, g, e, t in prose], not args.no_math_verify, args.show_misses, groups)
    every: list[tuple[tuple, dict]] = []
    for path in args.verdicts:
        pairs = verdict_pairs(Path(path), args.pred_as_response)
        every += pairs
        report_verdicts(Path(path).name, pairs, args)
    if len(args.verdicts) > 1:
        report_verdicts(f"{len(args.verdicts)} verdict files together", every, args)
    grading.shutdown_workers()


if __name__ == "__main__":
    main()
