"""A stand-in training script for the sbatch template tests: `step=N loss=X` lines, no imports.

It takes the options the templates pass (`--lr`, `--epochs`, `--seed`, ...) and ignores the
ones it does not know, as a real script would take its own. Each epoch is four steps of
`--step-seconds`; the loss at step N is 1 / (N + 1).
"""

from __future__ import annotations

import argparse
import time

STEPS_PER_EPOCH = 4


def main() -> None:
    """Print one metric line per step."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-seconds", type=float, default=0.25)
    args, _ = parser.parse_known_args()
    print(f"training with lr {args.lr} and seed {args.seed}", flush=True)
    for step in range(args.epochs * STEPS_PER_EPOCH):
        time.sleep(args.step_seconds)
        print(f"step={step} loss={1 / (step + 1):.4f}", flush=True)


if __name__ == "__main__":
    main()
