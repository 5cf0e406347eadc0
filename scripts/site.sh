#!/usr/bin/env bash
# Build the course site: every lab executed top to bottom, one after another, and converted to HTML by
# nbconvert (lab template), with an index.html that links them. Plotly figures stay interactive without
# a kernel and without a network: PLOTLY_RENDERER=notebook inlines plotly.js once per page. Widgets are
# not live in static HTML; the static copy each lab shows after a widget (course.display.show) is.
#
#   bash scripts/site.sh [--ci] [OUT_DIR]     (default OUT_DIR: site/ in the repository)
#
# Full CPU size by default (APPROXDROP_CI unset); --ci or APPROXDROP_CI=1: CI size (small, fast).
# Open OUT_DIR/index.html in a browser. Uses $VENV (default .venv) as set up by scripts/labs.sh or test.sh.
set -euo pipefail

usage() { echo "usage: bash scripts/site.sh [--ci] [OUT_DIR]" >&2; exit 2; }
out=""
for arg in "$@"; do
  case "$arg" in
    --ci) export APPROXDROP_CI=1 ;;
    -h | --help) usage ;;
    -*) echo "error: unknown option '$arg'" >&2; usage ;;
    *) [ -z "$out" ] || { echo "error: more than one OUT_DIR ('$out', '$arg')" >&2; usage; }; out=$arg ;;
  esac
done
out=$(realpath -m "${out:-$(dirname "$0")/../site}")  # relative to the caller's directory
cd "$(dirname "$0")/.."
python=${VENV:-.venv}/bin/python
[ -x "$python" ] || { echo "error: $python not found: run scripts/labs.sh or scripts/test.sh first" >&2; exit 1; }

# One torch thread in the kernel: on a small, shared CPU a second thread waits on a partner that is not
# running (lab 07 was 10x slower with two threads on a loaded 2-core machine).
export OMP_NUM_THREADS=1 PLOTLY_RENDERER=notebook
case "${APPROXDROP_CI:-}" in "" | 0 | false | no) size="full CPU size" ;; *) size="CI size" ;; esac
mkdir -p "$out"
echo "building the course site at $size into $out"
start=$SECONDS
for notebook in labs/[0-9]*.ipynb; do
  lab_start=$SECONDS
  # the widget state is dropped from the notebook's metadata once executed (ClearMetadataPreprocessor):
  # without it the page fetches no widget manager from a CDN to draw widgets that have no kernel anyway
  "$python" -m nbconvert --to html --execute --log-level=WARN --ExecutePreprocessor.timeout=1200 \
    --ClearMetadataPreprocessor.enabled=True --ClearMetadataPreprocessor.clear_cell_metadata=False \
    --output-dir "$out" "$notebook"
  echo "  $(basename "$notebook"): $((SECONDS - lab_start)) s"
done

"$python" - "$out" <<'EOF'
"""index.html: one link per lab page, titled by the notebook's first heading."""
import html
import sys
from pathlib import Path

import nbformat

out = Path(sys.argv[1])
items = []
for path in sorted(Path("labs").glob("[0-9]*.ipynb")):
    notebook = nbformat.read(path, as_version=4)
    headings = [
        line.lstrip("#").strip()
        for cell in notebook.cells
        if cell.cell_type == "markdown"
        for line in cell.source.splitlines()
        if line.startswith("#")
    ]
    title = headings[0] if headings else path.stem
    items.append(f'  <li><a href="{path.stem}.html">{html.escape(title)}</a></li>')
page = "\n".join(
    [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8"><title>approxdrop: the course</title>',
        "<style>body { font-family: sans-serif; max-width: 48em; margin: 2em auto; line-height: 1.6 }</style>",
        "</head>",
        "<body>",
        "<h1>approxdrop: Approximate Random Dropout, the course</h1>",
        "<p>Every lab executed top to bottom with its outputs. Figures are interactive (zoom, hover);"
        " sliders and buttons need a running kernel: open the lab in JupyterLab for those.</p>",
        "<ol>",
        *items,
        "</ol>",
        "</body>",
        "</html>",
        "",
    ]
)
(out / "index.html").write_text(page, encoding="utf-8")
EOF
echo "course site: $out/index.html ($size, $((SECONDS - start)) s)"
