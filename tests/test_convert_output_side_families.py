"""Output-side dropout in the Hugging Face families that copy BERT's layout without an adapter of their own
(RoBERTa, XLM-RoBERTa, Electra, CamemBERT, Data2VecText, ERNIE, MPNet) and DistilBERT's FFN (its
``ff_chunk``, handed to ``apply_chunking_to_forward``): with ``convert(model, output_side=True)`` the general
output-side adapter (``adapters.found_output_side``) wraps each ``Linear -> Dropout`` pair, as the
registered one does for BERT, and leaves a dropout its forward applies in two places alone, saying so."""

import copy

import pytest
import torch
from test_convert_models import assert_checkpoints_load_both_ways, hf
from torch import nn

from approxdrop import convert
from approxdrop.models.adapters import MovedDropout
from approxdrop.models.convert import OUTPUT_OFF
from approxdrop.models.output_side import OutputRowDropout

BERT_LIKE = dict(
    vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
    max_position_embeddings=24, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3,
)  # fmt: skip
BOTH = [f"encoder.layer.{i}.{site}.dense" for i in (0, 1) for site in ("attention.output", "output")]
FAMILIES = {
    "Roberta": ({}, BOTH),
    "XLMRoberta": ({}, BOTH),
    "Electra": ({"embedding_size": 16}, BOTH),
    "Camembert": ({}, BOTH),
    "Data2VecText": ({}, BOTH),
    "Ernie": ({}, BOTH),
    "MPNet": ({}, [f"encoder.layer.{i}.output.dense" for i in (0, 1)]),  # its attention applies dropout inline
    "DistilBert": (None, [f"transformer.layer.{i}.ffn.lin2" for i in (0, 1)]),
}


def family(name: str):
    """A maker of the tiny model of ``name`` (the same weights at each call), and the names convert gives."""
    T = hf()
    if getattr(T, f"{name}Model", None) is None:
        pytest.skip(f"transformers {T.__version__} has no {name}Model")
    extra, sites = FAMILIES[name]
    if extra is None:  # DistilBERT's own config names
        config = T.DistilBertConfig(
            vocab_size=40, dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=24, dropout=0.3,
            attention_dropout=0.3,
        )  # fmt: skip
    else:
        config = getattr(T, f"{name}Config")(**BERT_LIKE, **extra)

    def make() -> nn.Module:
        torch.manual_seed(0)
        return getattr(T, f"{name}Model")(config)

    return make, sites


def hidden(model: nn.Module) -> torch.Tensor:
    return model(input_ids=torch.randint(1, 40, (2, 6), generator=torch.Generator().manual_seed(3))).last_hidden_state


def moved(model: nn.Module) -> list[str]:
    """The names of the dropouts a block now applies (the module keeps a MovedDropout there)."""
    return [name for name, m in model.named_modules() if isinstance(m, MovedDropout)]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_output_side_converts_on_request_only_and_keeps_eval_outputs_and_checkpoints(name):
    make, sites = family(name)
    model, keys = make(), list(make().state_dict())
    with torch.no_grad():
        before = hidden(model.eval())
    report = convert(model)
    assert report.converted == [] and list(model.state_dict()) == keys and not moved(model)
    site_dropouts = [site.rsplit(".", 1)[0] + ".dropout" for site in sites]
    assert all(dict(report.skipped)[name] == OUTPUT_OFF for name in site_dropouts)  # what would convert them
    others = [why for name, why in report.skipped if name not in site_dropouts]
    assert all(why.startswith("no adapter for its parent") for why in others)
    saved = make().state_dict()
    report = convert(model, output_side=True, generator=torch.Generator().manual_seed(8))
    assert report.converted == sites
    assert set(report.adapters.values()) == {"output-side"} and set(report.kinds.values()) == {"OutputRowDropout"}
    assert moved(model) == [site.rsplit(".", 1)[0] + ".dropout" for site in sites]
    with torch.no_grad():
        assert torch.allclose(hidden(model), before, rtol=0, atol=0)
    model.load_state_dict(saved, strict=True)
    assert_checkpoints_load_both_ways(make, model)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_output_side_blocks_train_and_take_p_through_the_modules_dropout(name):
    make, sites = family(name)
    model = make()
    convert(model, output_side=True, generator=torch.Generator().manual_seed(9))
    hidden(model.train()).square().sum().backward()
    blocks = [model.get_submodule(site) for site in sites]
    assert all(isinstance(b, OutputRowDropout) and b.last_pattern is not None for b in blocks)
    assert all(b.linear.weight.grad is not None and b.linear.weight.grad.abs().sum() > 0 for b in blocks)
    twin = make().train()
    for site in sites:
        model.get_submodule(site.rsplit(".", 1)[0]).dropout.p = 0  # the MovedDropout: sets its block's rate
    for m in list(model.modules()) + list(twin.modules()):
        if type(m) is nn.Dropout:  # the rest (embeddings, attention) at 0 too, in both
            m.p = 0.0
    assert all(b.p == 0.0 for b in blocks)
    with torch.no_grad():
        assert torch.allclose(hidden(model), hidden(twin), rtol=1e-6, atol=1e-6)
    assert all(b.last_pattern is None for b in blocks)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_second_output_side_convert_changes_nothing_and_says_so(name):
    make, sites = family(name)
    model = make()
    convert(model, output_side=True)
    keys, modules, state = list(model.state_dict()), repr(model), copy.deepcopy(model.state_dict())
    report = convert(model, output_side=True)
    assert report.converted == [] and list(model.state_dict()) == keys and repr(model) == modules
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    skipped = dict(report.skipped)
    for site in sites:
        assert skipped[site.rsplit(".", 1)[0] + ".dropout"] == (
            f"already converted: {site.rsplit('.', 1)[1]} is the block, left as it is, whatever p, method and groups "
            "convert is given (set its p to change the rate)"
        )
    assert not [name for name, why in report.skipped if why.startswith("already approxdrop")]


