"""Every lab opens with Colab and Binder badges and an install cell, all pointing at the one repository
address the README names (``Course repository: https://github.com/OWNER/NAME``)."""

from __future__ import annotations

import json
import re

import pytest
from notebook_outputs import LABS

README = LABS.parent / "README.md"
NOTEBOOKS = sorted(LABS.glob("[0-9]*.ipynb"))


def repository() -> tuple[str, str]:
    found = re.findall(r"^Course repository: https://github\.com/([\w.-]+)/([\w.-]+)\b", README.read_text(), re.M)
    assert len(found) == 1, f"the README names the course repository once, found {found}"
    return found[0]


def cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_lab_opens_with_colab_and_binder_badges_for_itself(path):
    owner, name = repository()
    first = cells(path)[0]
    assert first["cell_type"] == "markdown"
    text = "".join(first["source"])
    colab = f"https://colab.research.google.com/github/{owner}/{name}/blob/main/labs/{path.name}"
    binder = f"https://mybinder.org/v2/gh/{owner}/{name}/main?urlpath=lab/tree/labs/{path.name}"
    assert f"(https://colab.research.google.com/assets/colab-badge.svg)]({colab})" in text, text
    assert f"(https://mybinder.org/badge_logo.svg)]({binder})" in text, text
    links = re.findall(r"https://(?:colab\.research\.google\.com/github|mybinder\.org/v2/gh)/[^)\s]+", text)
    assert sorted(links) == sorted([colab, binder]), "no badge points elsewhere"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_installs_where_missing_and_enables_colab_widgets(path):
    owner, name = repository()
    code = next(c for c in cells(path) if c["cell_type"] == "code")
    source = "".join(code["source"])
    assert "import approxdrop" in source and "except ImportError:" in source
    assert f'%pip install -q "approxdrop[lab] @ git+https://github.com/{owner}/{name}"' in source
    assert "output.enable_custom_widget_manager()" in source
    # a no-op in a checkout: nothing installs while approxdrop imports
    assert source.index("import approxdrop") < source.index("except ImportError:") < source.index("%pip")
