"""Lab 05's training panel: Start trains the checked methods and redraws the curves in place."""

import pytest
import torch

from approxdrop.course.viz.live import WIDTH
from approxdrop.course.viz.timing import race_lines
from approxdrop.course.widgets.training import TrainingPanel
from approxdrop.data import Dataset, DatasetInfo

gen = torch.Generator().manual_seed(0)
DATA = Dataset(
    torch.rand(64, 12, generator=gen),
    torch.randint(3, (64,), generator=gen),
    torch.rand(16, 12, generator=gen),
    torch.randint(3, (16,), generator=gen),
    DatasetInfo("random", "test", (3, 4), 3),
)
SMALL = dict(hidden=(8, 8), batch=8, tile=4, eval_every=2, callback_every=2)


def test_start_trains_the_checked_methods_and_redraws_in_place():
    panel = TrainingPanel(DATA, methods=("bernoulli", "row"), steps=5, **SMALL)
    fig = panel.fig
    assert [t.name for t in fig.data[::3]] == ["bernoulli", "row"] and all(len(t.x) == 0 for t in fig.data)
    assert fig.layout.width == WIDTH  # a FigureWidget does not follow the notebook's width by itself
    panel.boxes["row"].value = False
    panel.boxes["shared"].value = True
    panel.p.value = 0.3
    panel.button.click()
    assert panel.fig is fig and [t.name for t in fig.data[::3]] == ["bernoulli", "shared"]
    assert list(fig.data[0].x) == [1, 2, 3, 4, 5] and list(fig.data[4].x) == [2, 4, 5]
    assert panel.progress.value == 5 and panel.result.p == 0.3 and panel.result.methods == ["bernoulli", "shared"]
    assert not panel.button.disabled


def test_an_earlier_result_is_shown_until_start_and_no_method_trains_nothing():
    first = TrainingPanel(DATA, methods=("row",), steps=3, **SMALL)
    first.start()
    panel = TrainingPanel(DATA, steps=3, result=first.result, **SMALL)
    assert [m for m, box in panel.boxes.items() if box.value] == ["row"]
    assert list(panel.fig.data[0].y) == list(go_y := first.fig.data[0].y) and len(go_y) == 3
    for box in panel.boxes.values():
        box.value = False
    panel.start()
    assert panel.result is first.result


def test_the_table_gives_each_speedup_with_its_spread_over_the_steps(capsys):
    panel = TrainingPanel(DATA, methods=("bernoulli", "row"), steps=8, **SMALL)
    panel.start()  # the Output widget, outside Jupyter, prints to stdout
    out = capsys.readouterr().out
    lines = race_lines(panel.result)
    assert out.endswith(panel.result.format_table() + "\n" + "\n".join(lines) + "\n")
    assert lines[0].startswith("row: speedup vs bernoulli ") and "x (IQR" in lines[0]
    assert f"over {8 - panel.result.warmup} steps" in lines[0]  # every step after the warm-up


@pytest.mark.parametrize("p", [0.0, 0.95])
def test_a_rate_outside_the_sliders_usual_range_is_shown_as_it_is(p):
    # an earlier race at p = 0 (no dropout) must not be shown under a slider that says 0.1
    first = TrainingPanel(DATA, methods=("bernoulli",), p=p, steps=2, **SMALL)
    assert first.p.value == p
    first.button.click()
    assert TrainingPanel(DATA, steps=2, result=first.result, **SMALL).p.value == first.result.p == p


def test_a_rate_no_dropout_has_is_refused():
    with pytest.raises(ValueError, match="p must be"):
        TrainingPanel(DATA, methods=("row",), p=1.0, steps=2, **SMALL)


@pytest.mark.parametrize(
    "steps, match",
    [(200_000, r"steps must be in \[1, 100000\] \(the steps box's range\), got 200000"),
     (0, r"steps must be in \[1, inf\), got 0"), (2.5, "steps must be an int")],
)  # fmt: skip
def test_a_step_count_the_steps_box_cannot_hold_is_refused(steps, match):
    """steps=200_000 became 100000 in the box while the progress bar still counted to 200000."""
    with pytest.raises(ValueError, match=match):
        TrainingPanel(DATA, methods=("row",), steps=steps, **SMALL)
    assert TrainingPanel(DATA, methods=("row",), steps=100_000, **SMALL).steps.value == 100_000


@pytest.mark.parametrize(
    "methods, match",
    [
        (("foo",), r"methods must be distinct names from \['bernoulli', .*got \['foo'\] \(unknown: \['foo'\]\)"),
        (("row", "row"), r"got \['row', 'row'\] \(a name twice\)"),
        ("row", r"got the string 'row': write \('row',\)"),
    ],
)
def test_a_method_without_a_box_is_refused_naming_the_known_ones(methods, match):
    """TrainingPanel(data, methods=("foo",)) built a panel with no box checked and traces named "foo"."""
    with pytest.raises(ValueError, match=match):
        TrainingPanel(DATA, methods=methods, steps=3, **SMALL)
