"""Training-step benchmark of ``convert`` on real model classes: PyTorch's ``nn.TransformerEncoder`` and,
when transformers is installed, Hugging Face T5, GPT-2, BERT, Llama and Phi-3 built from their configs (random
weights; GPT-2 and BERT have output-side dropout only, converted with ``output_side=True``; Llama's and Phi-3's
MLPs have none, so convert is given p and the unconverted twin gets ``F.dropout`` at the same place), each against its
unconverted twin, side by side in one process.

One step is zero_grad + forward + mean-squared error of the last hidden state against a fixed target +
backward + SGD step with momentum. The converted copy is a deep copy of the unconverted model (the same
initial weights) run through ``convert(model, method=...)``; both keep ``nn.Dropout(p)`` elsewhere (the
residual and attention dropouts no adapter converts). The two are warmed up, then timed in rotating
rounds of one step each (``bench.time_side_by_side``); each time is the median over rounds. The clock
is this process's CPU time by default (``--clock cpu``): with one thread it counts the step's own work
on a CPU shared with others. Run ``approxdrop bench-convert --help``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .._env import describe_machine
from ..models import convert
from ..models.ffn import FFN_METHODS
from ..training import sgd
from .bench import check_protocol, time_side_by_side
from .options import Distinct, non_negative_int, positive_int, progress_bar, rate, write_record

MODELS = ("encoder", "t5", "gpt2", "bert", "llama", "phi3")
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


@dataclass
class ConvertBenchRow:
    """One model's converted / unconverted step times."""

    model: str
    p: float
    method: str
    converted_blocks: int
    ms_unconverted: float
    ms_converted: float
    ratio: float
    rounds: int


@dataclass
class Size:
    """The model sizes of the benchmark (issue #26's targets)."""

    d_model: int = 128
    d_hidden: int = 512
    heads: int = 4
    layers: int = 2
    sequence: int = 32
    batch: int = 16


def encoder(size: Size, p: float) -> tuple[nn.Module, Callable[[nn.Module, torch.Tensor], torch.Tensor]]:
    """``nn.TransformerEncoder`` (batch first, relu) and its forward on x (Tensor[B, T, d_model])."""
    layer = nn.TransformerEncoderLayer(size.d_model, size.heads, size.d_hidden, p, batch_first=True)
    return nn.TransformerEncoder(layer, size.layers, enable_nested_tensor=False), lambda m, x: m(x)


def t5(size: Size, p: float) -> tuple[nn.Module, Callable[[nn.Module, torch.Tensor], torch.Tensor]]:
    """A T5 encoder-decoder from its config (relu feed-forward, vocabulary 256) and its forward on token
    ids (Long[B, T]) as both encoder and decoder input -> last hidden state [B, T, d_model]."""
    transformers = _transformers()
    config = transformers.T5Config(
        vocab_size=256, d_model=size.d_model, d_kv=size.d_model // size.heads, d_ff=size.d_hidden,
        num_layers=size.layers, num_heads=size.heads, dropout_rate=p, feed_forward_proj="relu",
    )  # fmt: skip
    return transformers.T5Model(config), lambda m, ids: m(input_ids=ids, decoder_input_ids=ids).last_hidden_state


def _transformers():
    try:
        import transformers
    except ImportError as error:
        raise ValueError("models t5, gpt2 and bert need transformers (pip install transformers)") from error
    return transformers


def gpt2(size: Size, p: float) -> tuple[nn.Module, Callable[[nn.Module, torch.Tensor], torch.Tensor]]:
    """A GPT-2 from its config (4 d_model feed-forward, its only hidden-unit-free dropout sites: output side);
    its begin / end token is the last of the 256 (the config's default, 50256, is outside the vocabulary)."""
    T = _transformers()
    config = T.GPT2Config(
        vocab_size=256, n_embd=size.d_model, n_inner=size.d_hidden, n_layer=size.layers, n_head=size.heads,
        n_positions=max(size.sequence, 8), resid_pdrop=p, embd_pdrop=p, attn_pdrop=p, bos_token_id=255,
        eos_token_id=255,
    )  # fmt: skip
    return T.GPT2Model(config), lambda m, ids: m(input_ids=ids).last_hidden_state


