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
# Widgets cannot render in a static page: their text fallbacks (FigureWidget({...}), VBox(children=...),
# progress bars frozen at 0%) are stripped by scripts/site_strip.py; each lab's static copies stay.
set -euo pipefail

USAGE="usage: bash scripts/site.sh [--ci] [--] [OUT_DIR]

Execute every lab and write the course site (static HTML) to OUT_DIR (default: site/).
  --ci        CI size (small, fast), as APPROXDROP_CI=1 does
  -h, --help  show this help and exit
  --          end of options: what follows is OUT_DIR, even if it starts with '-'"
usage_error() { echo "$USAGE" >&2; exit 2; }
out=""
options=1
for arg in "$@"; do
  if [ "$options" = 1 ]; then
    case "$arg" in
      --ci) export APPROXDROP_CI=1; continue ;;
      -h | --help) echo "$USAGE"; exit 0 ;;
      --) options=0; continue ;;
      -*) echo "error: unknown option '$arg'" >&2; usage_error ;;
    esac
  fi
  [ -z "$out" ] || { echo "error: more than one OUT_DIR ('$out', '$arg')" >&2; usage_error; }
  out=$arg
done
out=$(realpath -m -- "${out:-$(dirname "$0")/../site}")  # relative to the caller's directory
cd "$(dirname "$0")/.."
python=${VENV:-.venv}/bin/python
[ -x "$python" ] || { echo "error: $python not found: run scripts/labs.sh or scripts/test.sh first" >&2; exit 1; }

# One torch thread in the kernel: on a small, shared CPU a second thread waits on a partner that is not
# running (lab 07 was 10x slower with two threads on a loaded 2-core machine).
export OMP_NUM_THREADS=1 PLOTLY_RENDERER=notebook
case "${APPROXDROP_CI:-}" in "" | 0 | false | no) size="full CPU size" ;; *) size="CI size" ;; esac
mkdir -p "$out"
executed=$(mktemp -d)
trap 'rm -rf "$executed"' EXIT
echo "building the course site at $size into $out"
start=$SECONDS
for notebook in labs/[0-9]*.ipynb; do
  lab_start=$SECONDS
  # executed in labs/ (nbconvert runs the kernel in the notebook's folder), written to a scratch copy
  "$python" -m nbconvert --to notebook --execute --log-level=WARN --ExecutePreprocessor.timeout=1200 \
    --output-dir "$executed" "$notebook"
  copy="$executed/$(basename "$notebook")"
  "$python" scripts/site_strip.py "$copy"
  # the widget state is dropped from the notebook's metadata (ClearMetadataPreprocessor): without it the
  # page fetches no widget manager from a CDN to draw widgets that have no kernel anyway
  "$python" -m nbconvert --to html --log-level=WARN \
    --ClearMetadataPreprocessor.enabled=True --ClearMetadataPreprocessor.clear_cell_metadata=False \
    --output-dir "$out" "$copy"
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
