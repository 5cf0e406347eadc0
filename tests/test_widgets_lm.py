"""Lab 07's race panel: Start trains the checked methods and redraws the curves in place."""

import pytest
import torch

from approxdrop.course.viz.timing import race_lines
from approxdrop.course.widgets.lm import LMRacePanel
from approxdrop.data.corpus import Corpus, CorpusInfo, Vocabulary

gen = torch.Generator().manual_seed(0)
VOCAB = Vocabulary([f"w{i}" for i in range(20)])
CORPUS = Corpus(
    torch.randint(len(VOCAB), (400,), generator=gen),
    torch.randint(len(VOCAB), (80,), generator=gen),
    torch.randint(len(VOCAB), (80,), generator=gen),
    VOCAB,
    CorpusInfo("random", "test", len(VOCAB), 400, 80, 80),
)
SMALL = dict(hidden=8, bptt=5, batch=4, eval_every=2, callback_every=2)


def test_start_trains_the_checked_methods_and_redraws_in_place(capsys):
    panel = LMRacePanel(CORPUS, methods=("bernoulli", "row"), steps=5, **SMALL)
    fig = panel.fig
    assert [t.name for t in fig.data[::3]] == ["bernoulli", "row"] and all(len(t.x) == 0 for t in fig.data)
    panel.boxes["row"].value = False
    panel.boxes["torch"].value = True
    panel.p.value = 0.3
    panel.button.click()
    assert panel.fig is fig and [t.name for t in fig.data[::3]] == ["bernoulli", "torch"]
    assert list(fig.data[0].x) == [1, 2, 3, 4, 5] and list(fig.data[4].x) == [2, 4, 5]
    assert panel.progress.value == 5 and panel.result.p == 0.3 and panel.result.methods == ["bernoulli", "torch"]
    assert not panel.button.disabled
    table = panel.result.format_table() + "\n" + "\n".join(race_lines(panel.result)) + "\n"  # speedups with spread
    assert capsys.readouterr().out.endswith(table)  # the Output widget, outside Jupyter


def test_an_earlier_result_is_shown_until_start_and_no_method_trains_nothing(capsys):
    first = LMRacePanel(CORPUS, methods=("row",), steps=3, **SMALL)
    first.start()
    panel = LMRacePanel(CORPUS, steps=3, result=first.result, **SMALL)
    assert panel.methods == ["row"] and panel.p.value == first.result.p
    assert list(panel.fig.data[0].y) == list(first.fig.data[0].y) and len(first.fig.data[0].y) == 3
    for box in panel.boxes.values():
        box.value = False
    capsys.readouterr()
    panel.start()
    assert panel.result is first.result and capsys.readouterr().out.endswith("check at least one method\n")


def test_a_method_without_a_box_is_refused_naming_the_known_ones():
    """LMRacePanel(corpus, methods=("row-g4", "bogus")) dropped "bogus" without a word."""
    with pytest.raises(ValueError, match=r"methods must be distinct names from \[.*'torch'.*unknown: \['bogus'\]"):
        LMRacePanel(CORPUS, methods=("row-g4", "bogus"), steps=3, **SMALL)
