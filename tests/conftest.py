"""Shared test settings: hypothesis profile sized for a 2-core CI machine."""

import pytest
from hypothesis import settings
from site_build import build_site

settings.register_profile("approxdrop", max_examples=60, deadline=None)
settings.load_profile("approxdrop")


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
