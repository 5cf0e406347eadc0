"""DecoderLM (the GPT-2-style model) and ``approxdrop bench-transformer``: shapes and causality,
``convert`` on every block's MLP (same Parameters, same eval output, gradients through the kept units),
the character corpus, the race at a tiny size, the CLI, and the checks of bad arguments."""

import dataclasses
import json
import math
import re

import pytest
import torch
from torch.nn import functional as F

from approxdrop import ApproxDropoutFFN, DecoderLM, convert
from approxdrop.data.corpus import Corpus, CorpusInfo, Vocabulary
from approxdrop.experiments import bench_transformer
from approxdrop.experiments.bench_transformer import (
    SIZES,
    TransformerRaceConfig,
    char_corpus,
    format_table,
    linear_work,
    measure_transformer,
    race,
    race_models,
    valid_loss,
)
from approxdrop.experiments.cli import main as cli_main


def small_model(p: float = 0.2, **kwargs) -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(vocab=11, d_model=16, heads=2, layers=2, context=8, p=p, **kwargs)


def test_logits_have_the_vocabulary_on_the_last_axis():
    idx = torch.randint(11, (3, 8))
    assert small_model()(idx).shape == (3, 8, 11)
    assert small_model()(idx[:, :5]).shape == (3, 5, 11)  # shorter than the context


@pytest.mark.parametrize("groups", [None, 1, 4])
def test_future_tokens_do_not_change_past_logits(groups):
    model = small_model()
    if groups is not None:
        convert(model, method="row", groups=groups)
    model.eval()
    idx = torch.randint(11, (4, 8), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[:, 5] = (idx[:, 5] + 1) % 11
    before, after = model(idx), model(changed)  # [4, 8, 11] each
    torch.testing.assert_close(before[:, :5], after[:, :5], rtol=0, atol=0)
    assert (before[:, 5:] - after[:, 5:]).abs().amax(dim=-1).min() > 0  # position 5 and later see the change


def test_the_head_shares_the_embedding_unless_asked_not_to():
    tied, untied = small_model(), small_model(tie_weights=False)
    assert tied.head.weight is tied.tok.weight
    assert untied.head.weight is not untied.tok.weight
    assert len(list(untied.parameters())) == len(list(tied.parameters())) + 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"d_model": 10, "heads": 3}, "d_model must be a multiple of heads=3, got 10"),
        ({"p": 1.0}, r"dropout rate p must be a number in \[0, 1\), got 1.0"),
        ({"context": 0}, r"context must be in \[1, inf\), got 0"),
        ({"layers": 0}, r"layers must be in \[1, inf\), got 0"),
        ({"vocab": 0}, r"vocab must be in \[1, inf\), got 0"),
        ({"d_hidden": 0}, r"d_hidden must be in \[1, inf\), got 0"),
    ],
)
def test_bad_model_arguments_are_named(kwargs, message):
    settings = {"vocab": 11, "d_model": 16, "heads": 2, "layers": 1, "context": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        DecoderLM(**settings)


@pytest.mark.parametrize("shape", [(3, 9), (8,), (2, 0)])
def test_inputs_longer_than_the_context_or_not_batched_are_refused(shape):
    with pytest.raises(ValueError, match=re.escape(f"1 <= T <= context=8, got shape {shape}")):
        small_model()(torch.zeros(shape, dtype=torch.long))


@pytest.mark.parametrize("bad_id", [11, -1])
def test_token_ids_outside_the_vocabulary_are_refused_as_the_lstm_models_do(bad_id):
    """Was a bare IndexError from the embedding (or a wrap-around for -1 on some devices)."""
    idx = torch.tensor([[0, 3, bad_id]])
    with pytest.raises(
        ValueError, match=re.escape(f"token ids must lie in [0, 11), got [{min(bad_id, 0)}, {max(bad_id, 3)}]")
    ):
        small_model()(idx)


@pytest.mark.parametrize("groups", [1, 4])
def test_convert_turns_every_mlp_into_a_block_with_the_same_parameters_and_eval_output(groups):
    model = small_model().eval()
    idx = torch.randint(11, (4, 8), generator=torch.Generator().manual_seed(2))
    expected = model(idx)
    params = [id(q) for q in model.parameters()]
    report = convert(model, method="row", groups=groups)
    assert report.converted == ["blocks.0.mlp.0", "blocks.1.mlp.0"] and report.skipped == []
    for block in model.blocks:
        ffn = block.mlp[0]
        assert isinstance(ffn, ApproxDropoutFFN) and ffn.groups == groups and ffn.p == 0.2 and not ffn.training
    assert [id(q) for q in model.parameters()] == params
    torch.testing.assert_close(model(idx), expected, rtol=0, atol=0)


def test_a_converted_model_trains_and_gradients_reach_only_the_kept_units():
    model = small_model(p=0.5)
    convert(model, method="row", groups=1, generator=torch.Generator().manual_seed(3))
    model.train()
    idx = torch.randint(11, (4, 8), generator=torch.Generator().manual_seed(4))
    x, y = idx[:, :-1], idx[:, 1:]  # [4, 7] each
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    ffn = model.blocks[0].mlp[0]
    kept = torch.zeros(ffn.d_hidden, dtype=torch.bool)
    kept[ffn.last_pattern.kept_indices(ffn.d_hidden)] = True
    grad = ffn.fc1.weight.grad  # [d_hidden, d_model]
    assert 0 < kept.sum() < ffn.d_hidden
    assert (grad[~kept] == 0).all() and (grad[kept].abs().sum(dim=1) > 0).all()
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in model.parameters())

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.7 * losses[0]


