"""Run every CUDA kernel of approxdrop once, at small odd sizes, and check it against the PyTorch path.

scripts/gpu_check.sh runs this under compute-sanitizer (memcheck, racecheck, synccheck), so each
kernel is launched a few times only: the row and tile GEMMs (forward, grad-input, grad-weight) and the
column sum, in float32 and float64 (shared-memory kernel) and float16 and bfloat16 (WMMA kernel), with
partial blocks, wrapping patterns and a backward without grad_x. The kernels are forced
(APPROXDROP_KERNELS=pattern). Exit status 1 when the kernels cannot be built or an output disagrees
with the PyTorch implementation.

    python scripts/sanitizer_workload.py            # on a GPU
    python scripts/sanitizer_workload.py --dry-run  # on the CPU, PyTorch path only (keeps the script working)
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from approxdrop.ops import cuda as kernels
from approxdrop.ops import row_linear, row_linear_backward, tile_linear, tile_linear_backward
from approxdrop.ops.dispatch import ENV_SWITCH, outputs_agree
from approxdrop.patterns import RowPattern, TilePattern

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
ROW_CASES = [  # (in pattern, out pattern, rows, n_out, n_in): partial 64-blocks, runs that wrap, everything kept
    (RowPattern(3, 2, 2), RowPattern(2, 1, 1), 37, 67, 45),
    (RowPattern(1, 0, 1), RowPattern(1, 0, 1), 5, 9, 7),
]
TILE_CASES = [(TilePattern(3, 1, 16, 2), 37, 67, 45), (TilePattern(4, 3, 8, 1), 5, 20, 33)]


def calls(device: torch.device, dtype: torch.dtype):
    """(name, op, args) of each call: every kernel, with and without bias and grad_x."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device, dtype)

    for in_p, out_p, rows, n_out, n_in in ROW_CASES:
        for groups in (1, 3):  # one group (the paper's), and groups with other offsets of the same class
            ins = [in_p.offset] + [(in_p.offset + g) % in_p.dp for g in range(1, groups)]
            outs = [out_p.offset] + [(out_p.offset + 2 * g) % out_p.dp for g in range(1, groups)]
            ints = (in_p.dp, in_p.keep, ins, out_p.dp, out_p.keep, outs)
            xs = [rand(rows, RowPattern(in_p.dp, o, in_p.keep).kept_count(n_in)) for o in ins]
            gys = [rand(rows, RowPattern(out_p.dp, o, out_p.keep).kept_count(n_out)) for o in outs]
            w, b = rand(n_out, n_in), rand(n_out)
            what = f"{in_p} {out_p} G={groups} {rows}x{n_out}x{n_in}"
            blocks = row_linear(xs, w, b, *ints)[1]  # what backward reads
            yield f"row_linear {what}", row_linear, (xs, w, b, *ints)
            yield f"row_linear_backward {what}", row_linear_backward, (gys, xs, w, blocks, *ints, True)
            yield f"row_linear_backward no grad_x {what}", row_linear_backward, (gys, xs, w, blocks, *ints, False)
    for p, rows, n_out, n_in in TILE_CASES:
        ints = (p.dp, p.keep, p.tile, [p.offset])
        x, w, gy = rand(rows, n_in), rand(n_out, n_in), rand(rows, n_out)
        what = f"{p} {rows}x{n_out}x{n_in}"
        yield f"tile_linear {what}", tile_linear, (x, w, None, *ints)
        yield f"tile_linear_backward {what}", tile_linear_backward, (gy, x, w, *ints, True)
        groups = (p.dp, p.keep, p.tile, [p.offset, (p.offset + 1) % p.dp, p.offset])  # 3 groups along the rows
        yield f"tile_linear G=3 {what}", tile_linear, (x, w, None, *groups)
        yield f"tile_linear_backward G=3 {what}", tile_linear_backward, (gy, x, w, *groups, True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="on the CPU (PyTorch path): checks the script only")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda":
        os.environ[ENV_SWITCH] = "pattern"
        if kernels.load() is None:
            print(f"sanitizer_workload: the kernels did not build: {kernels.status().reason}", file=sys.stderr)
            return 1
    failures = 0
    for dtype in DTYPES:
        for name, op, op_args in calls(device, dtype):
            got = op(*op_args)
            want = op._init_fn(*op_args)  # the PyTorch implementation
            problem = outputs_agree(got, want)
            failures += problem is not None
            print(f"{'FAIL' if problem else 'ok  '} {str(dtype)[6:]:8} {name}" + (f": {problem}" if problem else ""))
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"sanitizer_workload: {failures} disagreement(s) with the PyTorch implementation on {device}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
