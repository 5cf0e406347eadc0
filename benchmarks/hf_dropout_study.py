"""Do ARD's row patterns, put in a Hugging Face model by ``convert``, regularise as well as per-element dropout at
the same place? Two studies, one protocol (``--model``):

- ``llama``: a small ``LlamaForCausalLM`` (from its config, random init) on the pydoc corpus as words (the English
  help texts bundled with Python: about 61k training tokens). Llama MLPs have no dropout; ``convert(model, p=...)``
  gives each a row-pattern one on its hidden units. Recorded in benchmarks/llama_study.md.
- ``gpt2``: a small ``GPT2LMHeadModel`` on the pydoc corpus as characters (``char_corpus``; ``--train-tokens``
  keeps the first N training characters, so that a few epochs overfit and dropout matters). Its only dropout is
  ``resid_pdrop`` (the attention's and the MLP's outputs before the residual add; ``embd_pdrop`` and
  ``attn_pdrop`` are 0); ``convert(model, output_side=True)`` makes each of those a row pattern on the output
  features. Recorded in benchmarks/gpt2_study.md.

Variants (``VARIANTS``), the same rate at the same place in each:

- ``none``: no dropout;
- ``dropout``: per-element dropout (Llama: ``F.dropout(p)`` on the input of each ``down_proj``,
  ``bench_convert.add_mlp_dropout``; GPT-2: ``resid_pdrop = p`` as Hugging Face writes it);
- ``row`` / ``row-g4``: ``convert(model, p=p, method=...)`` (one pattern per step, or four batch groups with
  complementary offsets).

Same tuning effort for every variant: a pilot run per learning rate of ``--lrs`` (seed 0, ``--pilot-epochs``),
the rate with the best validation perplexity chosen; then ``--seeds`` full runs of ``--epochs`` at that rate,
each evaluated on the validation split after every epoch. A run's test perplexity is read at its best
validation epoch (early stopping by the validation split; the test split chooses nothing). AdamW (weight decay
0.01), gradient norm clipped at 1, one torch thread. Every run is cached as a JSON file under ``--out``/runs, so
an interrupted study continues.

    python benchmarks/hf_dropout_study.py [--model llama|gpt2] [--variants ...] [--ps 0.1 0.3] [--seeds 3]
                                          [--epochs 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from approxdrop import convert
from approxdrop._env import describe_machine
from approxdrop.data.corpus import batchify, load_pydoc
from approxdrop.experiments.bench_convert import add_mlp_dropout
from approxdrop.experiments.bench_transformer import char_corpus
from approxdrop.experiments.options import progress_bar


def llama(vocab: int, size: dict, p: float) -> torch.nn.Module:
    """A LlamaForCausalLM of ``size`` with per-element dropout at p on its MLP hidden units (none at p = 0)."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=size["d_model"], intermediate_size=size["d_hidden"],
        num_hidden_layers=size["layers"], num_attention_heads=size["heads"], num_key_value_heads=size["heads"],
        max_position_embeddings=size["bptt"], pad_token_id=None, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    if p > 0:
        add_mlp_dropout(model, p)
    return model


