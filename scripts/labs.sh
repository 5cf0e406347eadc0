#!/usr/bin/env bash
# Set up and open the labs on a fresh machine: a venv with torch (the CPU wheel unless a torch
# is already there), the package with its lab extras, then JupyterLab on labs/.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import torch" 2>/dev/null || "$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q -e ".[lab]"
# JupyterLab refuses to start as root (containers, cloud machines) unless told it may
[ "$(id -u)" -eq 0 ] && set -- --allow-root "$@"
exec "$venv/bin/jupyter" lab labs/ "$@"
