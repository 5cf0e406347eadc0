"""The CUDA kernels' own source text, for the labs: one named function or struct out of a ``kernels/`` file.

``kernel_source("pattern_index.h", "kept_index")`` is the definition of ``kept_index`` with the comment
lines right above it, found by name and balanced braces (comments, string and character literals and
preprocessor lines are skipped while matching), so it keeps up with edits of the kernels.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from ..ops.cuda import SOURCE_DIR

_LEXEMES = re.compile(
    r"//[^\n]*"  # line comment
    r"|/\*.*?\*/"  # block comment
    r'|"(?:\\.|[^"\\\n])*"'  # string literal
    r"|'(?:\\.|[^'\\\n])*'"  # character literal
    r"|^[ \t]*#(?:\\\n|[^\n])*",  # preprocessor line, with its continuations
    re.DOTALL | re.MULTILINE,
)
_QUALIFIERS = re.compile(r"[\s\w:&*<>,]*")  # what may sit between a function's ')' and its '{' (const, noexcept)


def _code_only(text: str) -> str:
    """``text`` with comments, literals and preprocessor lines blanked (same length, newlines kept);
    a preprocessor line ends with ';', so that it bounds the declaration after it."""

    def blank(match: re.Match) -> str:
        kept = re.sub(r"[^\n]", " ", match.group())
        return kept[:-1] + ";" if match.group().lstrip().startswith("#") else kept

    return _LEXEMES.sub(blank, text)


def _closing(code: str, start: int, open_: str, close: str) -> int:
    """The index of the bracket closing the one at ``start`` (``code[start] == open_``); -1 if none."""
    depth = 0
    for i in range(start, len(code)):
        if code[i] == open_:
            depth += 1
        elif code[i] == close:
            depth -= 1
            if depth == 0:
                return i
    return -1


def _body_brace(code: str, paren: int) -> int:
    """Where the body opens of a function definition whose parameter list opens at ``paren``; -1 for a
    call or a declaration. Between ')' and '{' only qualifiers, or a constructor's ': member(...)' list."""
    i = _closing(code, paren, "(", ")")
    if i < 0:
        return -1
    i = _QUALIFIERS.match(code, i + 1).end()
    if code.startswith(":", i) and not code.startswith("::", i):  # an initialiser list: member(value), ...
        while i < len(code) and code[i] not in "{;":
            if code[i] == "(":
                i = _closing(code, i, "(", ")")
                if i < 0:
                    return -1
            i += 1
    return i if code.startswith("{", i) else -1


def _definitions(code: str, name: str) -> list[tuple[int, int]]:
    """(start of the name, index of the opening brace) of every struct, class or function ``name``."""
    found = []
    for match in re.finditer(rf"\b(?:struct|class)\s+{re.escape(name)}\b[^;{{}}()]*\{{", code):
        found.append((match.start(), match.end() - 1))
    for match in re.finditer(rf"(?<![\w.>]){re.escape(name)}\s*\(", code):
        brace = _body_brace(code, match.end() - 1)  # the match ends with the '('
        if brace >= 0:
            found.append((match.start(), brace))
    return sorted(found)


def _declaration_start(text: str, code: str, name_at: int) -> int:
    """The first character of the declaration holding ``name_at`` (its return type, template line,
    qualifiers), moved up over the comment lines right above it."""
    start = max(code.rfind(c, 0, name_at) for c in ";{}") + 1  # after the statement before (-1: none)
    while code[start].isspace():  # blanked comments included
        start += 1
    line_start = text.rfind("\n", 0, start) + 1
    while line_start > 0:
        above = text.rfind("\n", 0, line_start - 1) + 1
        if not text[above : line_start - 1].strip().startswith("//"):
            break
        line_start = above
    return line_start


def kernel_source(file: str, name: str, source_dir: Path = SOURCE_DIR) -> str:
    """The definition of the function or struct ``name`` in ``kernels/<file>`` (the directory
    ``approxdrop.ops.cuda.SOURCE_DIR``), with the comment lines right above it, dedented. Overloads
    are all returned, one after the other. ValueError naming the file or the name when not found."""
    path = source_dir / file
    if not path.is_file():
        known = sorted(p.name for p in source_dir.glob("*") if p.suffix in (".h", ".cuh", ".cu", ".cpp"))
        raise ValueError(f"no kernel source {file!r} in {source_dir}; the sources are {known}")
    text = path.read_text()
    code = _code_only(text)
    parts, end = [], -1
    for name_at, brace in _definitions(code, name):
        if name_at < end:  # nested in a definition already taken (a struct's constructor)
            continue
        end = _closing(code, brace, "{", "}") + 1
        if end == 0:
            raise ValueError(f"the definition of {name!r} in {path} has no closing brace")
        if code[end:].lstrip().startswith(";"):  # struct Pattern { ... };
            end = code.index(";", end) + 1
        parts.append(textwrap.dedent(text[_declaration_start(text, code, name_at) : end]))
    if not parts:
        raise ValueError(f"no function or struct named {name!r} is defined in {path}")
    return "\n\n".join(parts)
