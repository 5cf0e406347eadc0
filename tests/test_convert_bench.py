"""bench-convert: both models convert every feed-forward, the table and the record are written, bad
arguments are usage errors."""

import json

import pytest

from approxdrop.experiments import bench_convert
from approxdrop.experiments.cli import main

TINY = bench_convert.Size(d_model=16, d_hidden=32, heads=2, layers=2, sequence=4, batch=2)


def test_measure_converts_every_feed_forward_and_times_both():
    models = ("encoder", "t5", "gpt2", "bert", "llama", "phi3") if _has_transformers() else ("encoder",)
    rows = bench_convert.measure(models, size=TINY, warmup=0, rounds=2, progress=False)
    assert [r.model for r in rows] == list(models)
    # T5: 2 encoder + 2 decoder blocks; GPT-2 and BERT: two output-side projections per layer (attention, MLP)
    assert [r.converted_blocks for r in rows] == [2, 4, 4, 4, 2, 2][: len(models)]
    for r in rows:
        assert (
            r.ms_unconverted > 0 and r.ms_converted > 0 and r.ratio == pytest.approx(r.ms_converted / r.ms_unconverted)
        )
    assert "| nn.TransformerEncoder | 2 |" in bench_convert.format_table(rows, TINY)


def test_the_cli_writes_the_table_and_the_record(tmp_path, capsys):
    out = tmp_path / "convert.json"
    argv = ["bench-convert", "--models", "encoder", "--d-model", "16", "--d-hidden", "32", "--heads", "2"]
    argv += ["--sequence", "4", "--batch", "2", "--warmup", "0", "--rounds", "2", "--threads", "1"]
    assert main(argv + ["--no-progress", "--json", str(out)]) == 0
    assert "| nn.TransformerEncoder | 2 |" in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"][0]["converted_blocks"] == 2


@pytest.mark.parametrize("name", ["t5", "gpt2", "bert", "phi3"])
def test_the_special_tokens_of_the_hf_models_are_in_their_vocabulary(name):
    if not _has_transformers():
        pytest.skip("transformers is not installed")
    config = bench_convert.BUILDERS[name](TINY, 0.1)[0].config
    ids = {key: value for key, value in config.to_dict().items() if key.endswith("_token_id") and value is not None}
    assert ids and all(0 <= value < config.vocab_size for value in ids.values()), ids


@pytest.mark.parametrize("name", ["llama", "phi3"])
def test_the_unconverted_twin_of_a_model_without_mlp_dropout_drops_its_hidden_units_as_nn_dropout_does(name):
    """Llama's and Phi-3's MLPs have no dropout: the converted twin gets row patterns at p, the unconverted one
    F.dropout at the same place (the input of down_proj), so the two steps do the same kind of work."""
    if not _has_transformers():
        pytest.skip("transformers is not installed")
    torch = pytest.importorskip("torch")
    model, twin, forward, report = bench_convert._converted_twins(name, TINY, 0.5, "row", 0, torch.device("cpu"))
    assert report.converted == ["layers.0.mlp", "layers.1.mlp"] and set(report.rates.values()) == {0.5}
    ids = torch.randint(256, (2, 4))
    hidden = []
    model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda linear, args: hidden.append(args[0]))
    forward(model.train(), ids)
    assert (hidden[0] == 0).float().mean() > 0.3  # about half of the hidden units dropped, per element
    forward(model.eval(), ids)
    assert (hidden[1] == 0).sum() == 0  # eval: nothing dropped
    assert not twin.layers[0].mlp.down_proj._forward_pre_hooks  # the hook went on the unconverted model only


@pytest.mark.parametrize(
    "argv", [["--models", "vit"], ["--d-model", "10", "--heads", "4"], ["--method", "tile"], ["--p", "1.5"]]
)
def test_bad_arguments_are_usage_errors(argv, capsys):
    assert main(["bench-convert", *argv, "--no-progress"]) == 2
    assert "error:" in capsys.readouterr().err


def test_a_method_that_converts_nothing_is_refused_before_any_timing(capsys):
    argv = ["--models", "encoder", "--method", "row-extended", "--p", "0.99", "--rounds", "1", "--warmup", "0"]
    assert main(["bench-convert", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error: model encoder: convert(method='row-extended', p=0.99) made no block (layers.0.dropout: " in err


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True
