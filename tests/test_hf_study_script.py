"""benchmarks/hf_dropout_study.py at a tiny size: every variant of each model trains and is evaluated, the learning
rate is chosen by the pilot's validation perplexity, runs are cached by their settings, and the variants put their
dropout where they say."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed (pip install approxdrop[test])")

TINY = ["--d-model", "16", "--d-hidden", "32", "--layers", "1", "--heads", "2", "--batch", "4", "--bptt", "8"]
TINY += ["--train-tokens", "600", "--epochs", "2", "--pilot-epochs", "1", "--seeds", "2", "--no-progress"]


def script():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "hf_dropout_study.py"
    spec = importlib.util.spec_from_file_location("hf_dropout_study", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_study_runs_every_variant_picks_rates_by_validation_and_reuses_its_runs(tmp_path, capsys, monkeypatch):
    study = script()
    argv = TINY + ["--ps", "0.3", "--lrs", "1e-3", "3e-3", "--out", str(tmp_path)]
    assert study.main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["none", "dropout", "row", "row-g4"]
    runs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")}
    assert len(runs) == 4 * (2 + 2)  # per variant: a pilot per rate, a run per seed
    for variant in ("none", "dropout", "row", "row-g4"):
        p = 0.0 if variant == "none" else 0.3
        pilots = {lr: runs[f"pilot-{variant}-p{p}-lr{lr}"]["result"]["valid_at_best"] for lr in (0.001, 0.003)}
        chosen = runs[f"run-{variant}-p{p}-seed0"]["settings"]["lr"]
        assert chosen == min(pilots, key=pilots.get)
        result = runs[f"run-{variant}-p{p}-seed1"]["result"]
        assert len(result["valid_ppl"]) == 2 and result["valid_at_best"] == min(result["valid_ppl"])
        assert all(1.0 < v < 1e4 for v in result["valid_ppl"]) and 1.0 < result["test_at_best"] < 1e4

    def no_training(*args, **kwargs):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(study, "train_run", no_training)
    assert study.main(argv) == 0  # every run read from its file
    with pytest.raises(AssertionError, match="trained again"):
        study.main(argv[:-2] + ["--out", str(tmp_path), "--epochs", "3"])  # other settings: not reused


def test_each_variant_drops_the_mlp_hidden_units_as_it_says():
    study = script()
    size = dict(d_model=16, d_hidden=32, layers=2, heads=2, batch=4, bptt=8, train_tokens=None)
    ids = torch.randint(50, (4, 8))
    seen, mlps = {}, {}
    for variant in ("none", "dropout", "row"):
        model = study.model_for("llama", 50, size, variant, 0.5, seed=0)
        hidden, mlps[variant] = [], model.model.layers[0].mlp
        mlps[variant].down_proj.register_forward_pre_hook(lambda m, args, hidden=hidden: hidden.append(args[0]))
        model.train()(input_ids=ids)
        seen[variant] = hidden
    assert not (seen["none"][0] == 0).any()
    assert (seen["dropout"][0] == 0).float().mean() > 0.3  # per element: few units dropped for every token
    assert (seen["dropout"][0] == 0).flatten(0, 1).all(0).float().mean() < 0.2
    # converted (a hook on down_proj makes the block call its parts: the masked path, the same pattern): the units
    # the step's row pattern drops, for every token of the batch
    kept = mlps["row"].ffn.last_pattern.keep_mask(32)
    assert torch.equal((seen["row"][0] == 0).flatten(0, 1).all(0), ~kept) and 0 < kept.sum() < 32
    block = study.model_for("llama", 50, size, "row-g4", 0.5, seed=0).model.layers[0].mlp
    assert type(block).__name__ == "GatedApproxDropoutFFN" and block.ffn.groups == 4


def test_bad_arguments_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        script().main(["--ps", "1.5"])
    assert exit_info.value.code == 2 and "--ps must lie in (0, 1)" in capsys.readouterr().err


def test_the_gpt2_study_trains_on_characters_and_runs_the_variants_asked_for(tmp_path, capsys):
    argv = TINY + ["--model", "gpt2", "--ps", "0.2", "--lrs", "3e-3", "--out", str(tmp_path)]
    assert script().main(argv + ["--variants", "row-g4"]) == 0
    assert {p.name.split("-p")[0] for p in (tmp_path / "runs").glob("*.json")} == {"pilot-row-g4", "run-row-g4"}
    capsys.readouterr()
    assert script().main(argv) == 0  # every variant; row-g4's runs read from their files
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["none", "dropout", "row", "row-g4"]
    assert "GPT2LMHeadModel" in out and "pydoc corpus as chars (600 training tokens, vocabulary 4" in out
    runs = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("run-*.json")]
    assert len(runs) == 4 * 2 and all(run["settings"]["model"] == "gpt2" for run in runs)
    # characters: the perplexity lies between a certain guess (1) and a uniform one over the alphabet (about 40)
    assert all(1.0 < v < 60 for run in runs for v in run["result"]["valid_ppl"])
    assert (tmp_path / "results.md").read_text().strip() == "\n".join(out.strip().splitlines()[-len(rows) - 4 :])


def test_each_gpt2_variant_drops_the_residual_outputs_as_it_says():
    study = script()
    size = dict(d_model=16, d_hidden=32, layers=2, heads=2, batch=4, bptt=8, train_tokens=None)
    ids = torch.randint(40, (4, 8))
    seen = {}
    for variant in ("none", "dropout", "row"):
        model = study.model_for("gpt2", 40, size, variant, 0.5, seed=0)
        mlp = model.transformer.h[0].mlp
        mlp.register_forward_hook(lambda m, args, out, variant=variant: seen.__setitem__(variant, out))
        model.train()(input_ids=ids)
        if variant == "row":
            kept = mlp.c_proj.last_pattern.keep_mask(16)
    assert not (seen["none"] == 0).any()
    assert (seen["dropout"] == 0).float().mean() > 0.3  # per element
    assert (seen["dropout"] == 0).flatten(0, 1).all(0).float().mean() < 0.2
    # converted: the output features the step's row pattern drops, for every token of the batch
    assert torch.equal((seen["row"] == 0).flatten(0, 1).all(0), ~kept) and 0 < kept.sum() < 16
    model = study.model_for("gpt2", 40, size, "row", 0.5, seed=0)
    blocks = [m for m in model.modules() if type(m).__name__ == "OutputRowDropout"]
    assert len(blocks) == 4 and all(b.p == 0.5 for b in blocks)  # attention and MLP outputs of both layers
    assert model.transformer.drop.p == 0 and all(h.attn.attn_dropout.p == 0 for h in model.transformer.h)
    grouped = study.model_for("gpt2", 40, size, "row-g4", 0.5, seed=0)
    assert [m.groups for m in grouped.modules() if type(m).__name__ == "OutputRowDropout"] == [4] * 4
