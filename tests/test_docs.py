"""The repository's own docs (docs/) and every citation of them: no file cites a path outside the
repository, a docs file that does not exist, or a section (``docs/method.md §6``, ``docs/design.md#labs``)
that the docs file does not have. Markdown links in .md files and in the labs' markdown cells must
resolve to a file inside the repository (and to an existing heading when they carry an anchor)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".toml", ".sh", ".cu", ".cuh", ".h", ".cpp", ".txt", ".cfg", ".yml", ".yaml"}
SKIP_DIRS = {".git", ".venv", ".venv-ci", "build", "site", "node_modules", ".ruff_cache", "approxdrop.egg-info"}

# "docs/method.md §6", "docs/method.md §3-4", "docs/method.md §4a", "docs/design.md#labs"
DOC_CITATION = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+)|\s+§(\d+[a-z]?)(?:-(\d+[a-z]?))?)?")
SECTION_HEADING = re.compile(r"^#+\s+(\d+[a-z]?)\.\s", re.M)
MARKDOWN_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
# a capitalised note name (METHOD.md, DESIGN.md, ...): must be a file of the repository
NOTE_NAME = re.compile(r"\b([A-Z][A-Z_]+\.md)\b")
# a path that climbs out of the repository into a sibling folder of notes (built so that this file holds none)
OUTSIDE = re.compile("|".join([r"\.\./" + "shared", r"/work/" + "shared"]))


def tracked_files() -> list[Path]:
    """The repository's text files: ``git ls-files`` in a checkout, else a walk that skips build folders."""
    try:
        names = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        paths = [ROOT / name for name in names]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked archive)
        paths = []
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]  # never descend into a venv or a build
            paths += [Path(folder, f) for f in files]
    paths = [p for p in paths if not SKIP_DIRS.intersection(p.relative_to(ROOT).parts)]
    this = Path(__file__).resolve()  # its planted broken citations are the scan's own test cases
    return sorted(p for p in paths if p.suffix in TEXT_SUFFIXES and p.is_file() and p.resolve() != this)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(path: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")]


def sections(path: Path) -> set[str]:
    """The numbered sections of a docs file: ``## 6. Where the time goes`` -> "6", ``### 4a. ...`` -> "4a"."""
    return set(SECTION_HEADING.findall(path.read_text(encoding="utf-8")))


def section_range(first: str, last: str | None) -> list[str]:
    """``("3", "5")`` -> 3, 4, 5 (and the lettered ends themselves: ``("4a", "5")`` -> 4a, 5)."""
    if last is None:
        return [first]
    inner = range(int(re.match(r"\d+", first)[0]) + 1, int(re.match(r"\d+", last)[0]))
    return [first, *map(str, inner), last]


def readable_text(path: Path) -> str:
    """A file's text; for a notebook, the source of its cells (what a reader sees)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".ipynb":
        return "\n".join("".join(cell["source"]) for cell in json.loads(text)["cells"])
    return text


def markdown_of(path: Path) -> str:
    """The Markdown a file renders: a .md file, or a notebook's markdown cells."""
    if path.suffix == ".md":
        return path.read_text(encoding="utf-8")
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return ""


def citation_problems(text: str, where: str, root: Path = ROOT) -> list[str]:
    """Every broken citation in ``text``: a path outside the repository, a note name that is not a file
    of it, a docs file or section that does not exist."""
    problems = [f"{where}: cites {m[0]!r}, outside the repository" for m in OUTSIDE.finditer(text)]
    problems += [
        f"{where}: cites {name}, not a file of the repository"
        for name in NOTE_NAME.findall(text)
        if name not in MARKDOWN_NAMES
    ]
    for m in DOC_CITATION.finditer(text):
        name, anchor, first, last = m.groups()
        doc = root / "docs" / name
        if not doc.is_file():
            problems.append(f"{where}: cites docs/{name}, which does not exist")
            continue
        if anchor is not None and anchor not in {slug(h) for h in headings(doc)}:
            problems.append(f"{where}: cites docs/{name}#{anchor}, no such heading")
        if first is not None:
            missing = [s for s in section_range(first, last) if s not in sections(doc)]
            if missing:
                problems.append(f"{where}: cites docs/{name} §{m[0].split('§')[1]}, no section {missing}")
    return problems


def link_problems(markdown: str, source: Path, root: Path = ROOT) -> list[str]:
    """Every relative Markdown link of ``markdown`` (rendered from ``source``) that leaves the repository,
    names no existing file or folder, or carries an anchor that the target .md file has no heading for."""
    problems = []
    for target in MARKDOWN_LINK.findall(markdown):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor in the same page
        path_part, _, anchor = target.partition("#")
        path_part = path_part.split("?")[0]
        resolved = (source.parent / path_part).resolve()
        where = f"{source.relative_to(root)}: link {target!r}"
        if root.resolve() not in (resolved, *resolved.parents):
            problems.append(f"{where} leaves the repository")
        elif not resolved.exists():
            problems.append(f"{where} names nothing")
        elif anchor and resolved.suffix == ".md" and anchor not in {slug(h) for h in headings(resolved)}:
            problems.append(f"{where}: no such heading")
    return problems


# a repository path written out in prose or code spans: "approxdrop/search/problem.py", "benchmarks/study/",
# "labs/solutions/lab07.py" (it starts at a word boundary, not inside a longer path or a URL)
REPO_PATH = re.compile(r"(?<![\w/.:-])((?:approxdrop|labs|benchmarks|docs|kernels|scripts|tests)/[\w./-]*[\w/])")
# paths that exist only in a built wheel (pyproject.toml maps kernels/ there), not in a checkout
WHEEL_ONLY = {"approxdrop/_kernels"}


def path_problems(text: str, source: Path, root: Path = ROOT) -> list[str]:
    """Every repository path cited in ``text`` (read from ``source``) that names no file or folder, taken
    from the repository root or from the citing file's folder. ``labs/00_...`` (an ellipsis) is a name
    pattern, not a path."""
    problems = []
    cited_paths = (m[1] for m in REPO_PATH.finditer(text) if not text.startswith("...", m.end()))
    for cited in dict.fromkeys(cited_paths):
        if cited.rstrip("/") in WHEEL_ONLY:
            continue
        if not any((base / cited).exists() for base in (root, source.parent)):
            problems.append(f"{source.relative_to(root)}: cites {cited}, which does not exist")
    return problems


FILES = tracked_files()
MARKDOWN_NAMES = {p.name for p in FILES if p.suffix == ".md"}
# where prose cites paths: the README, the docs, the benchmark records and the labs
CITING = [ROOT / "README.md"] + [
    p for p in FILES if p.relative_to(ROOT).parts[0] in {"docs", "benchmarks", "labs"} and p.suffix in {".md", ".ipynb"}
]


def test_the_docs_exist_and_number_the_method_sections():
    assert (DOCS / "method.md").is_file() and (DOCS / "design.md").is_file()
    assert {"1", "3", "4a", "4b", "4c", "5", "6", "7", "8", "9"} <= sections(DOCS / "method.md")
    assert {"layout", "labs", "data", "public-api", "ops-and-dispatch", "host-cost"} <= {
        slug(h) for h in headings(DOCS / "design.md")
    }


def test_the_scan_sees_the_files_that_cite_the_docs():
    """The scan reads the code, the labs, the benchmarks and the config, where citations live."""
    names = {str(p.relative_to(ROOT)) for p in FILES}
    assert {"README.md", "pyproject.toml", "approxdrop/patterns.py", "labs/02_row_patterns.ipynb"} <= names
    citing = [p for p in FILES if "docs/method.md §" in readable_text(p)]
    assert len(citing) >= 10, [str(p) for p in citing]


def test_no_file_cites_outside_the_repository_or_a_missing_doc_section():
    problems = [q for p in FILES for q in citation_problems(readable_text(p), str(p.relative_to(ROOT)))]
    assert not problems, "\n".join(problems)


def test_every_markdown_link_resolves_inside_the_repository():
    problems = [q for p in FILES for q in link_problems(markdown_of(p), p)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "text, message",
    [
        ("see " + "../" + "shared/METHOD.md", "outside the repository"),
        ("(METHOD.md §6)", "METHOD.md, not a file"),
        ("docs/method.md §12", "no section ['12']"),
        ("docs/method.md §4d", "no section ['4d']"),
        ("docs/method.md §8-11", "no section"),
        ("docs/nowhere.md", "does not exist"),
        ("docs/design.md#no-such-heading", "no such heading"),
    ],
)
def test_the_citation_scan_catches_each_kind_of_broken_citation(text, message):
    problems = citation_problems(text, "planted")
    assert any(message in p for p in problems), problems


def test_the_citation_scan_accepts_good_citations():
    good = "docs/method.md §6, docs/method.md §3-4, docs/method.md §4a, docs/design.md#labs, README.md"
    assert citation_problems(good, "planted") == []


@pytest.mark.parametrize(
    "link, message",
    [
        ("[notes](../../elsewhere/METHOD.md)", "leaves the repository"),
        ("[gone](benchmarks/no_such_table.md)", "names nothing"),
        ("[bad anchor](docs/method.md#99-nothing)", "no such heading"),
    ],
)
def test_the_link_scan_catches_each_kind_of_broken_link(link, message):
    problems = link_problems(link, ROOT / "README.md")
    assert any(message in p for p in problems), problems


def test_the_link_scan_accepts_good_links():
    good = "[m](docs/method.md#6-where-the-time-goes) [b](benchmarks/study/README.md) [w](https://example.org/x)"
    assert link_problems(good, ROOT / "README.md") == []


def test_every_repository_path_cited_in_the_docs_benchmarks_and_labs_exists():
    """README.md, docs/*.md, benchmarks/**/*.md and the labs cite files by path (``approxdrop/search/...``,
    ``benchmarks/study/README.md``, ``labs/solutions/lab07.py``): each must exist, so that a module moved
    into a package (``approxdrop/search.py`` -> ``approxdrop/search/``) cannot leave a stale citation."""
    assert {"README.md", "docs/method.md", "benchmarks/search_timing.md"} <= {str(p.relative_to(ROOT)) for p in CITING}
    problems = [q for p in CITING for q in path_problems(readable_text(p), p)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "text",
    [
        "see `approxdrop/search.py`",
        "(approxdrop/models/no_such_module.py)",
        "benchmarks/no_such_table.md, recorded",
        "labs/09_no_such_lab.ipynb",
        "docs/nowhere/",
    ],
)
def test_the_path_scan_catches_a_missing_path(text):
    problems = path_problems(text, ROOT / "README.md")
    assert len(problems) == 1 and "does not exist" in problems[0], problems


def test_the_path_scan_accepts_existing_paths_wheel_paths_and_name_patterns():
    good = (
        "`approxdrop/search/problem.py`, approxdrop/search/, benchmarks/study/README.md, labs/solutions/lab07.py, "
        "approxdrop/_kernels (in the wheel), `labs/00_...` to `labs/08_...`, https://example.org/labs/x.md"
    )
    assert path_problems(good, ROOT / "README.md") == []
    # a path relative to the citing file's folder (benchmarks/lstm_study/README.md cites its own results)
    assert path_problems("benchmarks/lstm_study/results.md", ROOT / "benchmarks" / "x.md") == []
