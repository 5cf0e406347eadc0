"""A feed-forward module reached at two places because its parent is shared (one wrapper module held twice, as
tied layers are) was named in report.converted at one place only when its adapter replaced it (a module with the
chain forward, timm's Mlp, a Llama-style gated MLP given p), while the same layout converted in place (an
nn.Sequential chain, a torch TransformerEncoderLayer, an output-side pair) is named at both places.

Expected (README, convert: "A feed-forward module shared by several places (tied layers) becomes one block held
at every place ... (the report names it at each place)"; ConvertReport: "converted holds the qualified names of
the new blocks"): the block is named at both places, "0.inner" and "1.inner"."""

from test_shared_module_in_renumbered_sequential import FFN
from torch import nn

import approxdrop as ad


class Holder(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_a_replaced_block_under_a_shared_parent_is_named_at_each_place():
    holder = Holder(FFN())
    model = nn.Sequential(holder, holder)
    report = ad.convert(model)
    assert model[0].inner is model[1].inner and isinstance(model[1].inner, ad.ApproxDropoutFFN)
    assert report.converted == ["0.inner", "1.inner"]  # got ["0.inner"]
