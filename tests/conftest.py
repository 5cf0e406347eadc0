"""Shared test settings: hypothesis profile sized for a 2-core CI machine, and the fast tier."""

import pytest
from hypothesis import settings
from site_build import build_site

settings.register_profile("approxdrop", max_examples=60, deadline=None)
settings.load_profile("approxdrop")

# The fast tier, ``pytest -m "not slow"`` (the edit-test loop; CI runs everything), leaves out these
# modules: labs in Jupyter kernels and browsers, the course site, nvcc builds and the emulated kernels,
# the DDP run, wheel builds, the GPU check's dry run, and the few tests that train or compile for long.
SLOW_MODULES = {
    "test_notebooks.py",
    "test_fullsize.py",
    "test_site.py",
    "test_distributed.py",
    "test_emulated_kernels.py",
    "test_emulated_small_kernels.py",
    "test_kernel_resources.py",
    "test_kernels_compile.py",
    "test_gpu_check.py",
    "test_packaging.py",
    "test_readme.py",
    "test_compile_training.py",
    "test_bench_lstm_study.py",
    "test_study.py",
    "test_hf_study_script.py",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in SLOW_MODULES or item.path.parent.name == "browser":
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def _approxdrop_cache_dir(tmp_path_factory):
    """Searched distributions are cached under a temporary directory, never in $HOME."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("APPROXDROP_CACHE_DIR", str(tmp_path_factory.mktemp("approxdrop-cache")))
        yield


@pytest.fixture(scope="session")
def ci_site(tmp_path_factory):
    """The course site built once at CI size (``scripts/site.sh --ci``), for tests/test_site.py and the
    browser suite: one build per test session."""
    out = tmp_path_factory.mktemp("site") / "out"  # a folder that does not exist yet: the script makes it
    build_site(out)
    return out