def bert(size: Size, p: float) -> tuple[nn.Module, Callable[[nn.Module, torch.Tensor], torch.Tensor]]:
    """A BERT from its config (BertOutput / BertSelfOutput: output-side dropout after dense)."""
    T = _transformers()
    config = T.BertConfig(
        vocab_size=256, hidden_size=size.d_model, intermediate_size=size.d_hidden, num_hidden_layers=size.layers,
        num_attention_heads=size.heads, max_position_embeddings=max(size.sequence, 8), hidden_dropout_prob=p,
        attention_probs_dropout_prob=p,
    )  # fmt: skip
    return T.BertModel(config), lambda m, ids: m(input_ids=ids).last_hidden_state


def llama(size: Size, p: float) -> tuple[nn.Module, Callable[[nn.Module, torch.Tensor], torch.Tensor]]:
    """A Llama decoder from its config (a gated SiLU MLP with no dropout of its own) and its forward on token ids
    (Long[B, T]) -> last hidden state. ``convert`` gives its MLPs a row-pattern dropout at p; the unconverted twin
    gets nn.Dropout's own, ``F.dropout`` on the same hidden units (``add_mlp_dropout``), for a like-for-like step."""
    T = _transformers()
    config = T.LlamaConfig(
        vocab_size=256, hidden_size=size.d_model, intermediate_size=size.d_hidden, num_hidden_layers=size.layers,
        num_attention_heads=size.heads, num_key_value_heads=size.heads, max_position_embeddings=max(size.sequence, 8),
    )  # fmt: skip
    return T.LlamaModel(config), lambda m, ids: m(input_ids=ids).last_hidden_state


