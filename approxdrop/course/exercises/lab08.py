"""Lab 08 exercises (ARD in your own model): that ``convert`` kept the model (the same Parameter objects,
the same eval outputs), and the chain matcher of one ``nn.Sequential``, checked against what ``convert``
itself converts. Each ``check_*`` prints one PASS / FAIL / TODO line and returns it.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from ...models import convert
from ...models.sites import ELEMENTWISE, is_elementwise
from ..checks import CheckResult, WrongAnswer, check, draw_int, fresh_generator

__all__ = ["CASES", "check_conversion", "check_find_chains", "is_elementwise", "reference_find_chains"]


# --------------------------------------------------------------------------- the conversion kept the model


def check_conversion(
    model: nn.Module, params_before: Sequence[nn.Parameter], x: torch.Tensor, logits_before: torch.Tensor
) -> CheckResult:
    """PASS when ``model`` (converted) holds exactly the Parameter objects ``params_before`` (taken before
    ``convert``) and its eval output on x equals ``logits_before`` (within 1e-6); prints the line."""
    after = list(model.parameters())
    same = {id(p) for p in after} == {id(p) for p in params_before} and len(after) == len(params_before)
    was_training = model.training
    with torch.no_grad():
        logits = model.eval()(x)
    model.train(was_training)
    diff = float((logits - logits_before).abs().max()) if logits.shape == logits_before.shape else None
    objects = f"{len(after)} parameters, {'the same objects as before' if same else 'NOT the objects of before'}"
    if diff is None:
        detail = f"{objects}; eval output of shape {tuple(logits.shape)}, expected {tuple(logits_before.shape)}"
    else:
        detail = f"{objects}; eval output {'unchanged' if diff <= 1e-6 else 'CHANGED'}"
    result = CheckResult(
        "convert kept the model", "pass" if same and diff is not None and diff <= 1e-6 else "fail", diff, detail
    )
    print(result)
    return result


# --------------------------------------------------------------------------- the chain matcher


def _layer(module: nn.Module) -> str:
    """A module in a few characters: "Linear(8->16)", "GELU", "Dropout(0.1)"."""
    if isinstance(module, nn.Linear):
        return f"{type(module).__name__}({module.in_features}->{module.out_features})"
    if isinstance(module, nn.Dropout):
        return f"{type(module).__name__}({module.p:g})"
    if type(module) is nn.PReLU and module.num_parameters != 1:
        return f"PReLU({module.num_parameters})"  # one slope per unit: it is not elementwise
    return type(module).__name__


def layers_text(seq: nn.Sequential) -> str:
    """``seq`` entry by entry: "[0] Linear(8->16), [1] GELU, [2] Dropout(0.1), [3] Linear(16->8)"."""
    return ", ".join(f"[{i}] {_layer(m)}" for i, m in enumerate(seq)) or "an empty nn.Sequential"


def is_gemm_linear(module: nn.Module) -> bool:
    """Whether ``convert`` takes ``module`` as a chain's Linear: an ``nn.Linear`` whose class keeps
    nn.Linear's forward (nn.Linear itself, or a subclass such as torch's NonDynamicallyQuantizableLinear),
    and no forward set on the instance. The block reads the weight and computes the GEMM itself, so a
    forward of its own would silently stop running."""
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward and "forward" not in vars(module)


def _linear_problem(seq: nn.Sequential, i: int) -> str | None:
    """Why ``seq[i]`` is not a Linear that ``convert`` takes (``is_gemm_linear``), or None."""
    module = seq[i]
    if not isinstance(module, nn.Linear):
        return f"seq[{i}] is {_layer(module)}, not nn.Linear"
    if "forward" in vars(module):
        return f"seq[{i}] has its forward replaced on the instance: the block computes the GEMM itself"
    if not is_gemm_linear(module):
        return (
            f"seq[{i}] is {_layer(module)}, an nn.Linear with a forward of its own: the block computes the GEMM "
            "itself (type(m).forward must be nn.Linear.forward)"
        )
    return None


def _hooks(module: nn.Module) -> int:
    """How many forward and backward hooks ``module`` carries (a block would skip them all)."""
    kinds = (module._forward_pre_hooks, module._forward_hooks, module._backward_hooks, module._backward_pre_hooks)
    return sum(len(hooks) for hooks in kinds)


def chain_problem(seq: nn.Sequential, i: int) -> str | None:
    """Why ``seq[i:i + 4]`` is not a chain ``convert`` replaces, or None if it is (overlaps with other chains
    are not looked at here): Linears that ``is_gemm_linear`` accepts with sizes that chain, an activation
    that ``is_elementwise`` accepts, exactly nn.Dropout with p < 1 between them; also, as in ``convert``, no
    forward set on a Linear's instance, both Linears of one dtype and no hooks on the four entries (the
    checker's cases have none of these three)."""
    mods = list(seq)
    if not 0 <= i < len(mods):
        return f"{i} is not an index of seq (it has {len(mods)} entries)"
    if why := _linear_problem(seq, i):
        return why
    if i + 3 >= len(mods):
        return f"a chain needs 4 entries, and seq[{i}:] has {len(mods) - i}"
    fc1, act, drop, fc2 = mods[i : i + 4]
    if not is_elementwise(act):
        return f"seq[{i + 1}] is {_layer(act)}: not an elementwise activation (is_elementwise says False)"
    if type(drop) is not nn.Dropout:
        return f"seq[{i + 2}] is {_layer(drop)}, not nn.Dropout"
    if not drop.p < 1:
        return f"seq[{i + 2}] is {_layer(drop)}: p = 1 drops every unit, and a block takes rates p < 1 only"
    if why := _linear_problem(seq, i + 3):
        return why
    if fc1.out_features != fc2.in_features:
        return (
            f"the sizes do not chain: seq[{i}] gives {fc1.out_features} features, seq[{i + 3}] takes {fc2.in_features}"
        )
    if fc1.weight.dtype != fc2.weight.dtype:
        return f"seq[{i}] is {fc1.weight.dtype} but seq[{i + 3}] is {fc2.weight.dtype}"
    if hooked := [f"seq[{j}]" for j in range(i, i + 4) if _hooks(mods[j])]:
        return (
            f"{', '.join(hooked)} {'carries' if len(hooked) == 1 else 'carry'} hooks, which a block would no longer run"
        )
    return None


