"""Lab 08's panels: the p slider redraws the GEMM figure and its status line in place; the race panel
trains nn.Dropout and the checked converted copies on Start and redraws the curves while they train."""

import pytest
import torch

from approxdrop.course.display import static_copy
from approxdrop.course.viz.ffn import DODGE, block_gemm_flops, race_result_figure, update_race_figure
from approxdrop.course.viz.timing import race_lines
from approxdrop.course.widgets.ffn import GemmFlopsPanel, TransformerRacePanel, race_groups
from approxdrop.experiments.bench_transformer import VALID_LOSS, CharCorpus, TransformerRaceConfig
from approxdrop.training import History, RaceResult

gen = torch.Generator().manual_seed(0)
CHARS = CharCorpus(
    *(torch.randint(12, (n,), generator=gen) for n in (600, 100, 100)), alphabet="abcdefghijk?", name="x"
)
TINY = dict(size="tiny", warmup=1, callback_every=1)


def test_the_slider_redraws_the_bars_the_marker_and_the_status_line():
    panel = GemmFlopsPanel(16, 64, 32, p=0.3)
    fig = panel.fig
    assert "keep <b>0.800</b>" in panel.status.value and "at most 1.25x" in panel.status.value
    panel.p.value = 0.6
    rows = block_gemm_flops(16, 64, 32, 0.6)
    assert panel.fig is fig and list(fig.data[1].x) == pytest.approx([r.after for r in rows][::-1])
    assert fig.data[4].x == (0.6,) and "keep <b>0.600</b>" in panel.status.value
    text, copy = static_copy(panel.widget)
    assert text.startswith("p = 0.6: the block's Linear GEMMs keep 0.600") and list(copy.data[1].x) == list(
        fig.data[1].x
    )


@pytest.mark.parametrize("p", [0.95, -0.1, float("nan"), True])
def test_a_p_the_slider_cannot_show_is_refused(p):
    """p=0.95 built the figure at 0.95 while the slider clamped to 0.9 and the status line said p = 0.9."""
    with pytest.raises(ValueError, match=r"p must be (in \[0, 0.9\] \(the slider's range\)|a finite number)"):
        GemmFlopsPanel(16, 64, 32, p=p)
    panel = GemmFlopsPanel(16, 64, 32, p=0.9)  # the slider's end is fine, and the status agrees with it
    assert panel.p.value == 0.9 and panel.status.value.startswith("p = 0.9:")


def test_race_labels_give_the_group_counts():
    assert race_groups(["nn.Dropout", "row G=1", "row G=4"]) == [1, 4] and race_groups(["nn.Dropout"]) == []
    for bad in ("row", "row G=0", "row G=x", "bernoulli"):
        with pytest.raises(ValueError, match=f"got '{bad}'"):
            race_groups([bad])


def test_start_trains_the_baseline_and_the_checked_copies_and_redraws_in_place(capsys):
    panel = TransformerRacePanel(CHARS, methods=("nn.Dropout", "row G=1"), steps=3, **TINY)
    fig = panel.fig
    assert panel.boxes["nn.Dropout"].disabled and panel.methods == ["nn.Dropout", "row G=1"]
    panel.boxes["nn.Dropout"].value = False  # disabled in the page; even so the baseline trains
    panel.boxes["row G=1"].value = False
    panel.boxes["row G=4"].value = True
    panel.p.value = 0.3
    seen = []
    panel._follow = lambda result, step: (seen.append(step), type(panel)._follow(panel, result, step))
    panel.button.click()
    assert seen == [1, 2, 3]  # redrawn after every step: live
    assert panel.fig is fig and [t.name for t in fig.data[::3]] == ["nn.Dropout", "row G=4"]
    assert list(fig.data[0].x) == [1, 2, 3] and list(fig.data[4].customdata) == [3]  # valid loss after the last step
    assert list(fig.data[4].x) == pytest.approx([3 + DODGE * 3 / 2])  # beside nn.Dropout's dot, not on it
    result = panel.result
    assert result.methods == ["nn.Dropout", "row G=4"] and result.p == 0.3 and result.config.size == "tiny"
    assert panel.progress.value == 3 and not panel.button.disabled
    lines = race_lines(result)  # the copy's speedup over nn.Dropout with its spread, as in the other races
    assert lines[0].startswith("row G=4: speedup vs nn.Dropout ")
    assert capsys.readouterr().out.endswith(result.format_table() + "\n" + "\n".join(lines) + "\n")


