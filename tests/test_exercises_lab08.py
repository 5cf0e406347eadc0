"""Lab 08: the reference solution passes the chain-matcher checker, plausible wrong matchers fail naming
the case, the TODO stub is "not attempted", the checker's reference is what ``convert`` does, and the
conversion check passes a converted model and fails a copy or a changed one."""

import copy
import importlib.util
import re
from pathlib import Path

import nbformat
import pytest
import torch
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear
from wrong_answers import FIND_CHAINS, WRONG_TYPES, chains_where, with_nan

from approxdrop import DecoderLM, convert
from approxdrop.course.checks import describe
from approxdrop.course.exercises import lab08

LABS = Path(__file__).resolve().parents[1] / "labs"
NOTEBOOK = LABS / "08_ard_in_your_own_model.ipynb"


def solutions():
    spec = importlib.util.spec_from_file_location("solutions_lab08", LABS / "solutions" / "lab08.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOL = solutions()


def todo(seq):
    raise NotImplementedError


def test_solution_passes_and_todo_is_not_attempted(capsys):
    assert lab08.check_find_chains(SOL.find_chains).status == "pass"
    assert lab08.check_find_chains(todo).status == "not attempted"
    out = capsys.readouterr().out
    cases = len(lab08.CASES) + len(lab08.UNSEEN_ACTIVATIONS) + lab08.DRAWN
    assert (
        cases == 47 and f"[PASS] find_chains (max difference 0): {cases} cases\n" in out and "[TODO] find_chains" in out
    )


@pytest.mark.parametrize("name", list(FIND_CHAINS))
def test_wrong_matcher_fails_naming_the_case_and_why(name, capsys):
    answer, why = FIND_CHAINS[name]
    assert lab08.check_find_chains(answer).status == "fail"
    out = capsys.readouterr().out
    assert out.startswith("[FAIL] find_chains: on input (seq=<Sequential>) (case ") and why in out, out
    assert re.search(r"The case \([^)]+\): \[0\] ", out), out  # the case, spelled out entry by entry


def test_the_cases_cover_what_the_brief_lists():
    expected = {note: SOL.find_chains(seq) for note, seq in lab08.CASES}
    assert len(lab08.CASES) >= 10 and [] in expected.values()
    assert expected["two chains with a LayerNorm between them"] == [0, 5]
    assert expected["two adjacent chains (the second starts right after the first)"] == [0, 4]
    assert expected["two overlapping chains sharing the middle Linear: only the first is a block"] == [0]
    for note in ("a Softmax instead of GELU", "Dropout not between two Linears", "sizes that do not chain"):
        assert expected[note] == []
    assert expected[
        "a subclass of nn.Linear that keeps its forward counts, as torch's NonDynamicallyQuantizableLinear"
    ] == [0]
    for note in ("a subclass of nn.Linear with a forward of its own is not a Linear to convert",
                 "nn.Dropout with p = 1 drops every unit: no block"):  # fmt: skip
        assert expected[note] == []
    assert expected["nn.Dropout with p = 0 is still a chain: a block takes any rate below 1"] == [0]
    for note in ("a LayerNorm where the activation goes: it mixes units",
                 "a Linear where the activation goes: it mixes units",
                 "a PReLU with one slope per unit is not elementwise"):  # fmt: skip
        assert expected[note] == []


@pytest.mark.parametrize("note, seq", lab08.CASES, ids=[note for note, _ in lab08.CASES])
def test_the_reference_is_what_convert_replaces_and_chain_problem_agrees(note, seq):
    """Each start the reference names is a block of the converted copy, in order; ``chain_problem``
    finds no problem exactly there and at the overlapping chain only."""
    entries = list(seq)
    starts = lab08.reference_find_chains(seq)
    assert list(seq) == entries  # the case itself is left as it was: the reference converts a copy
    converted = copy.deepcopy(seq)
    report = convert(converted)
    assert len(report.converted) == len(starts)
    clean = [i for i in range(len(seq)) if lab08.chain_problem(seq, i) is None]
    assert starts == [i for i in clean if not any(j < i <= j + 3 for j in starts)]


def test_the_solution_and_chain_problem_follow_convert_on_drawn_sequentials():
    """Drawn cases hold Linear subclasses (one that keeps nn.Linear's forward, one with its own) and Dropouts
    of p = 1; on each, the solution and ``chain_problem`` say what ``convert`` does."""
    seen, slot = set(), set()
    for seed in range(200):
        seq = lab08.random_sequential(torch.Generator().manual_seed(seed))
        starts = lab08.reference_find_chains(seq)
        assert SOL.find_chains(seq) == starts, lab08.layers_text(seq)
        clean = [i for i in range(len(seq)) if lab08.chain_problem(seq, i) is None]
        assert starts == [i for i in clean if not any(j < i <= j + 3 for j in starts)], lab08.layers_text(seq)
        seen |= {type(m) for m in seq} | {m.p for m in seq if type(m) is nn.Dropout}
        mods = list(seq)
        slot |= {  # what sits between a Linear and a dropout: the activation slot
            lab08._layer(b) for a, b, c in zip(mods, mods[1:], mods[2:]) if isinstance(a, nn.Linear) and _dropout(c)
        }
    assert {NonDynamicallyQuantizableLinear, lab08.ClampedLinear, 1.0, 0.0} <= seen
    assert {"Softmax", "LayerNorm", "BatchNorm1d", "Linear"} <= {name.split("(")[0] for name in slot}, slot
    assert any(name.startswith("PReLU(") for name in slot) and "PReLU" in slot, slot  # PReLU(n) and PReLU(1)


def _dropout(m):
    return isinstance(m, nn.modules.dropout._DropoutNd)


def test_a_transformer_block_mlp_is_one_chain():
    mlp = DecoderLM(10, d_model=8, heads=2, layers=1, context=4).blocks[0].mlp
    assert lab08.reference_find_chains(mlp) == SOL.find_chains(mlp) == [0]


def test_a_matcher_that_converts_its_input_is_judged_on_the_case_as_given(capsys):
    def converts_first(seq):
        convert(seq)  # now seq holds a block instead of the chain: no chain left to find
        return SOL.find_chains(seq)

    assert lab08.check_find_chains(converts_first).status == "fail"
    assert "(case 1 of " in capsys.readouterr().out


FIXED_ACTIVATIONS = (nn.GELU, nn.ReLU, nn.SiLU, nn.Tanh, nn.Hardswish, nn.PReLU)  # those the fixed cases show


def hard_coded_activations(seq):
    """A matcher right in every respect but one: it knows only the fixed cases' activations."""

    def accept(a, b, c, d):
        linears = SOL.is_linear(a) and SOL.is_linear(d) and a.out_features == d.in_features
        one_slope = type(b) is not nn.PReLU or b.num_parameters == 1  # PReLU(n): a slope per unit, not elementwise
        return linears and type(b) in FIXED_ACTIVATIONS and one_slope and type(c) is nn.Dropout and c.p < 1

    return chains_where(seq, accept)


TABLE = {lab08.layers_text(seq): SOL.find_chains(seq) for _, seq in lab08.CASES}


@pytest.mark.slow  # long: left out of the fast tier (CI runs it)
@pytest.mark.parametrize(
    "answer",
    [hard_coded_activations, lambda seq: TABLE.get(lab08.layers_text(seq), [])],
    ids=["hard-coded-activations", "table-of-fixed-cases-else-empty"],
)
def test_a_hard_coded_activation_list_or_a_table_fails_at_every_seed(answer, monkeypatch, capsys):
    for seed in range(60):
        monkeypatch.setattr(lab08, "fresh_generator", lambda seed=seed: torch.Generator().manual_seed(seed))
        assert lab08.check_find_chains(answer).status == "fail", (seed, capsys.readouterr().out)
        assert "drawn anew at this call" in capsys.readouterr().out
    assert all(lab08.is_elementwise(lab08._new(kind)) for kind in lab08.UNSEEN_ACTIVATIONS)


def empties(seq):
    starts = SOL.find_chains(seq)
    for name in list(seq._modules):
        del seq._modules[name]
    return starts


def zeroes_weights(seq):
    starts = SOL.find_chains(seq)
    with torch.no_grad():
        for module in seq:
            if isinstance(module, nn.Linear):
                module.weight.zero_()
    return starts


def converts_after(seq):
    starts = SOL.find_chains(seq)
    convert(seq)
    return starts


def sets_dropout_rates(seq):
    starts = SOL.find_chains(seq)
    for i in starts:
        seq[i + 2].p = 0.0  # a setting, not a tensor: still a change to the input
    return starts


@pytest.mark.parametrize(
    "answer, changed",
    [
        (empties, "seq"),
        (zeroes_weights, "seq.0.weight"),
        (converts_after, "seq"),
        (lambda s: SOL.find_chains(s.double()), "seq.0.weight"),
        (sets_dropout_rates, "seq.2.p"),
    ],
    ids=["empties-seq", "zeroes-weights", "converts-seq", "converts-dtype", "sets-dropout-p"],
)
def test_a_matcher_that_changes_its_input_module_fails_naming_what_changed(answer, changed, capsys):
    assert lab08.check_find_chains(answer).status == "fail"
    assert (
        f"(case 1 of {len(lab08.CASES) + len(lab08.UNSEEN_ACTIVATIONS) + lab08.DRAWN}) it changed {changed} in place"
        in capsys.readouterr().out
    )


def test_every_todo_cell_has_a_reference_solution():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    todo_cells = [c.source for c in nb.cells if c.cell_type == "code" and "raise NotImplementedError" in c.source]
    assert len(todo_cells) == 1
    for source in todo_cells:
        name = source.split("def ", 1)[1].split("(", 1)[0]
        assert callable(getattr(SOL, name)), name
        assert re.search(rf"lab08\.check_\w+\({name}\)", source), source


def test_nan_answer_fails_naming_case_and_element(capsys):
    assert lab08.check_find_chains(with_nan(SOL.find_chains)).status == "fail"
    out = capsys.readouterr().out
    assert out.startswith("[FAIL]") and "(case 1 of " in out and " nan, expected " in out


@pytest.mark.parametrize("answer", WRONG_TYPES, ids=repr)
def test_wrong_type_fails_saying_what_was_expected(answer, capsys):
    assert lab08.check_find_chains(lambda seq: answer).status == "fail"
    out = capsys.readouterr().out
    assert out.startswith("[FAIL]") and f"it returned {describe(answer)}, expected a " in out


def converted_model():
    torch.manual_seed(0)
    model = DecoderLM(11, d_model=16, heads=2, layers=2, context=6, p=0.2)
    x = torch.randint(11, (3, 6))  # [B, T]
    params = list(model.parameters())
    with torch.no_grad():
        before = model.eval()(x)  # [B, T, V]
    return model, params, x, before


def test_the_conversion_check_passes_a_converted_model(capsys):
    model, params, x, before = converted_model()
    assert len(convert(model.train(), method="row", groups=2).converted) == 2
    result = lab08.check_conversion(model, params, x, before)
    assert result.passed and result.max_diff <= 1e-6 and model.training  # the mode is restored
    assert capsys.readouterr().out.startswith("[PASS] convert kept the model")


def test_the_conversion_check_fails_copied_parameters_and_changed_outputs(capsys):
    model, params, x, before = converted_model()
    copied = copy.deepcopy(model)
    convert(copied)
    result = lab08.check_conversion(copied, params, x, before)
    assert result.status == "fail" and "NOT the objects of before" in result.detail
    convert(model)
    with torch.no_grad():
        model.blocks[1].mlp[0].fc1.weight.mul_(3.0)  # the same objects, another function
    result = lab08.check_conversion(model, params, x, before)
    assert result.status == "fail" and "eval output CHANGED" in result.detail and result.max_diff > 0.05
    assert capsys.readouterr().out.count("[FAIL] convert kept the model") == 2
    assert lab08.check_conversion(model, params, x, before[:, :2]).status == "fail"


def test_the_checked_module_names_exist():
    assert isinstance(lab08.CASES[0][1], nn.Sequential) and callable(lab08.is_elementwise)
