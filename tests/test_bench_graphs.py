"""approxdrop bench-graphs: eager against compiled steps, side by side; the static model compiles one graph
per (dp, keep) class, never per offset."""

import json
from fractions import Fraction

import pytest

from approxdrop.experiments.bench_graphs import STEPS, GraphRow, format_table, single_class_law
from approxdrop.experiments.cli import build_parser
from approxdrop.experiments.cli import main as cli_main

QUICK = ["--threads", "1", "--warmup", "2", "--rounds", "2", "--steps", "3", "--no-progress", "--backend", "eager"]


def test_bench_graphs_times_every_step_and_the_static_model_needs_one_graph(tmp_path, capsys):
    out = tmp_path / "graphs.json"
    assert cli_main(["bench-graphs", *QUICK, "--no-paper", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    for step in STEPS:
        assert f"| {step} |" in table
    rows = {r["step"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["bernoulli eager"]["ratio"] == 1.0 and rows["row eager"]["graphs"] is None
    for label in ("row static compiled", "row-g4 static compiled"):  # 4 steps, many offsets, one graph
        assert rows[label]["bound"] == 1 and rows[label]["graphs"] == 1, label
    assert all(r["ms_per_step"] > 0 for r in rows.values())


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_single_class_law_keeps_exactly_one_minus_p_where_a_small_period_can(p):
    ((dp, keep),) = single_class_law(p).pairs
    assert Fraction(keep, dp) == Fraction(1 - p).limit_denominator(16) and 1 <= keep <= dp <= 16


@pytest.mark.parametrize("p", [0.33, 0.99])
def test_a_rate_with_no_small_period_is_refused_in_one_line(p, capsys):
    assert cli_main(["bench-graphs", "--p", str(p), "--no-paper", "--backend", "eager", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: p {p} is not 1 - keep/dp for any period dp <= 16" in err and "Traceback" not in err


def test_table_shows_graphs_with_their_bound():
    rows = [
        GraphRow("tiny", "row static compiled", 0.5, 1.2, 3, 4),
        GraphRow("tiny", "row eager", 0.4, 1.0, None, None),
    ]
    table = format_table(rows)
    assert (
        "| tiny | row static compiled | 0.500 | 1.20 | 3 (4) |" in table
        and "| tiny | row eager | 0.400 | 1.00 |  |" in table
    )


def test_bad_rate_is_refused_before_any_run(capsys):
    assert cli_main(["bench-graphs", *QUICK, "--p", "1.5"]) == 2
    assert "must be a dropout rate" in capsys.readouterr().err


def test_an_unknown_backend_is_refused_before_any_run(capsys):
    assert cli_main(["bench-graphs", *QUICK, "--no-paper", "--backend", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "error: argument --backend: must be a torch.compile backend (" in err and "got 'nosuch'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("backend", ["inductor", "eager", "aot_eager"])
def test_the_usual_backends_are_accepted(backend):
    assert build_parser().parse_args(["bench-graphs", "--backend", backend]).backend == backend


def test_each_compiled_step_counts_its_own_graphs_even_where_an_earlier_step_made_the_same_one():
    import torch

    from approxdrop.experiments.bench_graphs import steps_for

    torch._dynamo.reset()
    # p = 0: every model computes the same graph, which Dynamo would reuse across steps of one process
    steps, bound = steps_for((8, 16, 16, 2), 4, 0.0, torch.device("cpu"), "eager")
    for label in STEPS:
        steps[label]()
        steps[label]()
    graphs = {label: steps[label].graphs for label in STEPS if "compiled" in label}
    assert bound == 1 and graphs == {"bernoulli compiled": 1, "row static compiled": 1, "row-g4 static compiled": 1}


def test_bench_graphs_names_the_machine_like_every_other_command(monkeypatch, capsys):
    from approxdrop.experiments import bench_graphs

    monkeypatch.setattr(
        bench_graphs, "measure", lambda args: [GraphRow("tiny", "bernoulli eager", 0.5, 1.0, None, None)]
    )
    monkeypatch.setattr(bench_graphs, "describe_machine", lambda device: f"THE MACHINE ({device})", raising=False)
    assert cli_main(["bench-graphs", "--no-paper", "--device", "cpu", "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "eager against compiled steps at p = 0.5; THE MACHINE (cpu)"