def test_an_earlier_result_is_shown_until_start():
    first = TransformerRacePanel(CHARS, methods=("nn.Dropout",), steps=2, **TINY)
    first.start()
    panel = TransformerRacePanel(CHARS, steps=2, result=first.result, **TINY)
    assert panel.methods == ["nn.Dropout"] and panel.p.value == first.result.p
    assert list(panel.fig.data[0].y) == list(first.fig.data[0].y) and len(first.fig.data[0].y) == 2


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_a_race_stopped_or_failing_says_so_and_leaves_no_stale_table(error, capsys):
    first = TransformerRacePanel(CHARS, methods=("nn.Dropout",), steps=2, **TINY)
    first.button.click()
    panel = TransformerRacePanel(CHARS, methods=("nn.Dropout",), steps=3, result=first.result, **TINY)
    capsys.readouterr()

    def follow(result, step):
        type(panel)._follow(panel, result, step)
        if step == 2:
            raise error("stop")

    panel._follow = follow
    with pytest.raises(error):
        panel.start()
    out = capsys.readouterr().out
    why = "stopped" if error is KeyboardInterrupt else "failed: RuntimeError: stop"
    assert f"the race {why} at step 2 of 3: no table" in out and "| method |" not in out
    assert panel.result is None and not panel.button.disabled


def test_a_label_without_a_box_is_refused_naming_the_known_ones():
    """TransformerRacePanel(chars, methods=("row G=3",)) raced nn.Dropout alone, without a word."""
    known = r"\['nn.Dropout', 'row G=1', 'row G=4'\]"
    with pytest.raises(ValueError, match=rf"methods must be distinct names from {known}, got \['row G=3'\]"):
        TransformerRacePanel(CHARS, methods=("row G=3",), steps=2, **TINY)


def test_the_validation_dots_of_one_step_stand_side_by_side():
    """Lab 08 takes the validation loss once, after the last step: the labels' dots sat on top of each other
    at that step, and only the widest (nn.Dropout's) could be seen."""
    config = TransformerRaceConfig(size="tiny", p=0.2, steps=4, warmup=1)
    labels = ["nn.Dropout", "row G=1", "row G=4"]
    curve = ([1, 2, 3, 4], [3.0, 2.5, 2.0, 1.5], [0.01] * 4)
    histories = {m: History(*curve, [4], [2.0 + i / 50]) for i, m in enumerate(labels)}  # close: the dots would touch
    result = RaceResult(histories, VALID_LOSS, config, dict.fromkeys(labels, 1.0), "cpu", ("nn.Dropout",))
    fig = race_result_figure(result)
    dots = fig.data[1::3]
    assert [t.x[0] for t in dots] == pytest.approx([4 - DODGE * 4, 4.0, 4 + DODGE * 4])
    assert [t.customdata[0] for t in dots] == [4, 4, 4] and len({t.marker.symbol for t in dots}) == 3
    assert [t.marker.size for t in dots] == [11, 9, 9]  # large enough for their symbols to read
    assert fig.layout.annotations[1].text == "validation loss (nats / char) after step 4"
    for h in result.histories.values():  # evaluations at several steps: the dots sit at their steps
        h.eval_step, h.metric = [2, 4], [2.5, 2.0]
    update_race_figure(fig, result)
    assert [list(t.x) for t in fig.data[1::3]] == [[2, 4]] * 3 and fig.data[1].marker.symbol is None
    assert [t.marker.size for t in fig.data[1::3]] == [11, None, None]  # as race_figure drew them
    assert fig.layout.annotations[1].text == "validation loss (nats / char)"