def phi3(size: Size, p: float) -> tuple[nn.Module, Callable[[nn.Module, torch.Tensor], torch.Tensor]]:
    """A Phi-3 decoder from its config (a gated SiLU MLP whose two input Linears are one, ``gate_up_proj``, with no
    dropout of its own), as ``llama``: convert gives its MLPs row patterns at p, the twin ``F.dropout`` there."""
    T = _transformers()
    config = T.Phi3Config(
        vocab_size=256, hidden_size=size.d_model, intermediate_size=size.d_hidden, num_hidden_layers=size.layers,
        num_attention_heads=size.heads, num_key_value_heads=size.heads, max_position_embeddings=max(size.sequence, 8),
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return T.Phi3Model(config), lambda m, ids: m(input_ids=ids).last_hidden_state


def add_mlp_dropout(model: nn.Module, p: float) -> None:
    """Per-element dropout at ``p`` on the hidden units of every Llama or Phi-3 MLP of ``model`` (the input of its
    down_proj, as ``convert(model, p=p)`` puts its row patterns there): a forward pre-hook."""
    for name, module in model.named_modules():
        if name.endswith("mlp") and hasattr(module, "down_proj"):
            module.down_proj.register_forward_pre_hook(
                lambda linear, args: (nn.functional.dropout(args[0], p, linear.training),)
            )


BUILDERS = {"encoder": encoder, "t5": t5, "gpt2": gpt2, "bert": bert, "llama": llama, "phi3": phi3}
OUTPUT_SIDE = ("gpt2", "bert")  # converted with output_side=True: they have no hidden-unit dropout
# no dropout of their own: convert is given p, the unconverted twin gets F.dropout there
NO_DROPOUT = ("llama", "phi3")


def train_step(model: nn.Module, forward, x: torch.Tensor, target: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A zero-argument training step of ``model`` on a fixed input and target."""
    opt = sgd(model.parameters(), 1e-3, momentum=0.9)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(forward(model, x), target)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def measure(
    models=("encoder", "t5"),
    p: float = 0.3,
    method: str = "row",
    size: Size | None = None,
    warmup: int = 3,
    rounds: int = 30,
    clock: str = "cpu",
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> list[ConvertBenchRow]:
    """Median step time of each model and its converted copy (``convert(copy, method=method)``)."""
    size = size or Size()
    dev = check_protocol(device, warmup, rounds, 1, (p,), ("bernoulli", method), FFN_METHODS)
    unknown = [m for m in models if m not in BUILDERS]
    if unknown or not models:
        raise ValueError(f"models must be some of {MODELS}, got {list(models)}")
    built = {name: _converted_twins(name, size, p, method, seed, dev) for name in models}  # refusals before timing
    rows = []
    with progress_bar(len(models) * 2 * (warmup + rounds), "bench-convert", progress) as bar:  # ended on Ctrl-C too
        for name, (model, twin, forward, report) in built.items():
            gen = torch.Generator().manual_seed(seed)
            if name != "encoder":
                x = torch.randint(256, (size.batch, size.sequence), generator=gen)  # [B, T]
            else:
                x = torch.randn(size.batch, size.sequence, size.d_model, generator=gen)  # [B, T, d_model]
            target = torch.randn(size.batch, size.sequence, size.d_model, generator=gen).to(dev)
            x = x.to(dev)
            steps = {
                "unconverted": train_step(model.train(), forward, x, target),
                "converted": train_step(twin.train(), forward, x, target),
            }
            times = time_side_by_side(steps, dev, warmup, rounds, 1, bar, clock=CLOCKS[clock])
            base, conv = statistics.median(times["unconverted"]), statistics.median(times["converted"])
            rows.append(
                ConvertBenchRow(name, p, method, len(report.converted), 1e3 * base, 1e3 * conv, conv / base, rounds)
            )
    return rows


def _converted_twins(name: str, size: Size, p: float, method: str, seed: int, device: torch.device):
    """(model, its converted copy, forward, convert's report); ValueError, with convert's reason, when
    ``method`` converts nothing in it (a timing of two equal models would read as a speedup of 1)."""
    torch.manual_seed(seed)
    model, forward = BUILDERS[name](size, p)
    model.to(device)
    twin = copy.deepcopy(model)
    side, rate = name in OUTPUT_SIDE, p if name in NO_DROPOUT else None
    report = convert(twin, rate, method, generator=torch.Generator().manual_seed(seed), output_side=side)
    if name in NO_DROPOUT:
        add_mlp_dropout(model, p)  # after the copy: the converted twin runs its own dropout
    if not report.converted:
        refusals = [item for item in report.skipped if item[1].startswith("cannot build")] or report.skipped
        where, why = refusals[0] if refusals else ("", "no dropout found")
        raise ValueError(f"model {name}: convert(method={method!r}, p={p}) made no block ({where}: {why})")
    return model, twin, forward, report


def format_table(rows: list[ConvertBenchRow], size: Size) -> str:
    """Markdown table: model, converted blocks, ms / step unconverted and converted, their ratio."""
    lines = [
        "| model | blocks converted | unconverted ms / step | converted ms / step | converted / unconverted |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        label = {
            "encoder": "nn.TransformerEncoder",
            "t5": "HF T5 (T5Model)",
            "gpt2": "HF GPT-2, output side (c_proj + dropout)",
            "bert": "HF BERT, output side (dense + dropout)",
            "llama": "HF Llama (LlamaModel; MLP dropout added: F.dropout / row patterns)",
            "phi3": "HF Phi-3 (Phi3Model, packed gate_up_proj; MLP dropout added as Llama's)",
        }[r.model]
        lines.append(
            f"| {label} | {r.converted_blocks} | {r.ms_unconverted:.2f} | {r.ms_converted:.2f} | {r.ratio:.3f} |"
        )
    return "\n".join(lines)


COMMAND, HELP = "bench-convert", "training-step time of convert()ed real models against their unconverted twins"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", action=Distinct, default=["encoder", "t5"], choices=MODELS)
    parser.add_argument("--p", type=rate, default=0.3)
    parser.add_argument("--method", default="row", choices=[m for m in FFN_METHODS if m not in ("none", "bernoulli")])
    parser.add_argument("--d-model", type=positive_int, default=128)
    parser.add_argument("--d-hidden", type=positive_int, default=512)
    parser.add_argument("--heads", type=positive_int, default=4)
    parser.add_argument("--layers", type=positive_int, default=2)
    parser.add_argument("--sequence", type=positive_int, default=32, help="tokens per sequence")
    parser.add_argument("--batch", type=positive_int, default=16, help="sequences per step")
    parser.add_argument("--warmup", type=non_negative_int, default=3)
    parser.add_argument("--rounds", type=positive_int, default=30)
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="cpu", help="process CPU time (cpu) or wall time")


def run(args: argparse.Namespace) -> int:
    size = Size(args.d_model, args.d_hidden, args.heads, args.layers, args.sequence, args.batch)
    if args.d_model % args.heads:
        args.parser.error(f"--d-model {args.d_model} must be a multiple of --heads {args.heads}")
    rows = measure(tuple(args.models), args.p, args.method, size, args.warmup, args.rounds,
                   args.clock, args.device, progress=not args.no_progress)  # fmt: skip
    print(
        f"convert, p {args.p}, method {args.method}: d_model {size.d_model}, feed-forward {size.d_hidden}, "
        f"{size.layers} layers, {size.batch} x {size.sequence} tokens, float32, {torch.get_num_threads()} thread(s), "
        f"{args.clock} clock, median of {args.rounds} rounds; {describe_machine(args.device)}"
    )
    print(format_table(rows, size))
    write_record(args, rows)
    return 0
