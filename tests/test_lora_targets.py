"""``ad.lora_targets``: peft's target_modules for a converted model, from the module names before convert. After
``convert`` a block nests the Linears it takes (T5's ``wi`` is ``DenseReluDense.0``) and an output-side block takes
its Linear's name, so targets written for the unconverted model miss the first silently and hit the second."""

from __future__ import annotations

import pytest
import torch
from test_convert_decoder_mlps import decoder
from test_convert_models import bart, bert, gpt2, t5
from torch import nn

from approxdrop import convert, lora_targets


def peft_rule(model: nn.Module, names: list[str]) -> list[nn.Module]:
    """The modules peft's LoRA wraps for a list of target names: a name equal to one, or ending in "." + one."""
    return [m for n, m in model.named_modules() if any(n == t or n.endswith(f".{t}") for t in names)]


def torch_encoder() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.3, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def sequential() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 8), nn.Linear(8, 2))


def named_sequential() -> nn.Module:
    return nn.ModuleDict({"body": sequential()})


CASES = {  # model, convert's options, LoRA targets as written for the unconverted model
    "t5": (t5, {}, ["q", "v", "wi", "wo"]),
    "t5 gated": (lambda: t5(gated=True), {}, ["q", "wi_0", "wi_1", "wo"]),
    "bart": (bart, {}, ["q_proj", "v_proj", "fc1", "fc2"]),
    "bert output side": (bert, {"output_side": True}, ["query", "value", "dense"]),
    "gpt2 output side": (gpt2, {"output_side": True}, ["c_attn", "c_proj", "c_fc"]),
    "llama given p": (lambda: decoder("Llama"), {"p": 0.2}, ["q_proj", "gate_proj", "up_proj", "down_proj"]),
    "nn.TransformerEncoder": (torch_encoder, {}, ["linear1", "linear2", "out_proj"]),
    "nn.Sequential in a model": (named_sequential, {}, ["body.0", "body.3", "body.4"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_targets_after_convert_are_the_modules_peft_wrapped_before(case):
    make, options, names = CASES[case]
    model = make()
    wanted = [m.weight for m in peft_rule(model, names)]  # what LoRA wraps in the unconverted model
    assert lora_targets(model, names) == [n for n, m in model.named_modules() if m in peft_rule(model, names)]
    report = convert(model, **options)
    assert report.converted, "the case must convert something, or it tests nothing"
    targets = lora_targets(model, names)
    found = [model.get_submodule(name).weight for name in targets]  # convert keeps the very Parameters
    assert sorted(map(id, found)) == sorted(map(id, wanted)) and len(found) == len(set(map(id, found)))
    assert all(type(model.get_submodule(name)) is not nn.Module for name in targets)
    assert peft_rule(model, targets) == [model.get_submodule(name) for name in targets]  # full names: exact


def test_targets_that_peft_would_also_find_in_other_names_are_refused():
    model = sequential()
    convert(model)  # the chain is now "0" (its Linears "0.0" and "0.3"), the last Linear "1": "1" also ends "0.1"
    with pytest.raises(ValueError, match=r"peft would also wrap \['0.1'\]"):
        lora_targets(model, ["0", "3", "4"])


def test_names_alone_miss_a_converted_t5s_feed_forward():
    model = t5()
    convert(model)
    assert not [m for m in peft_rule(model, ["wi", "wo"])]  # what peft would silently do without lora_targets
    assert len(lora_targets(model, ["wi", "wo"])) == 8


@pytest.mark.parametrize(
    "names, message",
    [
        ("q", "a single string"),
        ([], "non-empty list"),
        (["q", ""], "non-empty strings"),
        (["q", 3], "non-empty strings"),
        (["q", "nothing_here"], "['nothing_here']"),
    ],
)
def test_bad_names_are_refused_by_name(names, message):
    model = t5()
    convert(model)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        lora_targets(model, names)
