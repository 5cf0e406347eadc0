"""Lab 07's figures: the model with its dropout sites, the weight columns each GEMM reads, read masks
measured through autograd, GEMM work per GEMM, and the race redrawn in place from a RaceResult."""

import plotly.graph_objects as go
import pytest
import torch

from approxdrop.course.viz.lm import (
    RECURRENT,
    SITE,
    embedding_read_mask,
    format_gemm_work,
    gemm_work_figure,
    gemm_work_rows,
    model_figure,
    race_figure,
    race_result_figure,
    race_timings,
    read_masks_figure,
    site_names,
    sites_figure,
    update_race_figure,
)
from approxdrop.course.viz.training import running_mean, running_median
from approxdrop.models import lstm_gemm_work
from approxdrop.models.lstm import ApproxDropoutLSTM
from approxdrop.patterns import RowPattern
from approxdrop.training import PERPLEXITY, History, LMRaceConfig, RaceResult


def test_site_names_follow_the_stack():
    assert site_names(2) == ["embedding → LSTM 1", "LSTM 1 → LSTM 2", "LSTM 2 → decoder"]
    assert len(site_names(3)) == 4


@pytest.mark.parametrize("layers, steps", [(2, 3), (3, 4)])
def test_model_figure_marks_a_site_on_every_arrow_up_the_stack_and_none_on_the_recurrent_ones(layers, steps):
    fig = model_figure(layers, steps)
    arrows = [a for a in fig.layout.annotations if a.showarrow]
    up = [a for a in arrows if a.x == a.ax]  # vertical: up the stack
    across = [a for a in arrows if a.y == a.ay]  # horizontal: from t to t + 1
    assert len(up) + len(across) == len(arrows)
    assert sum(a.arrowcolor == SITE for a in up) == steps * (layers + 1)  # the word lookup is not a site
    assert len(across) == layers * (steps - 1) and {a.arrowcolor for a in across} == {RECURRENT}
    sites = fig.data[0]
    assert sites.name == "dropout site" and len(sites.x) == steps * (layers + 1)


def test_sites_figure_reads_the_kept_columns_of_the_input_projections_and_decoder_and_all_of_w_hh():
    patterns = [RowPattern(2, 1), RowPattern(3, 0), RowPattern(4, 2, 3)]
    fig = sites_figure(patterns, [6, 8, 8], hidden=8, vocab=50)
    z = [torch.tensor(t.z[0]) for t in fig.data]
    assert len(z) == 5 and [len(row) for row in z] == [6, 8, 8, 8, 8]
    assert z[0].bool().equal(patterns[0].keep_mask(6)) and z[2].bool().equal(patterns[1].keep_mask(8))
    assert z[4].bool().equal(patterns[2].keep_mask(8))
    assert bool(z[1].all()) and bool(z[3].all())  # the recurrent GEMMs read every column
    assert list(fig.data[4].y) == [0, 50] and list(fig.data[0].y) == [0, 32]
    titles = [a.text for a in fig.layout.annotations]
    assert "3 of 6 columns" in titles[0] and "8 of 8 columns" in titles[1] and "6 of 8 columns" in titles[4]


def test_the_read_mask_of_a_row_model_is_its_pattern_for_every_time_step_and_sample():
    x = torch.randint(40, (7, 3), generator=torch.Generator().manual_seed(0))  # [T, B]
    row = ApproxDropoutLSTM(40, hidden=12, p=0.5, method="row", generator=torch.Generator().manual_seed(1))
    mask = embedding_read_mask(row, x)  # [T, B, E]
    assert mask.shape == (7, 3, 12)
    assert mask.equal(row.last_patterns[0].keep_mask(12).expand(7, 3, 12))
    assert all(p.grad is None for p in row.parameters())
    torch.manual_seed(0)
    bernoulli = embedding_read_mask(ApproxDropoutLSTM(40, hidden=12, p=0.5, method="bernoulli"), x)
    assert not (bernoulli == bernoulli[:1, :1]).all() and 0.2 < bernoulli.float().mean() < 0.8
    fig = read_masks_figure({"row": mask[:, 0], "bernoulli": bernoulli[:, 0]})
    titles = [a.text for a in fig.layout.annotations]
    kept = row.last_patterns[0].kept_count(12)
    assert titles[0].startswith("row: every time step reads the same columns") and f"{12 - kept} of 12" in titles[0]
    assert "changes from step to step" in titles[1]
    assert torch.tensor(fig.data[0].z).bool().equal(mask[:, 0])


@pytest.mark.parametrize("hidden, layers, vocab, p", [(650, 2, 10_000, 0.5), (200, 3, 10_000, 0.3), (32, 1, 99, 0.7)])
def test_gemm_work_rows_add_up_to_the_benchmark_fraction(hidden, layers, vocab, p):
    rows = gemm_work_rows(hidden, layers, vocab, p)
    assert len(rows) == 2 * layers + 1
    assert sum(r.row for r in rows) / sum(r.dense for r in rows) == pytest.approx(
        lstm_gemm_work(hidden, layers, vocab, p, "row")
    )
    assert all(r.row == r.dense for r in rows if r.name.startswith("recurrent"))
    assert all(r.row == pytest.approx((1 - p) * r.dense) for r in rows if not r.name.startswith("recurrent"))


def test_format_gemm_work_ends_with_the_total():
    text = format_gemm_work(gemm_work_rows(650, 2, 10_000, 0.5))
    lines = text.splitlines()
    assert len(lines) == 7 and lines[-1].split() == ["total", "13,260,000", "8,320,000", "0.627"]


