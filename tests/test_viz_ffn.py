"""Lab 08's figures: the FLOPs of every Linear GEMM of a transformer block before and after ``convert``
(checked against PyTorch's FLOP counter on a real training step), the p slider's figure, and the race of
``bench_transformer`` redrawn in place from a RaceResult."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from approxdrop.course.viz.ffn import (
    block_flops_floor,
    block_flops_left,
    block_gemm_flops,
    format_block_gemms,
    gemm_flops_figure,
    label_color,
    race_figure,
    race_result_figure,
    update_gemm_flops_figure,
)
from approxdrop.experiments.bench_transformer import VALID_LOSS, TransformerRaceConfig
from approxdrop.models.methods import color
from approxdrop.models.transformer import DecoderBlock
from approxdrop.training import History, RaceResult

MODULES = {"attention qkv": "attn.qkv", "attention proj": "attn.proj", "mlp fc1": "mlp.0", "mlp fc2": "mlp.3"}


def test_before_is_what_pytorch_counts_in_a_training_step_of_a_block():
    """forward = the Linear's addmm, grad input + grad weight = its two mm, per Linear of a real block."""
    batch, context, d_model, d_hidden = 3, 5, 16, 48
    block = DecoderBlock(d_model, heads=2, d_hidden=d_hidden, p=0.5)
    x = torch.randn(batch, context, d_model, requires_grad=True)  # [B, T, d]
    with FlopCounterMode(display=False) as counter:
        block(x).sum().backward()
    counts = counter.get_flop_counts()
    rows = block_gemm_flops(d_model, d_hidden, batch * context, 0.3)
    assert [r.layer for r in rows] == [layer for layer in MODULES for _ in range(3)]
    for layer, module in MODULES.items():
        by_op = {str(op): flops for op, flops in counts[f"DecoderBlock.{module}"].items()}
        forward, grad_input, grad_weight = (r.before for r in rows if r.layer == layer)
        assert forward == by_op["aten.addmm"] and grad_input + grad_weight == by_op["aten.mm"], layer
        assert grad_input == grad_weight == forward


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_after_keeps_one_minus_p_of_the_mlp_gemms_and_all_of_attention(p):
    rows = block_gemm_flops(32, 128, 64, p)
    for r in rows:
        assert r.after == pytest.approx(r.before * ((1 - p) if r.layer.startswith("mlp") else 1.0))
    # d_hidden = 4 d_model: the MLP is 2/3 of the Linear FLOPs, attention 1/3
    assert block_flops_left(32, 128, p) == pytest.approx(1 - 2 * p / 3)
    assert block_flops_floor(32, 128) == pytest.approx(1 / 3)
    assert block_flops_left(32, 256, p) == pytest.approx((4 + 16 * (1 - p)) / 20)


def test_shapes_and_the_text_table():
    rows = block_gemm_flops(8, 32, 10, 0.25)
    fc1 = {r.step: r.shape for r in rows if r.layer == "mlp fc1"}
    assert fc1 == {
        "forward": "[10 x 8] @ [8 x 32]",
        "grad input": "[10 x 32] @ [32 x 8]",
        "grad weight": "[32 x 10] @ [10 x 8]",
    }
    lines = format_block_gemms(rows).splitlines()
    assert len(lines) == 14 and lines[0].startswith("GEMM") and lines[-1].startswith("total")
    assert lines[7].split()[-1] == "0.750" and lines[1].split()[-1] == "1.000"


@pytest.mark.parametrize("name, value", [("p", 1.0), ("p", -0.1), ("d_model", 0), ("d_hidden", 2.5), ("tokens", 0)])
def test_bad_sizes_and_rates_raise_naming_the_value(name, value):
    args = dict(d_model=8, d_hidden=32, tokens=4, p=0.5) | {name: value}
    with pytest.raises(ValueError, match=rf"\b{name} must .*, got {value}$"):
        block_gemm_flops(**args)


def test_figure_bars_marker_and_title_follow_p():
    fig = gemm_flops_figure(16, 64, 32, 0.3)
    before, after, curve, floor, marker = fig.data
    rows = block_gemm_flops(16, 64, 32, 0.3)
    assert list(before.y) == [r.name for r in rows][::-1] and list(before.x) == [r.before for r in rows][::-1]
    assert list(after.x) == pytest.approx([r.after for r in rows][::-1])
    assert list(floor.y) == pytest.approx([1 / 3, 1 / 3]) and curve.y[0] == pytest.approx(1.0)
    assert list(marker.x) == [0.3] and marker.y[0] == pytest.approx(0.8)
    update_gemm_flops_figure(fig, 16, 64, 32, 0.6)
    assert fig.data[4].y[0] == pytest.approx(0.6) and fig.data[1].x[0] == pytest.approx(0.4 * rows[-1].before)
    assert fig.data[0].x == before.x and "p = 0.6" in fig.layout.annotations[0].text
    assert fig.data[1].text[0] == "40%" and fig.data[1].text[-1] == "100%"


def test_race_labels_take_the_colours_of_the_methods_table():
    assert label_color("nn.Dropout") == color("bernoulli")
    assert label_color("row G=1") == color("row") and label_color("row G=4") == color("row-g4")
    assert label_color("row G=3") == color("no such method")  # grey: the table has no such row


def race_result():
    config = TransformerRaceConfig(size="tiny", p=0.2, steps=4, warmup=1)
    histories = {}
    for i, m in enumerate(["nn.Dropout", "row G=4"]):
        histories[m] = History([1, 2, 3, 4], [3.0 - i, 2.5, 2.0, 1.5], [0.01, 0.02, 0.01, 0.03], [4], [2.0 + i])
    return RaceResult(histories, VALID_LOSS, config, {"nn.Dropout": 1.0, "row G=4": 0.9}, "cpu", ("nn.Dropout",))


def test_race_figure_has_three_coloured_traces_per_label_filled_from_the_result():
    empty = race_figure(["nn.Dropout", "row G=1", "row G=4"])
    assert len(empty.data) == 9 and [t.name for t in empty.data[::3]] == ["nn.Dropout", "row G=1", "row G=4"]
    assert [t.line.color for t in empty.data[3:6]] == [color("row")] * 3
    widths = [t.line.width for t in empty.data]  # the baseline wider, so it shows where curves overlap
    assert min(widths[:3]) > max(w or 2 for w in widths[3:])
    assert empty.layout.annotations[1].text == "validation loss (nats / char)"
    assert empty.layout.xaxis2.matches == empty.layout.xaxis3.matches == "x"  # one step axis for the three panels
    fig = race_result_figure(race_result())
    assert list(fig.data[3].x) == [1, 2, 3, 4] and list(fig.data[4].y) == [3.0]
    assert fig.data[5].y[0] == pytest.approx(10.0)  # ms