def test_race_models_start_from_the_same_weights():
    models = race_models(vocab=11, size=SIZES["tiny"], p=0.3, groups=(1, 4), seed=5)
    assert list(models) == ["nn.Dropout", "row G=1", "row G=4"]
    base = [q.detach() for q in models["nn.Dropout"].parameters()]
    for label in ("row G=1", "row G=4"):
        assert all(isinstance(b.mlp[0], ApproxDropoutFFN) for b in models[label].blocks)
        copies = list(models[label].parameters())
        assert len(copies) == len(base) and all(torch.equal(a, b) for a, b in zip(base, copies))
        assert not any(a is b for a, b in zip(models["nn.Dropout"].parameters(), copies))


def word_corpus(train: str, valid: str) -> Corpus:
    """A tiny word corpus; one line per ``|``-separated part (``<eos>`` at each line's end)."""

    def tokens(text: str) -> list[str]:
        return [t for line in text.split("|") for t in (*line.split(), "<eos>")]

    vocab = Vocabulary(tokens(train))
    ids = [vocab.encode(tokens(text)) for text in (train, valid, valid)]  # [N] each
    return Corpus(*ids, vocab, CorpusInfo("test", "here", len(vocab), *(len(i) for i in ids)))


def test_char_corpus_spells_the_words_with_newlines_and_marks_unknown_ones():
    chars = char_corpus(word_corpus("ab ba | ab", "ba zz | ab"))
    assert chars.alphabet == "\n ?ab"
    text = "".join(chars.alphabet[i] for i in chars.train)
    assert text == "ab ba\nab\n"
    valid = "".join(chars.alphabet[i] for i in chars.valid)
    assert valid == "ba ?\nab\n"  # zz is not a training word: <unk>, spelled "?"
    assert torch.equal(chars.test, chars.valid)  # word_corpus's test split repeats its validation text


def test_valid_loss_is_the_mean_cross_entropy_of_non_overlapping_windows():
    model = small_model().train()
    data = torch.randint(11, (30,), generator=torch.Generator().manual_seed(6))
    windows = 29 // 8  # 3 windows of 8 characters, predicting the next ones
    x, y = data[: windows * 8].view(windows, 8), data[1 : windows * 8 + 1].view(windows, 8)
    model.eval()
    with torch.no_grad():
        expected = float(F.cross_entropy(model(x).flatten(0, 1), y.flatten()))
    model.train()
    assert valid_loss(model, data, context=8, batch=2) == pytest.approx(expected, rel=1e-6)
    assert model.training
    with pytest.raises(ValueError, match="8 validation characters make no window of 8 \\+ 1"):
        valid_loss(model, data[:8], context=8)


def test_linear_work_by_hand():
    size = SIZES["tiny"]  # d 32, 1 block, MLP 32 -> 128 -> 32
    dense = 4 * 32 * 32 + 2 * 32 * 128 + 32 * 40
    assert linear_work(size, 40, 0.3, "nn.Dropout") == 1.0
    assert linear_work(size, 40, 0.3, "row G=4") == pytest.approx((dense - 0.3 * 2 * 32 * 128) / dense)


@pytest.fixture(scope="module")
def words() -> Corpus:
    return word_corpus("the cat sat on the mat | a dog ran " * 20, "the dog sat | a cat ran " * 5)


def test_at_p_zero_every_method_is_the_same_model_on_the_same_batches(words):
    config = TransformerRaceConfig("tiny", p=0.0, steps=4, warmup=1)
    result = race(char_corpus(words), config, groups=(1, 4), progress=False)
    losses = [h.loss for h in result.histories.values()]
    assert len(losses) == 3 and all(len(h) == 4 for h in losses)
    for other in losses[1:]:
        assert other == pytest.approx(losses[0], rel=1e-5)
    assert len({round(h.metric[-1], 5) for h in result.histories.values()}) == 1


def test_a_copys_numbers_do_not_depend_on_the_other_copies_in_the_race(words):
    # each copy draws its patterns, and every model its nn.Dropout masks, from streams of its own (race_seed)
    config = TransformerRaceConfig("tiny", p=0.3, steps=4, warmup=1)
    both = race(char_corpus(words), config, groups=(1, 4), progress=False).histories
    alone = race(char_corpus(words), config, groups=(4,), progress=False).histories
    for label in ("nn.Dropout", "row G=4"):
        assert both[label].loss == alone[label].loss and both[label].metric == alone[label].metric, label
    reseeded = race(char_corpus(words), dataclasses.replace(config, seed=1), groups=(4,), progress=False).histories
    assert reseeded["row G=4"].loss != alone["row G=4"].loss


