"""scripts/gpu_check.sh: its CPU dry run (tiny sizes, PyTorch path) writes every table and a summary, so the
script that will run on a lent GPU cannot rot; failed and out-of-budget steps are recorded, not fatal."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"
TABLES = ("dispatch.md", "bench_fp32.md", "bench_tf32.md", "bench_bf16_autocast.md", "lstm.md", "overhead.md")
STEPS = (
    "machine",
    "CUDA tests (and the build)",
    "build",
    "dispatch first use",
    "bench fp32",
    "bench fp32 TF32",
    "bench bf16 autocast",
    "LSTM bench",
    "host overhead",
    "graphed steps",
    "sanitizer workload",
    "compute-sanitizer memcheck",
    "compute-sanitizer racecheck",
    "compute-sanitizer synccheck",
)

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash")


def run_check(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environ, timeout=600)


def steps(summary: str) -> dict[str, str]:
    """Step name -> status, from the summary's step table."""
    rows = [line.split("|")[1:-1] for line in summary.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): cells[1].strip() for cells in rows[1:]}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check_out")
    done = run_check(out, "--dry-run")
    return out, done


def test_dry_run_passes_and_writes_every_table_and_a_summary(dry_run):
    out, done = dry_run
    assert done.returncode == 0, done.stdout + done.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted((*TABLES, "summary.md", "logs.txt"))
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir())  # what the device tool brings back
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# approxdrop GPU check")
    for line in (
        "- GPU: none (CPU dry run",
        "- torch ",
        "- nvcc: ",
        "- date: ",
        "- command: `scripts/gpu_check.sh --dry-run`",
    ):
        assert line in summary, line
    status = steps(summary)
    assert tuple(status) == STEPS
    gpu_only = {"CUDA tests (and the build)", "build"} | {s for s in STEPS if s.startswith("compute-sanitizer")}
    assert {name for name, st in status.items() if st == "skipped"} == gpu_only
    assert all(status[name] == "ok" for name in STEPS if name not in gpu_only)
    reasons = [line for line in summary.splitlines() if "| skipped |" in line]
    assert all("dry run: " in line and "needs a GPU" in line for line in reasons)


def test_dry_run_tables_carry_the_machine_and_the_command(dry_run):
    out, _ = dry_run
    for name in TABLES:
        text = (out / name).read_text()
        assert "- GPU: none" in text and "- date: " in text and "- command: `" in text, name
        assert re.search(r"^\|---", text, re.MULTILINE), f"{name} has no table"
    assert "## Kernel level" in (out / "bench_fp32.md").read_text()
    assert "--tf32" in (out / "bench_tf32.md").read_text()
    assert "autocast bfloat16" in (out / "bench_bf16_autocast.md").read_text()
    assert "## Dispatch: first call" in (out / "dispatch.md").read_text()
    assert "| small | 0.5 | row |" in (out / "lstm.md").read_text()
    host = (out / "overhead.md").read_text()
    assert "| mlp | row-g4 |" in host and "## Eager against graphed steps" in host
    assert "| CPU rule | measured here |" in host  # the executor table: on a GPU, what auto measures there
    assert "| row static compiled |" in host
    assert "===== bench fp32: " in (out / "logs.txt").read_text()


def test_failed_steps_are_recorded_and_the_rest_still_runs(tmp_path):
    """A Python that fails every command: each step is tried, recorded as failed, and the exit status is 1."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'broken python' >&2\nexit 3\n")
    fake.chmod(0o755)
    done = run_check(tmp_path / "out", "--dry-run", PYTHON=str(fake))
    assert done.returncode == 1, done.stdout + done.stderr
    status = steps((tmp_path / "out" / "summary.md").read_text())
    assert status["machine"] == "FAILED"
    assert status["bench fp32"] == "FAILED (exit 3)" and status["LSTM bench"] == "FAILED (exit 3)"
    assert status["sanitizer workload"] == "FAILED (exit 3)"


def test_steps_stop_at_the_budget(tmp_path):
    done = run_check(tmp_path / "out", "--dry-run", GPU_CHECK_BUDGET="0")
    assert done.returncode == 1 and done.stderr == "", done.stderr
    status = steps((tmp_path / "out" / "summary.md").read_text())
    assert status["bench fp32"] == "FAILED (not run)" and status["LSTM bench"] == "FAILED (not run)"
    assert "budget was spent" in (tmp_path / "out" / "summary.md").read_text()


def test_usage_errors(tmp_path):
    done = run_check(tmp_path / "out", "--fast")
    assert done.returncode == 2 and "usage" in done.stderr


def test_without_a_gpu_it_asks_for_the_dry_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the refusal on a machine without a GPU")
    done = run_check(tmp_path / "out")
    assert done.returncode == 2 and "--dry-run" in done.stderr
