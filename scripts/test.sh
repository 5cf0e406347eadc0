#!/usr/bin/env bash
# Set up and run every check on a fresh machine: a venv with the CPU torch wheel, the package
# with its test extras, then ruff (lint + format) and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# torch first, pinned, and the CPU build from PyTorch's index: PyPI's Linux wheel is a CUDA build that
# pulls several GB of CUDA packages (where that index cannot be reached, pip says so and goes on). Only
# torch itself comes from there (--no-deps): its dependencies come from PyPI with the package's install.
"$venv/bin/python" -c "import torch" 2>/dev/null || "$venv/bin/pip" install -q --no-deps torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu
"$venv/bin/pip" install -q -e ".[test]"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/python" -m pytest "$@"