def reference_find_chains(seq: nn.Sequential) -> list[int]:
    """The start indices of the chains that ``convert`` replaces in ``seq`` (an nn.Sequential with the
    default keys "0", "1", ...), read from what it does to a copy: it collapses each chain of 4 entries
    into one block and renumbers, so the k-th block found at new index j started at j + 3 k."""
    converted = copy.deepcopy(seq)
    report = convert(converted)
    top = [int(name) for name in report.converted if "." not in name]  # chains of seq itself, not of nested ones
    return [j + 3 * k for k, j in enumerate(top)]


def _indices(got: Any) -> list[int] | Any:
    """A list or tuple of ints (or a 1-D integer tensor) as a list of ints; WrongAnswer for an element
    that is not an int (a float, even 2.0, or a bool); anything else as it is (the checker says what
    was expected)."""
    if isinstance(got, torch.Tensor) and got.dim() == 1:
        got = got.tolist()
    if not isinstance(got, (list, tuple)):
        return got
    for k, v in enumerate(got):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise WrongAnswer(f"element [{k}] is {v!r}, expected an index of seq (an int)")
    return [int(v) for v in got]


class SubclassedDropout(nn.Dropout):
    """A subclass of nn.Dropout: not an nn.Dropout to ``convert`` (it may do more than drop)."""


