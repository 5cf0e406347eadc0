"""A feed-forward module shared by two places, the second inside an nn.Sequential that the same convert
renumbers (a chain before it collapses into one block), made convert raise AttributeError while building its
report ("Sequential has no attribute `4`"), after it had already changed the model: the report read each block at
the key its place had before the renumbering.

Expected (README, convert: "A feed-forward module shared by several places (tied layers) becomes one block held
at every place ... the report names it at each place"; "Everything is planned before anything changes"):
convert returns a report naming the block at both places, by their names in the converted model."""

from torch import nn

import approxdrop as ad


class FFN(nn.Module):  # any module whose forward is the chain
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.drop, self.fc2 = nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 8)

    def forward(self, x):
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop(x)
        x = self.fc2(x)
        return x


def test_shared_ffn_whose_second_place_is_renumbered_converts_and_reports():
    shared = FFN()
    model = nn.Sequential(shared, nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 8), shared))
    report = ad.convert(model)  # AttributeError: Sequential has no attribute `4`
    assert model[0] is model[1][1]
    assert set(report.converted) == {"0", "1.0", "1.1"}


def test_shared_timm_mlp_whose_second_place_is_renumbered_converts_and_reports():
    class Mlp(nn.Module):  # timm.layers.mlp.Mlp, its code
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.drop1 = nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.1)
            self.norm, self.fc2, self.drop2 = nn.Identity(), nn.Linear(16, 8), nn.Dropout(0.1)

        def forward(self, x):
            return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))

    Mlp.__module__, Mlp.__qualname__ = "timm.layers.mlp", "Mlp"
    shared = Mlp()
    model = nn.Sequential(shared, nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 8), shared))
    report = ad.convert(model)
    assert model[0] is model[1][1]
    assert {"0.ffn", "1.0", "1.1.ffn"} <= set(report.converted)
