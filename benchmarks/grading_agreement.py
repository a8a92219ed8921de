"""How often ``grade`` agrees with answer-equivalence verdicts, in ``boxed`` and ``lenient`` extraction.

Two measurements:

1. **Prose answers built from MATH-500.** Every row's gold answer is written into six sentence templates (a final
   ``$...$``, "The final answer is $...$. I hope it is correct.", "Answer: ...", ``\\(...\\)``, "x = ...", a plain
   number where the answer is one; "x = ..." only for answers without "=" or text), after a distractor line with other math in it. Each response is graded against
   its own gold (expected right) and against the gold of the next row (expected wrong, unless the two golds are
   equivalent by ``is_equivalent``). This measures extraction: the equivalence itself is the grader's own.
2. **External verdicts** (``--verdicts FILE.jsonl``, rows ``{"gold", "pred", "expected", "source"}``): verdicts
   written by other projects for their own graders. ``pred`` is graded as a response against ``gold``. The rows
   whose ``source`` contains ``--dev`` were looked at while writing the lenient extractor; the others are held
   back and reported apart, and so are the rows judged with math-verify's default settings (rows written for a
   LaTeX-only extraction, a coarser rounding or set-relation comparison judge a different grader; the row's
   ``options`` say which). The file is not shipped: build it from the test tables of the project you compare with.
   Such suites write the gold as they write a response (``$...$``, several boxes, sometimes a whole worked solution)
   and extract it the same way; here the gold's answer is extracted the lenient way first (a bare gold is left as
   it is), since ``grade`` takes a bare gold answer.

Reported per mode: agreement (verdicts equal), wrong answers accepted (grade True where the verdict is False), right
answers refused, and the misses. math-verify's own ``parse`` + ``verify`` on the same pairs is given for reference
(``--no-math-verify`` skips it).

Run::

    python benchmarks/grading_agreement.py                                   # prose set only
    python benchmarks/grading_agreement.py --verdicts ../shared/data/grading_verdicts/math_verify_tests.jsonl \\
        --dev test_all.py --show-misses
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tempo_pl.rewards import grading  # noqa: E402

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


def _plain_number(answer: str) -> bool:
    return re.fullmatch(r"-?\d+(?:\.\d+)?", answer) is not None


def prose_pairs(data_dir: Path) -> list[tuple[str, str, bool, str]]:
    """(response, gold, expected, template) rows of the prose set."""
    rows = [json.loads(line) for line in (data_dir / "math500.jsonl").read_text().splitlines() if line.strip()]
    golds = [r["answer"] for r in rows]
    other = [golds[(i + 1) % len(golds)] for i in range(len(golds))]
    same = grading.are_equivalent(golds, other, timeout=5.0)
    pairs = []
    for gold, wrong, wrong_is_right in zip(golds, other, same):
        templates = [t for t in TEMPLATES if t != VALUE_TEMPLATE or not re.search(r"=|\\text", gold + wrong)]
        templates += [PLAIN_TEMPLATE] if _plain_number(gold) and _plain_number(wrong) else []
        for template in templates:
            pairs.append((DISTRACTOR + template.format(a=gold), gold, True, template))
            pairs.append((DISTRACTOR + template.format(a=wrong), gold, bool(wrong_is_right), template))
    return pairs


def _default_options(options: dict) -> bool:
    """A verdict made with math-verify's default extraction (LaTeX and plain expressions), precision and set
    handling: rows written for a LaTeX-only extraction, a coarser rounding or set-relation comparison judge a
    different grader."""
    return (sorted(options.get("match_types", ["latex", "expr"])) == ["expr", "latex"]
            and options.get("precision", 6) == 6 and not options.get("allow_set_relation_comp", False))


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


def run_set(title: str, pairs: list[tuple[str, str, bool, str, str]], math_verify: bool, show: bool) -> None:
    """Grade (response, gold for grade, expected, label, gold as math-verify reads it) rows in both modes."""
    responses, golds, expected, labels, raw_golds = (list(x) for x in zip(*pairs))
    print(f"\n{title}: {len(pairs)} pairs ({sum(expected)} right, {len(pairs) - sum(expected)} wrong)")
    for mode in ("boxed", "lenient"):
        start = time.perf_counter()
        got = grading.grade_many(responses, golds, timeout=2.0, extraction=mode)
        report(f"grade({mode})", expected, got, labels, show and mode == "lenient")
        print(f"  {'':<22} {time.perf_counter() - start:.1f} s")
    if math_verify:
        report("math-verify alone", expected, math_verify_verdicts(list(zip(responses, raw_golds))), labels, False)


def main() -> None:
    default_dir = os.environ.get("TEMPO_PL_DATA_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=default_dir, help="folder holding math500.jsonl")
    parser.add_argument("--verdicts", action="append", default=[], help="external verdict JSONL (repeatable)")
    parser.add_argument("--dev", default=None, help="verdict rows whose source contains this were used in development")
    parser.add_argument("--no-math-verify", action="store_true", help="skip math-verify's own verdicts")
    parser.add_argument("--show-misses", action="store_true", help="print every lenient disagreement")
    args = parser.parse_args()
    print(f"{len(os.sched_getaffinity(0))} CPUs available; grading workers: {grading.default_processes()}")
    prose = prose_pairs(Path(args.data_dir))
    run_set("prose answers (MATH-500 golds in sentence templates)",
            [(r, g, e, f"{t!r} gold={g!r} response={r[len(DISTRACTOR):]!r}", f"${g}$") for r, g, e, t in prose],
            not args.no_math_verify, False)
    for path in args.verdicts:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        lenient = grading.EXTRACTION_MODES["lenient"]
        golds = [grading.extract_answer(r["gold"], lenient) or r["gold"] for r in rows]
        pairs = [(r["pred"], gold, bool(r["expected"]), f"{r['source']}: gold={r['gold'][-80:]!r} pred={r['pred'][-120:]!r}",
                  r["gold"]) for r, gold in zip(rows, golds)]
        if args.dev:
            dev = [p for p, r in zip(pairs, rows) if args.dev in r["source"]]
            held = [p for p, r in zip(pairs, rows) if args.dev not in r["source"]]
            run_set(f"{Path(path).name}, development rows ({args.dev})", dev, not args.no_math_verify,
                    args.show_misses)
            run_set(f"{Path(path).name}, held-back rows", held, not args.no_math_verify, args.show_misses)
        run_set(f"{Path(path).name}, all rows", pairs, not args.no_math_verify, args.show_misses)
        default = [p for p, r in zip(pairs, rows) if _default_options(r.get("options") or {})]
        run_set(f"{Path(path).name}, rows judged with math-verify's default settings", default,
                not args.no_math_verify, args.show_misses)
    grading.shutdown_workers()


if __name__ == "__main__":
    main()
