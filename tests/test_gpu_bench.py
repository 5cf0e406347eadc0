"""benchmarks/gpu_bench.py: argument parsing, and the whole script as a CPU dry run (tiny sizes, PyTorch path)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from approxdrop import METHODS

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_defaults_cover_the_issue(bench):
    args = bench.parse_args([])
    assert args.ps == [0.3, 0.5, 0.7] and args.dtype == "float16" and not args.dry_run
    names = [layer.name for layer in bench.layers_for(dry_run=False)]
    assert names[0] == "4096x4096x4096" and len(names) == 7
    assert [(la.n_in, la.n_out, la.drop_in, la.drop_out) for la in bench.mlp_layers((784, 2048, 2048, 10), 128)] == [
        (784, 2048, False, True),
        (2048, 2048, True, True),
        (2048, 10, True, False),
    ]
    for p, (dp, keep) in bench.NOMINAL.items():
        assert abs(1 - keep / dp - p) < 1e-12


def test_work_left_matches_method_md(bench):
    hidden = bench.Layer("h", 1, 8, 8, True, True)
    assert [round(bench.work_left(hidden, p, "row"), 2) for p in (0.3, 0.5, 0.7)] == [0.49, 0.25, 0.09]
    assert bench.work_left(hidden, 0.5, "tile") == 0.5


def test_dry_run_writes_a_table(bench, tmp_path, capsys):
    out = tmp_path / "bench.md"
    assert bench.main(["--dry-run", "--ps", "0.5", "--out", str(out)]) == 0
    text = out.read_text()
    assert "- GPU: none (CPU dry run" in text and "- command: `python " in text and "--dry-run" in text
    kernel_rows = [line for line in text.splitlines() if line.startswith("| 48x40x36") or line.startswith("| 20-16")]
    assert len(kernel_rows) == 4 * 2 + len(METHODS)  # 4 layers x (row, tile) + every MLP method end to end
    for line in kernel_rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert all(c for c in cells), line
    assert "## End to end" in text


def test_refuses_without_gpu_unless_dry_run(bench, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only refusal")
    assert bench.main([]) == 2
    assert "--dry-run" in capsys.readouterr().err
