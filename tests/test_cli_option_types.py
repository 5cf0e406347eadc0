"""The shared option types and checks of ``experiments.options`` at their bounds: each accepts its last valid
value and refuses the first invalid one; repeats, devices, --json clashes and the JSON record."""

import argparse
import json
from pathlib import Path

import pytest

from approxdrop.experiments import options
from approxdrop.experiments.options import (
    SEED_MAX,
    Distinct,
    apply_common,
    check_json_apart,
    finite_or_null,
    int_at_least,
    non_negative_int,
    positive_int,
    random_seed,
    rate,
    threads,
    write_record,
)


@pytest.mark.parametrize(
    "parse, good, want, bad, message",
    [
        (positive_int, "1", 1, "0", "must be an int >= 1, got 0"),
        (non_negative_int, "0", 0, "-1", "must be an int >= 0, got -1"),
        (random_seed, str(SEED_MAX), 2**63 - 1, str(SEED_MAX + 1), "must be a seed in"),
        (random_seed, "0", 0, "-1", "must be a seed in"),
        (rate, "0.999", 0.999, "1", r"must be a dropout rate in \[0, 1\), got 1.0"),
        (int_at_least(4, "two steps"), "4", 4, "3", r"must be an int >= 4 \(two steps\), got 3"),
    ],
)
def test_an_option_type_takes_its_bound_and_refuses_one_past_it(parse, good, want, bad, message):
    assert parse(good) == want
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(bad)


def test_threads_take_the_cpu_count_and_refuse_one_more(monkeypatch):
    monkeypatch.setattr(options, "max_threads", lambda: 3)
    assert threads("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="must be at most 3 .*got 4"):
        threads("4")


@pytest.mark.parametrize("values", [["1", "1"], ["1", "2", "2"], ["1", "2", "1"]])
def test_distinct_refuses_a_repeat_wherever_it_stands(values, capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--xs", type=int, nargs="+", action=Distinct)
    with pytest.raises(SystemExit):
        parser.parse_args(["--xs", *values])
    assert "is given twice" in capsys.readouterr().err
    assert parser.parse_args(["--xs", "1", "2", "3"]).xs == [1, 2, 3]


def test_a_device_other_than_cpu_or_cuda_is_a_usage_error(capsys):
    parser = argparse.ArgumentParser()
    args = argparse.Namespace(device="meta", json=None, threads=None)
    with pytest.raises(SystemExit):
        apply_common(args, parser)
    assert "--device meta: timings need a cpu or cuda device" in capsys.readouterr().err


def test_json_that_is_the_output_folder_itself_is_a_usage_error(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    with pytest.raises(SystemExit):
        check_json_apart(parser, tmp_path / "out", "--out", tmp_path / "out", ["results.md"])
    assert "is --out" in capsys.readouterr().err
    check_json_apart(parser, tmp_path / "out" / "record.json", "--out", tmp_path / "out", ["results.md"])  # allowed


def test_the_record_nulls_non_finite_floats_in_tuples_and_leaves_out_private_state(tmp_path):
    assert finite_or_null({"a": (1.0, float("nan")), "b": [float("inf")]}) == {"a": [1.0, None], "b": [None]}
    args = argparse.Namespace(json=tmp_path / "r.json", device="cpu", lrs=(0.1, float("inf")), _interrupted=True)
    write_record(args, [{"loss": (float("nan"), 2.0)}], machine="here")
    record = json.loads(Path(args.json).read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert record == {
        "machine": "here",
        "args": {"json": str(tmp_path / "r.json"), "device": "cpu", "lrs": [0.1, None]},
        "rows": [{"loss": [None, 2.0]}],
    }
