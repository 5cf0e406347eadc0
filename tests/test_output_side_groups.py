"""Output-side dropout with batch groups (OutputRowDropout with ``row-g4`` and the like; ``convert(...,
output_side=True, method="row-g4")``): each group of samples drops its own pattern's output features, the groups'
offsets complementary; every path (compact, masked, a Linear that must be called) equals the dense masked
reference in outputs and float64 gradients (static shapes: tests/test_static_shapes.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import approxdrop as ad
from approxdrop.models.output_side import OutputRowDropout


def masked_reference(linear: nn.Module, x: torch.Tensor, patterns: tuple, transposed: bool = False) -> torch.Tensor:
    """linear(x) (Tensor[*, d_out]) times each sample's group mask, written out sample by sample: the groups split
    x's leading axis as torch.tensor_split does (a 1-D x is one sample, group 0's)."""
    y = linear(x)
    d_out = y.shape[-1]
    if x.dim() == 1:
        return y * patterns[0].keep_mask(d_out).to(y.dtype) * patterns[0].scale
    rows = []
    for group, part in enumerate(y.tensor_split(len(patterns), 0)):  # [B_g, *, d_out]
        q = patterns[group]
        rows.append(part * (q.keep_mask(d_out).to(y.dtype) * q.scale))
    return torch.cat(rows, 0)


@pytest.mark.parametrize("executor", ["compact", "masked"])
@pytest.mark.parametrize("shape", [(7, 5, 9), (6, 9), (3, 9), (9,)])
def test_each_group_drops_its_own_features_as_the_masked_reference_in_float64(shape, executor):
    """Odd sizes (d_out 13: the periods need not divide it), fewer samples than groups, a 1-D input; outputs and
    every gradient equal the reference's under each of many draws, on both executors."""
    torch.manual_seed(0)
    linear = nn.Linear(9, 13).double()
    gen = torch.Generator().manual_seed(2)
    block = OutputRowDropout(linear, 0.5, "row-g4", generator=gen, executor=executor).train()
    assert block.executor_for(torch.randn(*shape)) == executor
    assert block.groups == 4 and "method='row-g4'" in repr(block)
    twin = copy.deepcopy(linear)
    dropped_some = 0
    for _ in range(12):
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_()
        block.zero_grad()
        twin.zero_grad()
        y = block(x)
        patterns = block.last_pattern
        assert isinstance(patterns, tuple) and len(patterns) == 4
        want = masked_reference(twin, x_ref, patterns)
        torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
        weights = torch.randn_like(y)
        (y * weights).sum().backward()
        (want * weights).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
        for a, b in zip(block.linear.parameters(), twin.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
        dropped_some += int(patterns[0].dp > patterns[0].keep)
    assert dropped_some >= 6


def test_the_groups_offsets_are_complementary_and_every_feature_is_kept_by_some_group():
    """The law of the groups (docs/method.md §9): one (dp, keep) for all, offsets spread so that where dp does not
    exceed the group count, every output feature is kept in some group."""
    block = OutputRowDropout(nn.Linear(4, 16), 0.5, "row-g4", generator=torch.Generator().manual_seed(5)).train()
    x = torch.randn(8, 4)
    seen = 0
    for _ in range(40):
        block(x)
        patterns = block.last_pattern
        assert len({(q.dp, q.keep) for q in patterns}) == 1
        if patterns[0].dp <= 4:
            kept = torch.stack([q.keep_mask(16) for q in patterns]).any(0)
            assert kept.all()
            seen += 1
        if patterns[0].dp == 4:
            assert sorted(q.offset for q in patterns) == [0, 1, 2, 3]
    assert seen > 10


def test_the_grouped_path_passes_gradcheck_in_float64():
    torch.manual_seed(1)
    law = ad.PatternDistribution(((4, 1), (4, 3)), (0.5, 0.5))  # every draw drops features
    linear = nn.Linear(5, 11).double()
    block = OutputRowDropout(linear, 0.5, "row-g4", distributions=[law], generator=torch.Generator().manual_seed(0))
    x = torch.randn(6, 2, 5, dtype=torch.float64, requires_grad=True)
    state = block.generator.get_state()

    def run(x, weight, bias):
        block.generator.set_state(state)  # the same draw at every evaluation
        return torch.func.functional_call(block, {"linear.weight": weight, "linear.bias": bias}, (x,))

    assert torch.autograd.gradcheck(run, (x, block.linear.weight, block.linear.bias))


def test_a_hooked_linear_is_called_on_every_feature_and_still_masked_by_group():
    """A hook put on the Linear after the block was built: the block calls it (the hook fires) and masks its
    output by each sample's group, with a warning."""
    torch.manual_seed(0)
    linear = nn.Linear(6, 10).double()
    gen = torch.Generator().manual_seed(4)
    block = OutputRowDropout(linear, 0.5, "row-g4", generator=gen, executor="compact").train()
    calls = []
    linear.register_forward_hook(lambda m, args, out: calls.append(out.shape))
    x = torch.randn(5, 3, 6, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="its linear carries hooks"):
        y = block(x)
    assert calls == [torch.Size([5, 3, 10])]
    torch.testing.assert_close(y, masked_reference(linear, x, block.last_pattern), rtol=1e-12, atol=1e-12)


def test_convert_gives_gpt2_grouped_output_side_blocks_that_train_as_the_masked_reference():
    """convert(output_side=True, method="row-g4") on Hugging Face GPT-2 (Conv1D, weight [d_in, d_out]): every
    c_proj -> resid_dropout pair becomes a grouped block; a training step's loss and gradients equal those of the
    unconverted model whose dropouts multiply by the same groups' masks."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=30, n_embd=16, n_layer=2, n_head=2, n_positions=8, resid_pdrop=0.3, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).double()
    twin = copy.deepcopy(model)
    report = ad.convert(model, output_side=True, method="row-g4", generator=torch.Generator().manual_seed(1))
    blocks = {name: model.get_submodule(name) for name in report.converted}
    assert len(blocks) == 4 and all(b.groups == 4 and b.transposed for b in blocks.values())
    ids = torch.randint(30, (6, 8))
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()

    # the twin: each resid_dropout replaced by its block's group masks
    class GroupMask(nn.Module):
        def __init__(self, patterns):
            super().__init__()
            self.patterns = patterns

        def forward(self, y):
            return masked_reference(nn.Identity(), y, self.patterns)

    for name, block in blocks.items():
        owner, _ = name.rsplit(".", 1)  # transformer.h.N.attn (resid_dropout) or transformer.h.N.mlp (dropout)
        setattr(twin.get_submodule(owner), "resid_dropout" if owner.endswith("attn") else "dropout",
                GroupMask(block.last_pattern))  # fmt: skip
    twin.train()
    want = twin(input_ids=ids, labels=ids).loss
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-12)
    grads = dict(twin.named_parameters())
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name.replace(".linear", "")].grad, rtol=1e-9, atol=1e-11)


def test_the_auto_executor_masks_grouped_blocks_and_small_gemms_and_only_compact_shrinks_the_gemm():
    """ "auto": with groups, masked (measured faster on a CPU); with one pattern, the FFN's rule
    (sites.grouped_executor) on the rows and the weight's size. Only the compact executor shrinks the GEMM (the
    masked one multiplies the dense output by the mask)."""
    grouped, one = (OutputRowDropout(nn.Linear(512, 128), 0.5, method) for method in ("row-g4", "row"))
    small, large = torch.randn(2, 8, 512), torch.randn(16, 32, 512)  # 16 and 512 rows
    assert grouped.executor_for(small) == grouped.executor_for(large) == "masked"
    assert (one.executor_for(small), one.executor_for(large)) == ("masked", "compact")
    assert OutputRowDropout(nn.Linear(512, 128), 0.5, "row-g4", static_shapes=True).executor_for(None) == "static"
    with pytest.raises(ValueError, match="executor must be one of"):
        OutputRowDropout(nn.Linear(4, 4), 0.3, "row-g4", executor="measured")
    law = ad.PatternDistribution(((4, 1),), (1.0,))  # keep a quarter of the features
    x = torch.randn(8, 3, 16)
    flops = {}
    for executor in ("compact", "masked"):
        block = OutputRowDropout(nn.Linear(16, 64), 0.75, "row-g4", distributions=[law], executor=executor).train()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
            block(x)
        flops[executor] = sum(e.flops for e in prof.events() if e.name in ("aten::mm", "aten::addmm", "aten::bmm"))
    assert flops["compact"] == flops["masked"] / 4


def test_groups_are_for_row_patterns_only():
    with pytest.raises(ValueError, match="batch groups are for row-pattern methods"):
        OutputRowDropout(nn.Linear(4, 4), 0.3, "bernoulli", groups=4)
    with pytest.raises(ValueError, match="for OutputRowDropout, got 'tile'"):
        OutputRowDropout(nn.Linear(4, 4), 0.3, "tile")
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3))
    report = ad.convert(model, output_side=True, method="row", groups=3)
    assert report.converted == ["0"] and model[0].groups == 3 and "groups=3" in repr(model[0])