class Once(nn.Module):
    """A residual MLP of one's own, no adapter registered: ``self.dropout`` right after ``self.fc``, once."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.dropout = nn.Linear(8, 8), nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        h = self.dropout(h)
        return x + h


class Twice(Once):
    """One ``self.dropout`` applied after two Linears (HF's ViTLayer uses one dropout twice too, but after
    its attention and MLP modules, not after Linears)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attn(x)
        h = self.dropout(h)
        x = x + h
        h = self.fc(x)
        h = self.dropout(h)
        return x + h


def test_a_dropout_applied_in_two_places_is_left_alone_with_the_reason():
    once, twice = Once(), Twice()
    assert convert(once, output_side=True).converted == ["fc"] and isinstance(once.dropout, MovedDropout)
    keys = list(twice.state_dict())
    report = convert(twice, output_side=True)
    assert report.converted == [] and list(twice.state_dict()) == keys and type(twice.dropout) is nn.Dropout
    (name, why), *rest = report.skipped
    assert name == "dropout" and not rest
    assert why.startswith("its forward applies self.dropout in 2 places") and "stop dropping" in why


class GatedChunkMLP(nn.Module):
    """ModernBERT's MLP: one Linear makes the input and the gate, the dropout acts on the gated hidden units."""

    def __init__(self):
        super().__init__()
        self.Wi, self.act, self.drop, self.Wo = nn.Linear(4, 16), nn.GELU(), nn.Dropout(0.5), nn.Linear(8, 4)

    def forward(self, hidden_states):
        input, gate = self.Wi(hidden_states).chunk(2, dim=-1)
        return self.Wo(self.drop(self.act(input) * gate))


def test_a_dropout_on_the_next_line_but_not_on_the_linears_output_is_no_output_side_pair():
    """``self.Wi(...)`` on one line and ``self.drop(...)`` on the next were taken for an output-side pair: Wi's
    output features were dropped before the activation and the gate product (training outputs about twice too
    large at p = 0.5, eval unchanged, nothing said). The dropout must take the Linear's output as it is."""
    model = nn.Sequential(GatedChunkMLP())
    report = convert(model, output_side=True)
    assert report.converted == [] and type(model[0].Wi) is nn.Linear and type(model[0].drop) is nn.Dropout
    assert [name for name, _ in report.skipped] == ["0.drop"] and OUTPUT_OFF not in dict(report.skipped)["0.drop"]
    T = hf()
    if getattr(T, "ModernBertModel", None) is None:
        pytest.skip(f"transformers {T.__version__} has no ModernBertModel")
    config = T.ModernBertConfig(
        vocab_size=50, hidden_size=16, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=32, mlp_dropout=0.5, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        cls_token_id=1, sep_token_id=2,
    )  # fmt: skip
    modern = T.ModernBertModel(config)
    assert not [name for name in convert(modern, output_side=True).converted if name.endswith("mlp.Wi")]
    assert type(modern.layers[0].mlp.Wi) is nn.Linear