def test_gemm_work_figure_shows_the_floor_of_the_recurrent_gemms():
    fig = gemm_work_figure(650, 2, 10_000, 0.5)
    dense, row, curve, floor, here = fig.data
    assert list(dense.x)[::-1] == [r.dense for r in gemm_work_rows(650, 2, 10_000, 0.5)]
    recurrent_share = 2 * 2600 * 650 / 13_260_000
    assert list(floor.y) == pytest.approx([recurrent_share] * 2) and min(curve.y) > recurrent_share
    assert list(here.x) == [0.5] and here.y[0] == pytest.approx(8_320_000 / 13_260_000)


def fake_result() -> RaceResult:
    def history(scale):
        return History(
            step=[1, 2, 3, 4],
            loss=[6.0 * scale, 5.0, 4.0, 3.0],
            seconds=[0.004 * scale, 0.002 * scale, 0.003 * scale, 0.001 * scale],
            eval_step=[2, 4],
            metric=[400.0, 300.0 * scale],
        )

    histories = {"row": history(0.5), "bernoulli": history(1.0), "torch": history(2.0)}
    config = LMRaceConfig(hidden=8, layers=2, p=0.5, steps=4, batch=4, bptt=5, warmup=1)
    work = {m: lstm_gemm_work(8, 2, 50, 0.5, m) for m in histories}
    return RaceResult(histories, PERPLEXITY, config, work, "cpu", ("bernoulli", "torch"))


def test_race_figure_is_filled_in_place():
    result = fake_result()
    fig = go.FigureWidget(race_figure(result.methods))
    assert len(fig.data) == 9 and all(len(t.x) == 0 for t in fig.data)
    traces = list(fig.data)
    update_race_figure(fig, result)
    assert list(fig.data) == traces  # the same trace objects, updated
    row, bernoulli, torch_ = fig.data[0:3], fig.data[3:6], fig.data[6:9]
    assert [row[0].name, bernoulli[0].name, torch_[0].name] == ["row", "bernoulli", "torch"]
    assert list(row[0].y) == pytest.approx(running_mean([3.0, 5.0, 4.0, 3.0]))
    assert list(torch_[1].x) == [2, 4] and list(torch_[1].y) == [400.0, 600.0]
    assert list(row[2].y) == pytest.approx([1e3 * s for s in running_median([0.002, 0.001, 0.0015, 0.0005])])
    assert len({row[0].line.color, bernoulli[0].line.color, torch_[0].line.color}) == 3
    assert row[1].yaxis == "y2" and fig.layout.yaxis2.type == "log" and fig.layout.yaxis3.type == "log"


def test_race_result_figure_and_timings():
    result = fake_result()
    fig = race_result_figure(result, title="t")
    assert isinstance(fig, go.Figure) and list(fig.data[4].y) == [400.0, 300.0] and fig.layout.title.text == "t"
    timings = race_timings(result)
    assert [t.name for t in timings] == ["bernoulli", "row", "torch"]  # the baseline first
    assert timings[1].ms == pytest.approx(1.0)  # median of 1, 1.5, 0.5 ms (the first step is warm-up)
    assert timings[0].work == 1.0 and timings[2].work == 1.0
    assert timings[1].work == pytest.approx(lstm_gemm_work(8, 2, 50, 0.5, "row"))


def test_a_diverged_language_model_is_named_so_in_the_figure_and_the_bars():
    result = fake_result()
    row = result.histories["row"]
    row.step, row.loss, row.seconds, row.eval_step, row.metric = [1, 2, 3], row.loss[:3], row.seconds[:3], [2], [400.0]
    row.diverged_at = 4
    fig = race_result_figure(result)
    assert fig.data[0].name == "row (diverged at step 4)" and fig.data[3].name == "bernoulli"
    assert [t.name for t in race_timings(result)] == ["bernoulli", "row (diverged at step 4)", "torch"]


def test_the_gemm_work_table_says_multiply_adds_and_the_figure_label_is_not_clipped():
    header = format_gemm_work(gemm_work_rows(650, 2, 10_000, 0.5)).splitlines()[0]
    assert "multiply-adds/token" in header and "MAC" not in header
    for p, side in [(0.3, "top right"), (0.5, "top right"), (0.7, "bottom left")]:
        here = gemm_work_figure(650, 2, 10_000, p).data[4]
        assert here.textposition == side and here.cliponaxis is False
        work = lstm_gemm_work(650, 2, 10_000, p, "row")
        assert here.text[0].startswith(f"{work:.3f} left")  # "0.627", not ".627" cut at the axis


def test_the_read_masks_figure_gives_its_colour_key():
    mask = torch.tensor([[True, False, True]] * 4)
    title = read_masks_figure({"row": mask}).layout.title.text
    assert "blue: read" in title and "grey: not read" in title


def test_a_single_evaluation_gets_a_readable_perplexity_panel():
    """CI mode evaluates once, after the last step: the dots sat alone on an x axis from 19 to 21 with one log
    tick. The step axis now spans the race's steps, the title gives the step and the ticks are labelled."""
    result = fake_result()
    for h in result.histories.values():
        h.eval_step, h.metric = [4], [h.metric[-1]]
    fig = go.FigureWidget(race_figure(result.methods))
    update_race_figure(fig, result)
    lo, hi = fig.layout.xaxis2.range
    assert lo < 1 and 4 < hi < 4.5 and fig.layout.xaxis2.autorange is False
    assert fig.layout.annotations[1].text == "validation perplexity at step 4"
    assert len(fig.layout.yaxis2.tickvals) >= 4 and fig.data[1].marker.size == 10  # 150..600: labels in full
    update_race_figure(fig, fake_result())  # two evaluations: back to the plain panel
    assert fig.layout.annotations[1].text == "validation perplexity" and fig.layout.xaxis2.autorange is True
    assert fig.data[1].marker.size is None
