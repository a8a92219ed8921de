"""Compare TEMPO with the self-rewarding baselines from one start point, seed and budget (offline, tiny model).

    python examples/compare_methods.py                      # TEMPO, TTRL and the frozen-critic ablation, 8 RL steps
    python examples/compare_methods.py --stage1 configs/tiny.yaml,configs/baselines/zero_rl.yaml --steps 16
    python examples/compare_methods.py tempo=configs/tiny.yaml empo=configs/tiny.yaml,configs/baselines/empo.yaml \
        --steps 4

Any ``tempo-pl compare`` option works (``--help``). With no method configs given, the three shipped ones are
compared. Writes ``runs/compare/comparison.{csv,md,png}`` by default.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tempo_pl.pipelines.compare import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
DEFAULT_METHODS = [
    f"tempo={TINY}",
    f"ttrl={TINY},{ROOT / 'configs/baselines/ttrl.yaml'}",  # an overlay over the tiny config: only the method differs
    f"frozen_critic={TINY},{ROOT / 'configs/tempo/frozen_critic.yaml'}",
]


def with_default_methods(argv: list[str]) -> list[str]:
    """``argv`` with the three shipped methods prepended when it names no method config (no positional argument)."""
    takes_value = {"--steps", "--eval-every", "--seed", "--output", "--policy", "--critic", "--stage1",
                   "--stage1-steps", "--eval-set", "--set", "--launcher"}
    positional, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif not arg.startswith("-"):
            positional.append(arg)
    return argv if positional or "-h" in argv or "--help" in argv else DEFAULT_METHODS + argv


if __name__ == "__main__":
    main(with_default_methods(sys.argv[1:]))
