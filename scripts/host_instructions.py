"""Instructions per training step of the tiny MLP (approxdrop bench-overhead's [8, 16, 16, 2], batch 4,
p 0.5, one thread): the host cost of a step counted by valgrind's callgrind, which the machine's load
does not change. Each method runs twice under callgrind, with N steps and with 0 steps after the same
warm-up; the difference over N is the cost of one step (process start and warm-up cancel).

    python scripts/host_instructions.py [--steps 1000] [--methods bernoulli row row-g4]

Needs valgrind (Debian: apt-get install valgrind); about a minute per run on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WARMUP = 30
CHILD = """
import sys, torch
torch.set_num_threads(1)
torch.manual_seed(0)
from approxdrop.experiments.bench_overhead import TINY_BATCH, TINY_MLP, mlp_steps
method, steps = sys.argv[1], int(sys.argv[2])
step = mlp_steps(TINY_MLP, TINY_BATCH, 0.5, [method], torch.device("cpu"))[method]
for _ in range({warmup} + steps):
    step()
"""


def instructions(method: str, steps: int, folder: Path) -> int:
    """Instructions callgrind counts for the whole child process running ``steps`` steps of ``method``."""
    out = folder / f"{method}-{steps}.out"
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c"]
    command += [CHILD.format(warmup=WARMUP), method, str(steps)]
    subprocess.run(command, env=env, check=True, capture_output=True)
    totals = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if totals is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(totals.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="steps of the counted run (100 is too noisy)")
    parser.add_argument("--methods", nargs="+", default=["bernoulli", "row", "row-g4"])
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (Debian: apt-get install valgrind)")
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    print(f"| method | instructions / step (M), {args.steps} steps minus 0 | x bernoulli |")
    print("|---|---:|---:|")
    per_step = {}
    with tempfile.TemporaryDirectory() as folder:
        for method in args.methods:
            counted = instructions(method, args.steps, Path(folder)) - instructions(method, 0, Path(folder))
            per_step[method] = counted / args.steps
            base = per_step.get("bernoulli")
            ratio = f"{per_step[method] / base:.2f}" if base else "-"
            print(f"| {method} | {per_step[method] / 1e6:.3f} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
