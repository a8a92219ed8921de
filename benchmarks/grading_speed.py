"""Grading throughput: pairs per second with one worker process and with all cores.

The pairs come from MATH-500: pair i grades the reference solution of row i mod 500 against the gold answer of row
(i mod 500 + i div 500) mod 500, so the first 500 pairs are right (and decided without parsing: the boxed answer is
the gold string) and the rest are wrong answers that math-verify has to parse and compare, in both argument
orders. Each (answer, gold) pair is distinct, so nothing is served from the per-batch de-duplication; answers and
golds repeat across pairs, as they do in a rollout, so the workers' parse caches do help. Worker start-up is
measured separately and left out of the rates.

A second table times small batches on one worker and on all of them (start-up excluded), the measurement
behind ``MIN_PAIRS_PER_WORKER``.

Run::

    python benchmarks/grading_speed.py                 # 10,000 pairs, data from ../shared/data or $TEMPO_PL_DATA_DIR
    python benchmarks/grading_speed.py --pairs 2000 --timeout 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from tempo_pl.rewards import grading, grading_pool

REPEATS = 3


def build_pairs(data_dir: Path, count: int) -> tuple[list[str], list[str]]:
    with (data_dir / "math500.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    n = len(rows)
    responses = [rows[i % n]["solution"] for i in range(count)]
    golds = [rows[(i % n + i // n) % n]["answer"] for i in range(count)]
    return responses, golds


def timed_grading(responses, golds, processes: int, timeout: float) -> tuple[list[bool], float, float]:
    grading.shutdown_workers()
    start = time.perf_counter()
    grading.start_workers(processes)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    verdicts = grading.grade_many(responses, golds, processes=processes, timeout=timeout)
    return verdicts, time.perf_counter() - start, startup


def small_batches(responses, golds, processes: int, timeout: float) -> None:
    """Seconds per batch of distinct pairs on 1 worker and on ``processes`` workers: the same batch both times,
    each time on freshly started workers (start-up not timed), so that no pair is in a parse cache; best of
    ``REPEATS``."""
    answers = [grading.normalize_answer(grading.extract_answer(r)) for r in responses]
    pairs = list(dict.fromkeys((a, grading.normalize_answer(g)) for a, g in zip(answers, golds)))
    pairs = [(a, g) for a, g in pairs if a != g]  # the ones that need parsing
    print(f"\nsmall batches (distinct pairs, cold parse caches, seconds per batch), 1 vs {processes} workers")
    print(f"{'pairs':>6} {'1 worker':>10} {f'{processes} workers':>11}")
    offset = 0
    for size in (2, 4, 8, 16, 32, 64):
        batch, offset = pairs[offset : offset + size], offset + size
        times = []
        for workers in (1, processes):
            best = float("inf")
            for _ in range(REPEATS):  # the best of a few: other processes share the cores
                grading.shutdown_workers()
                grading.start_workers(workers)
                start = time.perf_counter()
                grading_pool.run_pairs(batch, timeout, workers)
                best = min(best, time.perf_counter() - start)
            times.append(best)
        print(f"{size:>6} {times[0]:>10.3f} {times[1]:>11.3f}")


def main() -> None:
    default_dir = os.environ.get("TEMPO_PL_DATA_DIR") or str(
        Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10_000, help="number of (response, gold) pairs")
    parser.add_argument("--data-dir", default=default_dir, help="folder holding math500.jsonl")
    parser.add_argument("--timeout", type=float, default=2.0, help="per-pair grading bound in seconds")
    parser.add_argument("--processes", type=int, default=grading.default_processes(), help="'all cores' count")
    parser.add_argument("--skip-small", action="store_true", help="skip the small-batch table")
    args = parser.parse_args()

    responses, golds = build_pairs(Path(args.data_dir), args.pairs)
    answers = [grading.extract_answer(r) for r in responses]
    distinct = len(set(zip(answers, golds)))
    print(f"{args.pairs} pairs from MATH-500 ({distinct} distinct), timeout {args.timeout} s, "
          f"{len(os.sched_getaffinity(0))} CPUs available")
    results = {}
    for processes in dict.fromkeys((1, args.processes)):
        verdicts, seconds, startup = timed_grading(responses, golds, processes, args.timeout)
        results[processes] = (verdicts, seconds)
        print(f"{processes:>3} process(es): {args.pairs / seconds:8.1f} pairs/s  ({seconds:.1f} s; "
              f"{sum(verdicts)} correct; worker start-up {startup:.1f} s, not counted)")
    if len(results) == 2:
        (v1, s1), (vn, sn) = results[1], results[args.processes]
        print(f"speed-up with {args.processes} processes: {s1 / sn:.2f}x; same verdicts: {v1 == vn}")
    if not args.skip_small:
        small_batches(responses, golds, args.processes, args.timeout)
    grading.shutdown_workers()


if __name__ == "__main__":
    main()