class ClampedLinear(nn.Linear):
    """A subclass of nn.Linear with a forward of its own (it clamps its outputs to [-1, 1]): not a Linear to
    ``convert``, whose block computes the GEMM itself and would skip the clamp."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).clamp(-1.0, 1.0)


CASES: list[tuple[str, nn.Sequential]] = [  # (what the case tests, the nn.Sequential)
    ("one chain", nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.1), nn.Linear(16, 8))),
    ("no dropout, no chain", nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))),
    ("an empty nn.Sequential", nn.Sequential()),
    (
        "two chains with a LayerNorm between them",
        nn.Sequential(
            nn.Linear(8, 16),
            nn.GELU(),
            nn.Dropout(0.1),
            nn.Linear(16, 8),
            nn.LayerNorm(8),
            nn.Linear(8, 32),
            nn.SiLU(),
            nn.Dropout(0.2),
            nn.Linear(32, 8),
        ),
    ),  # fmt: skip
    (
        "two adjacent chains (the second starts right after the first)",
        nn.Sequential(
            nn.Linear(8, 16),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(16, 8),
            nn.Linear(8, 12),
            nn.Tanh(),
            nn.Dropout(0.3),
            nn.Linear(12, 6),
        ),
    ),  # fmt: skip
    (
        "two overlapping chains sharing the middle Linear: only the first is a block",
        nn.Sequential(
            nn.Linear(8, 16),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(16, 16),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(16, 4),
        ),
    ),  # fmt: skip
    ("a Softmax instead of GELU", nn.Sequential(nn.Linear(8, 16), nn.Softmax(-1), nn.Dropout(0.1), nn.Linear(16, 8))),
    (
        "Dropout not between two Linears",
        nn.Sequential(
            nn.Dropout(0.1), nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.1), nn.LayerNorm(16), nn.Linear(16, 8)
        ),
    ),
    ("sizes that do not chain", nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.1), nn.Linear(12, 8))),
    ("Dropout1d is not nn.Dropout", nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout1d(0.1), nn.Linear(16, 8))),
    (
        "a subclass of nn.Dropout is not nn.Dropout",
        nn.Sequential(nn.Linear(8, 16), nn.GELU(), SubclassedDropout(0.1), nn.Linear(16, 8)),
    ),
    (
        "a Hardswish: every activation is_elementwise accepts counts",
        nn.Sequential(nn.Linear(8, 16), nn.Hardswish(), nn.Dropout(0.1), nn.Linear(16, 8)),
    ),
    ("a PReLU with one parameter", nn.Sequential(nn.Linear(8, 16), nn.PReLU(), nn.Dropout(0.1), nn.Linear(16, 8))),
    (
        "a chain after other layers, a Dropout at the end",
        nn.Sequential(
            nn.LayerNorm(8),
            nn.Linear(8, 8),
            nn.Linear(8, 24),
            nn.GELU(),
            nn.Dropout(0.2),
            nn.Linear(24, 8),
            nn.Dropout(0.1),
        ),
    ),  # fmt: skip
    (
        "a subclass of nn.Linear that keeps its forward counts, as torch's NonDynamicallyQuantizableLinear",
        nn.Sequential(NonDynamicallyQuantizableLinear(8, 16), nn.GELU(), nn.Dropout(0.1), nn.Linear(16, 8)),
    ),
    (
        "a subclass of nn.Linear with a forward of its own is not a Linear to convert",
        nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), ClampedLinear(16, 8)),
    ),
    (
        "nn.Dropout with p = 1 drops every unit: no block",
        nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(1.0), nn.Linear(16, 8)),
    ),
    (
        "nn.Dropout with p = 0 is still a chain: a block takes any rate below 1",
        nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.0), nn.Linear(16, 8)),
    ),
    (
        "a LayerNorm where the activation goes: it mixes units",
        nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Dropout(0.1), nn.Linear(16, 8)),
    ),
    (
        "a Linear where the activation goes: it mixes units",
        nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 16), nn.Dropout(0.1), nn.Linear(16, 8)),
    ),
    (
        "a PReLU with one slope per unit is not elementwise",
        nn.Sequential(nn.Linear(8, 16), nn.PReLU(16), nn.Dropout(0.1), nn.Linear(16, 8)),
    ),
]
_NOTES = {layers_text(seq): note for note, seq in CASES}
DRAWN = 8  # drawn cases besides those with an unseen activation
DRAWN_NOTE = "drawn anew at this call"


# the elementwise activations no fixed case shows: a drawn case holds a chain with each of them
UNSEEN_ACTIVATIONS = [kind for kind in ELEMENTWISE if all(type(m) is not kind for _, seq in CASES for m in seq)]


def _new(kind: type[nn.Module]) -> nn.Module:
    """An activation module of type ``kind``, with the arguments it needs."""
    if kind is nn.Threshold:
        return nn.Threshold(0.0, 0.0)
    return nn.Softmax(-1) if kind is nn.Softmax else kind()


# modules that mix units, drawn now and then in the activation slot: built for a hidden width
MIXING: list[Callable[[int], nn.Module]] = [
    lambda width: nn.Softmax(-1),
    nn.LayerNorm,
    nn.BatchNorm1d,
    lambda width: nn.Linear(width, width),
    nn.PReLU,  # PReLU(width): one slope per unit
]


def _activation(generator: torch.Generator, width: int) -> nn.Module:
    """Any of ``ELEMENTWISE`` and a one-parameter PReLU (so a hard-coded list misses some), or now and then
    one of ``MIXING``, for ``width`` hidden units."""
    kinds = [*ELEMENTWISE, nn.PReLU]
    pick = draw_int(generator, 0, len(kinds) + 3)  # 4 draws in len(kinds) + 4 mix units
    if pick < len(kinds):
        return _new(kinds[pick])
    return MIXING[draw_int(generator, 0, len(MIXING) - 1)](width)


def _dropout(generator: torch.Generator) -> nn.Module:
    """Mostly nn.Dropout, sometimes a look-alike that convert leaves alone; now and then with p = 1 or p = 0."""
    kinds = [nn.Dropout, nn.Dropout, nn.Dropout, SubclassedDropout, nn.Dropout1d, nn.AlphaDropout]
    kind = kinds[draw_int(generator, 0, len(kinds) - 1)]
    rate = draw_int(generator, 0, 9)
    return kind(1.0 if rate == 9 else 0.0 if rate == 0 else 0.1 * (1 + (rate - 1) % 5))


def _linear(generator: torch.Generator, n_in: int, n_out: int) -> nn.Linear:
    """Mostly nn.Linear, sometimes a subclass that keeps its forward (convert takes it) or one that does not."""
    kinds = [nn.Linear] * 6 + [NonDynamicallyQuantizableLinear, ClampedLinear]
    return kinds[draw_int(generator, 0, len(kinds) - 1)](n_in, n_out)


def random_sequential(generator: torch.Generator, activation: type[nn.Module] | None = None) -> nn.Sequential:
    """An nn.Sequential of 1-4 pieces drawn with ``generator``: chains (some broken by their sizes, their
    activation, their dropout or a Linear with a forward of its own), lone Linears, LayerNorms and Dropouts.
    With ``activation``, one more piece, at a drawn place, is a valid chain with that activation (no piece
    can take its first Linear)."""
    width, mods = 8, []
    pieces = draw_int(generator, 1, 4)
    valid_at = draw_int(generator, 0, pieces) if activation is not None else -1
    for number in range(pieces + (activation is not None)):
        piece = -1 if number == valid_at else draw_int(generator, 0, 5)
        if piece == -1:
            hidden, out = 4 * draw_int(generator, 1, 6), 4 * draw_int(generator, 1, 6)
            mods += [nn.Linear(width, hidden), _new(activation), nn.Dropout(0.1), nn.Linear(hidden, out)]
            width = out
        elif piece <= 2:
            hidden, out = 4 * draw_int(generator, 1, 6), 4 * draw_int(generator, 1, 6)
            reads = hidden + (draw_int(generator, 0, 1) if piece == 2 else 0)  # sometimes sizes that do not chain
            head = [_linear(generator, width, hidden), _activation(generator, hidden), _dropout(generator)]
            mods += [*head, _linear(generator, reads, out)]
            width = out
        elif piece == 3:
            mods.append(nn.Linear(width, width))
        else:
            mods.append(nn.LayerNorm(width) if piece == 4 else nn.Dropout(0.1))
    return nn.Sequential(*mods)


def _explain(seq: nn.Sequential, got: list[int], want: list[int]) -> str:
    """What is wrong with ``got`` for ``seq``: the first index it has too many, or the first it misses."""
    extra = [i for i in got if i not in want]
    if extra:
        i = extra[0]
        taken = next((j for j in want if j < i <= j + 3), None)
        why = (
            chain_problem(seq, i)
            or f"its first Linear is the last one of the chain at {taken}: a Linear is in one block"
        )
        return f"{i} is not the start of a chain: {why}"
    if len(got) != len(set(got)):
        return "it lists an index twice"
    missing = [i for i in want if i not in got]
    if missing:
        return f"it misses the chain that starts at {missing[0]}"
    return "the right indices, in the wrong order: list them in increasing order"


def check_find_chains(candidate: Callable[[nn.Sequential], Any]) -> CheckResult:
    """``candidate(seq) -> list[int]``: the start indices i, in increasing order, where ``seq[i:i + 4]`` is
    Linear -> an elementwise activation -> nn.Dropout with p < 1 -> Linear whose sizes chain, each Linear an
    nn.Linear that keeps nn.Linear's forward (``is_gemm_linear``), a Linear never in two chains (the first
    one takes it). The reference is what ``convert`` does to a copy of ``seq`` (see ``chain_problem``).

    The fixed CASES, then cases drawn anew: one holding a valid chain with each of UNSEEN_ACTIVATIONS (so a
    hard-coded list of activations, or a table of the fixed cases, fails every time) and DRAWN others."""

    def answer(seq: nn.Sequential) -> Any:
        original = copy.deepcopy(seq)  # as the case was, whatever the learner does to seq
        got = _indices(candidate(seq))
        if not isinstance(got, list):
            return got  # the checker says what was expected
        want = reference_find_chains(original)
        if got != want:
            note = _NOTES.get(layers_text(original), "")
            raise WrongAnswer(
                f"it returned {got}, expected {want}: {_explain(original, got, want)}. "
                f"The case ({note or DRAWN_NOTE}): {layers_text(original)}"
            )
        return got

    fresh = fresh_generator()
    unseen = [UNSEEN_ACTIVATIONS[int(i)] for i in torch.randperm(len(UNSEEN_ACTIVATIONS), generator=fresh)]
    drawn = [random_sequential(fresh, kind) for kind in unseen] + [random_sequential(fresh) for _ in range(DRAWN)]
    cases = [(seq,) for _, seq in CASES] + [(drawn[int(i)],) for i in torch.randperm(len(drawn), generator=fresh)]
    return check("find_chains", answer, reference_find_chains, cases)
