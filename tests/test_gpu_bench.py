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
    assert args.autocast == "none" and args.sections == ["kernels", "end-to-end"]
    assert bench.KERNEL_METHODS == ("row", "row G=4", "tile")
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
    assert len(kernel_rows) == 4 * 3 + len(METHODS)  # 4 layers x (row, row G=4, tile) + every MLP method end to end
    for line in kernel_rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert all(c for c in cells), line
        assert cells[6 if len(cells) == 13 else 5] != "n/a", line  # the PyTorch path ran (kernel level, end to end)
    assert "## End to end" in text and "## Dispatch choices" in text and "## Dispatch: first call" not in text
    assert "## Failures\n\n- none" in text


def test_a_failing_cell_is_reported_and_the_rest_still_runs(bench, tmp_path, monkeypatch):
    steps = bench.kernel_steps

    def broken(layer, p, method, *rest):
        dense, op = steps(layer, p, method, *rest)
        if method != "tile":
            return dense, op

        def fails():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

        return dense, fails

    monkeypatch.setattr(bench, "kernel_steps", broken)
    out = tmp_path / "bench.md"
    assert bench.main(["--dry-run", "--ps", "0.3", "--sections", "kernels", "--out", str(out)]) == 1
    text = out.read_text()
    failures = text.split("## Failures")[1]
    assert "48x40x36 tile p=0.3, torch: RuntimeError: CUDA error: an illegal memory access" in failures
    assert failures.count("- ") == 4  # the tile cell of each of the 4 layers
    row = next(line for line in text.splitlines() if line.startswith("| 48x40x36 | row | 0.3"))
    assert row.split("|")[7].strip() != "n/a"  # the other cells were measured (the PyTorch path's)


def test_dry_run_of_every_section_under_autocast(bench, tmp_path, capsys):
    """The dispatch section (first call vs next calls) and a bfloat16 autocast run, as gpu_check.sh runs them."""
    out = tmp_path / "bench.md"
    argv = [
        "--dry-run",
        "--ps",
        "0.7",
        "--autocast",
        "bfloat16",
        "--sections",
        "dispatch",
        "kernels",
        "--out",
        str(out),
    ]
    assert bench.main(argv) == 0
    text = out.read_text()
    assert "autocast bfloat16" in text and "## End to end" not in text
    dispatch_rows = text.split("## Dispatch: first call")[1].split("## Kernel level")[0].splitlines()
    rows = [line for line in dispatch_rows if line.startswith("| 48x40x36") or line.startswith("| 20-16")]
    assert len(rows) == 4 * 2 and all("none (CPU: no dispatch)" in line for line in rows)
    with pytest.raises(SystemExit):
        bench.parse_args(["--sections", "everything"])


def test_kernels_mode_sets_and_restores_the_switch(bench, monkeypatch):
    monkeypatch.setenv(bench.ENV_SWITCH, "cublas")
    with bench.kernels_mode("pattern"):
        assert bench.os.environ[bench.ENV_SWITCH] == "pattern"
    assert bench.os.environ[bench.ENV_SWITCH] == "cublas"
    monkeypatch.delenv(bench.ENV_SWITCH)
    with bench.kernels_mode("auto"):
        pass
    assert bench.ENV_SWITCH not in bench.os.environ


def test_refuses_without_gpu_unless_dry_run(bench, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only refusal")
    assert bench.main([]) == 2
    assert "--dry-run" in capsys.readouterr().err