def test_race_calls_back_while_it_trains(words):
    """The live panels of lab 08 redraw from the callback: every callback_every steps and after the last."""
    seen = []
    config = TransformerRaceConfig("tiny", p=0.3, steps=5, warmup=1)
    race(char_corpus(words), config, groups=(4,), progress=False, callback=lambda r, step: seen.append(step),
         callback_every=2)  # fmt: skip
    assert seen and seen[-1] == 5 and len(seen) >= 3


def test_measure_transformer_gives_one_row_per_p_and_method(words):
    rows = measure_transformer("tiny", (0.1, 0.3), seeds=(0, 1), steps=3, warmup=1, progress=False, corpus=words)
    assert [(r.p, r.method) for r in rows] == [(p, m) for p in (0.1, 0.3) for m in ("nn.Dropout", "row G=1", "row G=4")]
    for r in rows:
        assert len(r.valid_losses) == 2 and r.ms_per_step > 0 and r.diverged == 0
        assert r.valid_loss_mean == pytest.approx(sum(r.valid_losses) / 2)
    base = rows[0]
    assert base.ratio_to_dropout == 1.0 and base.gap_percent == 0.0
    assert rows[2].gap_percent == pytest.approx(100 * (rows[2].valid_loss_mean / base.valid_loss_mean - 1))
    table = format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| 0.3 | row G=4 |" in table


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ps": (0.1, 0.1)}, r"ps must be a non-empty list of distinct values, got \[0.1, 0.1\]"),
        ({"seeds": ()}, r"seeds must be a non-empty list of distinct values, got \[\]"),
        ({"groups": (0,)}, r"groups must be in \[1, inf\), got 0"),
        ({"ps": (1.5,)}, r"dropout rate p must be a number in \[0, 1\), got 1.5"),
        ({"size": "huge"}, "size must be one of"),
        ({"steps": 0}, r"steps must be in \[1, inf\), got 0"),
        ({"lr": -1.0}, "lr must be a finite number > 0, got -1.0"),
        ({"steps": 2, "warmup": 5}, r"warmup \(5\) must be below steps \(2\)"),
    ],
)
def test_measure_transformer_rejects_bad_arguments_before_training(monkeypatch, kwargs, message):
    monkeypatch.setattr(bench_transformer, "load_corpus", lambda *a, **k: pytest.fail("loaded data"))
    with pytest.raises(ValueError, match=message):
        measure_transformer(progress=False, **kwargs)


def test_the_command_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "transformer.json"
    argv = ["--size", "tiny", "--steps", "2", "--warmup", "0", "--ps", "0.1", "0.3", "--seeds", "0", "1"]
    assert cli_main(["bench-transformer", *argv, "--no-progress", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "DecoderLM tiny: d_model 32" in printed and "characters of" in printed
    for p in ("0.1", "0.3"):
        for method in ("nn.Dropout", "row G=1", "row G=4"):
            assert f"| {p} | {method} |" in printed
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 6 and all(math.isfinite(r["valid_loss_mean"]) for r in data["rows"])


def test_the_command_shows_one_bar_for_all_races(capsys):
    argv = ["--size", "tiny", "--steps", "2", "--warmup", "0", "--ps", "0.1", "--seeds", "0", "1", "--groups", "1"]
    assert cli_main(["bench-transformer", *argv]) == 0
    err = capsys.readouterr().err
    assert "bench-transformer: 100%" in err and " 4/4 " in err and "training" not in err  # 2 seeds x 2 steps


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ps", "1.0"], r"argument --ps: must be a dropout rate in \[0, 1\), got 1.0"),
        (["--steps", "0"], "argument --steps: must be an int >= 1, got 0"),
        (["--groups", "0"], "argument --groups: must be an int >= 1, got 0"),
        (["--warmup", "-1"], "argument --warmup: must be an int >= 0, got -1"),
        (["--size", "huge"], "argument --size: invalid choice: 'huge'"),
        (["--seeds", "0", "0"], "argument --seeds: 0 is given twice, got 0 0"),
        (["--groups", "4", "4"], "argument --groups: 4 is given twice, got 4 4"),
        (["--ps", "0.1", "0.1"], "argument --ps: 0.1 is given twice, got 0.1 0.1"),
        (["--lr", "0"], "lr must be a finite number > 0, got 0.0"),
    ],
)
def test_bad_options_are_refused_before_any_run(monkeypatch, capsys, extra, message):
    monkeypatch.setattr(bench_transformer, "measure_transformer", lambda *a, **k: pytest.fail("ran"))
    monkeypatch.setattr(bench_transformer, "load_corpus", lambda *a, **k: pytest.fail("loaded data"))
    assert cli_main(["bench-transformer", "--no-progress", *extra]) == 2
    assert re.search(message, capsys.readouterr().err)
