#!/usr/bin/env bash
# Set up and open the labs on a fresh machine: a venv with torch (the CPU wheel unless a torch
# is already there), the package with its lab extras, then JupyterLab on labs/.
# JupyterLab's news popup ("Would you like to get notified about official Jupyter news?") and its
# update check stay off: binder/overrides.json is merged into the venv's JupyterLab settings
# (<venv>/share/jupyter/lab/settings/overrides.json, the defaults a user can still change), and the
# server fetches no news feed (--LabApp.news_url=None).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import torch" 2>/dev/null || "$venv/bin/pip" install -q --no-deps torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu
"$venv/bin/pip" install -q -e ".[lab]"
settings="$venv/share/jupyter/lab/settings"
mkdir -p "$settings"
"$venv/bin/python" - binder/overrides.json "$settings/overrides.json" <<'MERGE'
"""Merge the course's JupyterLab overrides into the venv's (keeping any other plugin's settings)."""
import json
import sys
from pathlib import Path

ours, theirs = (Path(a) for a in sys.argv[1:])
merged = json.loads(theirs.read_text()) if theirs.is_file() else {}
for plugin, values in json.loads(ours.read_text()).items():
    merged.setdefault(plugin, {}).update(values)
theirs.write_text(json.dumps(merged, indent=2) + "\n")
MERGE
# JupyterLab refuses to start as root (containers, cloud machines) unless told it may
[ "$(id -u)" -eq 0 ] && set -- --allow-root "$@"
exec "$venv/bin/jupyter" lab labs/ --LabApp.news_url=None \
  --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate "$@"
