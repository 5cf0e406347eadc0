"""convert given a model that is itself a dropout module (an nn.Dropout, or the MovedDropout an output-side
convert leaves at the pair's dropout attribute) reported nothing: "left 0 dropout(s) alone".

Expected (README, convert: the report lists "each dropout left alone with the reason"; ConvertReport.skipped:
"a (name, reason) pair for every dropout left alone"): the dropout is listed in report.skipped under the name ""
(the model itself), as convert already does for a model that a block would replace in its parent ("the model
itself is a ..., which a block replaces in its parent: convert the parent")."""

from torch import nn

import approxdrop as ad


def test_a_bare_dropout_is_listed_as_left_alone():
    report = ad.convert(nn.Dropout(0.1))
    assert [name for name, _ in report.skipped] == [""]  # got []


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense, self.dropout = nn.Linear(8, 8), nn.Dropout(0.1)

    def forward(self, x):
        h = self.dense(x)
        h = self.dropout(h)
        return h + x


def test_the_moved_dropout_of_an_output_side_pair_is_listed_as_left_alone():
    model = Pair()
    ad.convert(model, output_side=True)
    report = ad.convert(model.dropout)  # a MovedDropout, whose block (model.dense) applies the dropout
    assert [name for name, _ in report.skipped] == [""]  # got []
