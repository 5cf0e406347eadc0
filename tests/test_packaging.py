"""Packaging: the wheel ships the CUDA kernel sources, and an installed wheel finds them.

The top-level ``kernels/`` (fixed by the product card) goes into the wheel as ``approxdrop/_kernels/``
(pyproject.toml). The wheel is built offline from a copy of the checkout, so the checkout gets no
``build/`` folder: once straight from the tree (``pip wheel .``) and once through an sdist (what
``python -m build`` does).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from approxdrop.ops import cuda as kernels
from approxdrop.ops import cuda_build

REPO = Path(__file__).resolve().parent.parent
KERNEL_SOURCES = sorted(p for p in (REPO / "kernels").iterdir() if p.suffix in (".cu", ".cuh", ".h", ".cpp"))
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout}\n{done.stderr}"
    return done


def _copy_checkout(dest: Path) -> Path:
    """What a build reads: pyproject.toml, README.md, approxdrop/ and kernels/ (no caches, no egg-info)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in ("approxdrop", "kernels"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    return dest


def _build_wheel(source: Path, out: Path) -> Path:
    _run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(source)])
    (wheel,) = out.glob("approxdrop-*.whl")
    return wheel


def _wheel_from(kind: str, tmp: Path) -> Path:
    """A wheel built from a copy of the checkout: straight (``tree``) or through an sdist (``sdist``)."""
    source = _copy_checkout(tmp / "src")
    if kind == "sdist":
        code = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
        name = _run([sys.executable, "-c", code, str(tmp / "sdist")], cwd=source).stdout.strip().splitlines()[-1]
        with tarfile.open(tmp / "sdist" / name) as tar:
            tar.extractall(tmp / "unpacked", filter="data")
        (source,) = (tmp / "unpacked").iterdir()
    return _build_wheel(source, tmp / "dist")


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """``build(kind)``: the wheel of that kind, built once per module."""
    built: dict[str, Path] = {}

    def wheel_of(kind: str) -> Path:
        if kind not in built:
            built[kind] = _wheel_from(kind, tmp_path_factory.mktemp(f"wheel-{kind}"))
        return built[kind]

    return wheel_of


@pytest.fixture(params=["tree", "sdist"])
def wheel(request, build) -> Path:
    return build(request.param)


def test_there_are_kernel_sources():
    assert {p.name for p in KERNEL_SOURCES} >= {*kernels.SOURCES, "pattern_index.h", "pattern_gemm.h", "num.cuh"}


def test_checkout_uses_the_top_level_kernels():
    assert kernels.SOURCE_DIR == REPO / "kernels"


def test_wheel_holds_every_kernel_source(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for source in KERNEL_SOURCES:
            packaged = f"approxdrop/_kernels/{source.name}"
            assert packaged in names, f"{source.name} is not in {wheel.name}"
            assert zf.read(packaged) == source.read_bytes(), packaged
    assert not any(name.startswith("kernels/") for name in names), "kernels/ must not be a top-level folder"


def test_wheel_holds_every_module(wheel):
    """The package list in pyproject.toml is explicit: a new subpackage must be added there."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "approxdrop").rglob("*.py")}
    assert modules - names == set(), f"modules missing from {wheel.name}; add their package to pyproject.toml"


def test_installed_wheel_finds_its_kernel_sources(build, tmp_path):
    """A non-editable install (pip --target, first on PYTHONPATH) points SOURCE_DIR at its own copy."""
    target = tmp_path / "target"
    _run([*PIP, "install", "--no-deps", "--no-index", "--target", str(target), str(build("tree"))])
    code = (
        "import json, approxdrop; from approxdrop.ops import cuda_build as cuda; "
        "print(json.dumps({'package': approxdrop.__file__, 'source_dir': str(cuda.SOURCE_DIR), "
        "'missing': cuda._missing_sources(), 'hash': cuda._source_hash()}))"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "APPROXDROP_CACHE_DIR": str(tmp_path / "cache")}
    out = json.loads(_run([sys.executable, "-c", code], cwd=tmp_path, env=env).stdout.strip().splitlines()[-1])
    assert Path(out["package"]).is_relative_to(target), out  # the installed copy, not the checkout
    assert Path(out["source_dir"]) == target / "approxdrop" / "_kernels"
    assert out["missing"] == []
    assert out["hash"] == cuda_build._source_hash()  # the same sources as the checkout's
