"""The one table of dropout methods. Every model, benchmark, study, figure and widget reads it: a new
method is one new row here, not edits across the package.

Each row says what the method drops, which searched pattern family it draws from, which models
offer it, how its GEMM work is computed (from what it drops: docs/method.md §6) and its plot colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._env import check_int, check_number

# What a method drops: one of these.
ROW = "row pattern"  # whole units, periodic, batch-shared: both GEMM sides shrink
TILE = "tile pattern"  # T x T tiles of the weight reading a site, periodic: that weight's work shrinks
ELEMENT = "per element"  # nn.Dropout: nothing shrinks
SHARED_UNITS = "batch-shared random units"  # Bernoulli over units, batch-shared, gathered: both sides shrink
NOTHING = "nothing"  # no dropout
DROPS = (ROW, TILE, ELEMENT, SHARED_UNITS, NOTHING)

MODELS = ("mlp", "lstm")  # ApproxDropoutMLP, the LSTM language models


@dataclass(frozen=True)
class Method:
    """One dropout method: a row of ``DROPOUT_METHODS``.

    ``family`` is the searched pattern family of pattern methods (None otherwise); ``groups`` the
    number of batch groups with complementary offsets of row or tile patterns (1: the paper's one
    pattern per batch; docs/method.md §9); ``models`` the model kinds that offer it; ``torch_modules`` marks the
    LSTM built from PyTorch's own ``nn.LSTM`` + ``nn.Dropout`` (the baseline users write), not the
    library's LSTM code.
    """

    name: str
    drops: str
    label: str
    color: str
    family: str | None = None
    groups: int = 1
    models: tuple[str, ...] = MODELS
    torch_modules: bool = False

    def __post_init__(self) -> None:
        if self.drops not in DROPS:
            raise ValueError(f"drops must be one of {DROPS}, got {self.drops!r}")
        if (self.family is not None) != (self.drops in (ROW, TILE)):
            raise ValueError(f"method {self.name!r}: a family is needed by pattern methods, and only by them")
        if self.groups != 1 and self.drops not in (ROW, TILE):
            raise ValueError(f"method {self.name!r}: batch groups are for row and tile patterns only")

    @property
    def pattern_kind(self) -> str | None:
        """ "row" or "tile" for pattern methods (the PatternDistribution kind), else None."""
        return {ROW: "row", TILE: "tile"}.get(self.drops)

    @property
    def compacts_units(self) -> bool:
        """True when dropped units are not computed at all (row patterns, shared random units)."""
        return self.drops in (ROW, SHARED_UNITS)

    def layer_work(self, p: float, site_in: bool, site_out: bool) -> float:
        """GEMM work left in one layer relative to dense, ideally (docs/method.md §6): ``site_in`` / ``site_out``
        say whether a dropout site feeds the layer / follows it."""
        if self.compacts_units:
            return (1.0 - p if site_in else 1.0) * (1.0 - p if site_out else 1.0)
        if self.drops == TILE and site_in:
            return 1.0 - p  # DropConnect on the tiles of the weight reading the site
        return 1.0


DROPOUT_METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("bernoulli", ELEMENT, "nn.Dropout: per-element Bernoulli mask, full-size GEMMs", "#4C78A8"),
        Method("row", ROW, "row patterns, paper family (keep = 1: strided views)", "#E45756", family="paper"),
        Method("row-extended", ROW, "row patterns, extended family (keep >= 1)", "#72B7B2", family="extended"),
        Method(
            "row-g4",
            ROW,
            "row patterns, 4 batch groups with complementary offsets",
            "#7F3C8D",
            family="paper",
            groups=4,
        ),
        Method(
            "row-g16",
            ROW,
            "row patterns, 16 batch groups with complementary offsets",
            "#1B1B1B",
            family="paper",
            groups=16,
        ),
        Method(
            "row-extended-g4",
            ROW,
            "row patterns, extended family, 4 batch groups with complementary offsets",
            "#BCBD22",
            family="extended",
            groups=4,
        ),
        Method(
            "tile", TILE, "tile patterns on the weight reading each site", "#54A24B", family="paper", models=("mlp",)
        ),
        Method(
            "tile-g4",
            TILE,
            "tile patterns, 4 batch groups with complementary offsets",
            "#E7298A",
            family="paper",
            groups=4,
            models=("mlp",),
        ),
        Method("shared", SHARED_UNITS, "batch-shared Bernoulli over units, gathered", "#F58518"),
        Method("none", NOTHING, "no dropout", "#9D9D9D"),
        Method(
            "torch",
            ELEMENT,
            "nn.LSTM + nn.Dropout, PyTorch's own modules",
            "#2E7D32",
            models=("lstm",),
            torch_modules=True,
        ),
    )
}


def get_method(name: str, model: str | None = None) -> Method:
    """The table row named ``name``; ValueError naming the choices when there is none (for ``model``)."""
    names = methods_for(model) if model is not None else tuple(DROPOUT_METHODS)
    if name not in names:
        where = f" for the {model} models" if model is not None else ""
        raise ValueError(f"method must be one of {names}{where}, got {name!r}")
    return DROPOUT_METHODS[name]


def methods_for(model: str) -> tuple[str, ...]:
    """Names of the methods a model kind ("mlp", "lstm") offers, in table order."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    return tuple(name for name, m in DROPOUT_METHODS.items() if model in m.models)