def gpt2(vocab: int, size: dict, p: float) -> torch.nn.Module:
    """A GPT2LMHeadModel of ``size`` whose only dropout is ``resid_pdrop = p``."""
    import transformers

    config = transformers.GPT2Config(
        vocab_size=vocab, n_embd=size["d_model"], n_inner=size["d_hidden"], n_layer=size["layers"],
        n_head=size["heads"], n_positions=size["bptt"], resid_pdrop=p, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


@dataclass(frozen=True)
class Family:
    """One study's model: how it is built (vocabulary, size, per-element dropout rate), what its tokens are,
    where ``convert`` puts the row patterns."""

    build: Callable[[int, dict, float], torch.nn.Module]
    tokens: str  # "words" or "chars"
    output_side: bool  # convert(..., output_side=...)
    label: str


FAMILIES = {
    "llama": Family(llama, "words", False, "LlamaForCausalLM"),
    "gpt2": Family(gpt2, "chars", True, "GPT2LMHeadModel"),
}
VARIANTS = {"none": None, "dropout": "bernoulli", "row": "row", "row-g4": "row-g4"}  # label -> how p is applied


@dataclass(frozen=True)
class Tokens:
    """The pydoc corpus as Long[N] ids of words or characters: three splits and the vocabulary's size."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: int


def load_tokens(kind: str) -> Tokens:
    """The pydoc corpus as words (its vocabulary) or as characters (``char_corpus``'s alphabet)."""
    corpus = load_pydoc()
    if kind == "words":
        return Tokens(corpus.train, corpus.valid, corpus.test, len(corpus.vocab))
    chars = char_corpus(corpus)
    return Tokens(chars.train, chars.valid, chars.test, len(chars.alphabet))


def model_for(model: str, vocab: int, size: dict, variant: str, p: float, seed: int) -> torch.nn.Module:
    """``model``'s family at ``size`` with ``variant``'s dropout at p (module docstring), seeded."""
    family, method = FAMILIES[model], VARIANTS[variant]
    torch.manual_seed(seed)
    net = family.build(vocab, size, p if method == "bernoulli" else 0.0)
    if method not in (None, "bernoulli"):
        report = convert(
            net, p=p, method=method, output_side=family.output_side, generator=torch.Generator().manual_seed(seed)
        )
        expected = size["layers"] * (2 if family.output_side else 1)  # GPT-2: attention and MLP outputs
        if len(report.converted) != expected:
            raise RuntimeError(f"convert made {report.converted}, not {expected} blocks:\n{report}")
    return net


def chunks(data: torch.Tensor, bptt: int) -> list[torch.Tensor]:
    """Long[T, B] -> [B, bptt] windows (the last, shorter one dropped): each a batch of sequences."""
    return [data[i : i + bptt].t() for i in range(0, data.shape[0] - bptt + 1, bptt)]


def perplexity(model: torch.nn.Module, windows: list[torch.Tensor]) -> float:
    """exp of the mean next-token loss over every predicted token of ``windows``, in eval mode."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in windows:  # [B, bptt]
            loss = model(input_ids=ids, labels=ids).loss  # mean over B * (bptt - 1) predictions
            n = ids.shape[0] * (ids.shape[1] - 1)
            total, count = total + float(loss) * n, count + n
    return math.exp(total / count)


def train_run(
    tokens: Tokens, model: str, size: dict, variant: str, p: float, seed: int, lr: float, epochs: int
) -> dict:
    """One run: validation perplexity after each epoch, the test perplexity at the best one, the seconds."""
    net = model_for(model, tokens.vocab, size, variant, p, seed)
    train = chunks(batchify(tokens.train[: size["train_tokens"]], size["batch"]), size["bptt"])
    valid = chunks(batchify(tokens.valid, size["batch"]), size["bptt"])
    test = chunks(batchify(tokens.test, size["batch"]), size["bptt"])
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    order = torch.Generator().manual_seed(seed)
    valid_ppl, test_ppl, start = [], [], time.perf_counter()
    for _ in range(epochs):
        net.train()
        for i in torch.randperm(len(train), generator=order).tolist():
            opt.zero_grad(set_to_none=True)
            loss = net(input_ids=train[i], labels=train[i]).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{model} {variant} p={p} seed={seed} lr={lr}: loss {float(loss)}")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
        valid_ppl.append(perplexity(net, valid))
        test_ppl.append(perplexity(net, test))  # read only at the best validation epoch
    best = min(range(epochs), key=valid_ppl.__getitem__)
    return {
        "valid_ppl": valid_ppl, "best_epoch": best + 1, "valid_at_best": valid_ppl[best],
        "test_at_best": test_ppl[best], "seconds": time.perf_counter() - start,
    }  # fmt: skip


def cached(tokens: Tokens, out: Path, key: str, settings: dict) -> dict:
    """``train_run(tokens, **settings)``, read from ``out/runs/key.json`` when that file was made with ``settings``,
    else run and saved there (atomically)."""
    path = out / "runs" / f"{key}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["settings"] == settings:
            return saved["result"]
    result = train_run(tokens, **settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "result": result}, indent=1))
    tmp.replace(path)
    return result


def configs(variants: tuple[str, ...], ps: list[float]) -> list[tuple[str, float]]:
    """(variant, p) of the study: no dropout once (if it is one of ``variants``), every other variant at every p."""
    return [("none", 0.0)] * ("none" in variants) + [(v, p) for p in ps for v in variants if v != "none"]


def mean_sd(values: list[float], digits: int) -> str:
    """``mean ± sd`` of ``values`` (the mean alone for one), ``digits`` after the point."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(FAMILIES), default="llama")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: all")
    parser.add_argument("--ps", nargs="+", type=float, default=[0.1, 0.3])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--pilot-epochs", type=int, default=4)
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 3e-3])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--d-hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--bptt", type=int, default=32)
    parser.add_argument("--train-tokens", type=int, default=None, help="train on the first N tokens only")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/MODEL_study")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not all(0.0 < p < 1.0 for p in args.ps) or args.seeds < 1 or args.epochs < 1 or args.pilot_epochs < 1:
        parser.error("--ps must lie in (0, 1); --seeds, --epochs and --pilot-epochs must be at least 1")
    out = args.out or Path(f"benchmarks/{args.model}_study")
    torch.set_num_threads(1)
    family = FAMILIES[args.model]
    tokens = load_tokens(family.tokens)
    size = {k: getattr(args, k) for k in ("d_model", "d_hidden", "layers", "heads", "batch", "bptt", "train_tokens")}
    study = configs(tuple(args.variants or VARIANTS), args.ps)
    total = len(study) * (len(args.lrs) + args.seeds)
    rows = []
    with progress_bar(total, f"{args.model} study", not args.no_progress) as bar:
        for variant, p in study:
            common = dict(model=args.model, size=size, variant=variant, p=p)
            pilot = {}
            for lr in args.lrs:
                settings = dict(common, seed=0, lr=lr, epochs=args.pilot_epochs)
                pilot[lr] = cached(tokens, out, f"pilot-{variant}-p{p}-lr{lr}", settings)["valid_at_best"]
                bar.update(1)
            lr = min(pilot, key=pilot.get)
            runs = []
            for seed in range(args.seeds):
                settings = dict(common, seed=seed, lr=lr, epochs=args.epochs)
                runs.append(cached(tokens, out, f"run-{variant}-p{p}-seed{seed}", settings))
                bar.update(1)
            rows.append((variant, p, lr, runs))
    lines = [
        f"{family.label} d_model {size['d_model']}, MLP {size['d_hidden']}, {size['layers']} layers, "
        f"{size['heads']} heads; pydoc corpus as {family.tokens} ({len(tokens.train[: args.train_tokens])} training "
        f"tokens, vocabulary {tokens.vocab}); batch {size['batch']} x {size['bptt']} tokens; {args.epochs} epochs, "
        f"{args.seeds} seed(s), lr from {args.lrs} by a {args.pilot_epochs}-epoch pilot; {describe_machine('cpu')}",
        "",
        "| variant | p | lr | validation ppl (best epoch) | test ppl at it | best epoch | s / run |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    digits = 1 if family.tokens == "words" else 3  # word perplexities in the hundreds, characters' about 5
    for variant, p, lr, runs in rows:
        valid, test = [r["valid_at_best"] for r in runs], [r["test_at_best"] for r in runs]
        epochs = "/".join(str(r["best_epoch"]) for r in runs)
        seconds = statistics.median(r["seconds"] for r in runs)
        cells = [variant, f"{p:g}", f"{lr:g}", mean_sd(valid, digits), mean_sd(test, digits), epochs, f"{seconds:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