def check_methods(names: Sequence[str], model: str) -> list[str]:
    """``names`` as a list if they are distinct methods of ``model``, else ValueError naming them."""
    return check_names(names, methods_for(model))


def check_names(names: Sequence[str], allowed: Sequence[str], least: int = 1) -> list[str]:
    """``names`` as a list if they are at least ``least`` distinct names of ``allowed`` (a model's methods, a
    panel's boxes), else ValueError naming them and what is wrong."""
    if isinstance(names, str):  # list("row") would be ['r', 'o', 'w']
        raise ValueError(
            f"methods must be a sequence of names from {allowed}, got the string {names!r}: write ({names!r},)"
        )
    names = list(names)
    unknown = [n for n in names if n not in allowed]
    twice = len(set(names)) != len(names)
    if unknown or twice or len(names) < least:
        why = f"unknown: {unknown}" if unknown else "a name twice" if twice else f"fewer than {least}"
        raise ValueError(f"methods must be distinct names from {allowed}, got {names} ({why})")
    return names


def color(name: str) -> str:
    """The method's plot colour (grey for names outside the table)."""
    return DROPOUT_METHODS[name].color if name in DROPOUT_METHODS else "#555555"


def _check_work_rate(p: object) -> float:
    """``p`` as a float if it is a real number in [0, 1] (1: the limit p -> 1, the floor of the work
    left), else ValueError naming it."""
    return check_number("dropout rate p", p, 0.0, 1.0)


def mlp_gemm_work(sizes: Sequence[int], p: float, name: str, input_dropout: bool = False) -> float:
    """Expected GEMM work of an MLP ``sizes`` left relative to dense, the ideal bound: each layer's
    ``Method.layer_work`` weighted by its size (a site follows every hidden layer). ``sizes`` are at
    least two widths >= 1, ``p`` in [0, 1] and ``name`` a method of the MLP; else ValueError."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) < 2:
        raise ValueError(f"sizes must be a sequence of at least two widths (input, ..., output), got {sizes!r}")
    sizes = [check_int(f"sizes[{i}]", n, 1) for i, n in enumerate(sizes)]
    p, m = _check_work_rate(p), get_method(name, "mlp")
    dense = kept = 0.0
    last = len(sizes) - 2
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        work = float(n_in * n_out)
        dense += work
        kept += work * m.layer_work(p, site_in=i > 0 or input_dropout, site_out=i < last)
    return kept / dense


def lstm_gemm_work(hidden: int, layers: int, vocab: int, p: float, name: str) -> float:
    """GEMM work of an LSTM language model left relative to dense, the ideal bound: the input
    projections and the decoder read a dropout site; the recurrent GEMMs stay whole. The embedding is
    taken as wide as the LSTM. Sizes are ints >= 1, ``p`` in [0, 1] and ``name`` a method of the LSTM
    models; else ValueError."""
    hidden, layers, vocab = check_int("hidden", hidden, 1), check_int("layers", layers, 1), check_int("vocab", vocab, 1)
    p, m = _check_work_rate(p), get_method(name, "lstm")
    gates = 4 * hidden
    read = m.layer_work(p, site_in=True, site_out=False)
    dense = layers * 2 * hidden * gates + hidden * vocab  # input + recurrent projections, decoder
    kept = layers * hidden * gates * (1 + read) + hidden * vocab * read
    return kept / dense
