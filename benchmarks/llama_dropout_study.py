"""Does a row pattern on a Llama's MLP hidden units regularise as well as per-element dropout at the same place?

Hugging Face Llama MLPs have no dropout; ``convert(model, p=...)`` gives each a row-pattern one on its hidden
units. This study trains a small ``LlamaForCausalLM`` (from its config, random init) on the pydoc corpus (the
English help texts bundled with Python: about 61k training tokens, so a few epochs overfit and dropout matters),
with the same dropout rate at the same place in every variant:

- ``none``: no dropout;
- ``dropout``: ``F.dropout(p)`` on the input of each ``down_proj`` (``bench_convert.add_mlp_dropout``);
- ``row`` / ``row-g4``: ``convert(model, p=p, method=...)`` (one pattern per step, or four batch groups).

Same tuning effort for every variant: a pilot run per learning rate of ``--lrs`` (seed 0, ``--pilot-epochs``),
the rate with the best validation perplexity chosen; then ``--seeds`` full runs of ``--epochs`` at that rate,
each evaluated on the validation split after every epoch. A run's test perplexity is read at its best
validation epoch (early stopping by the validation split; the test split chooses nothing). AdamW (weight decay
0.01), gradient norm clipped at 1, one torch thread. Every run is cached as a JSON file under ``--out``/runs, so
an interrupted study continues. Recorded in benchmarks/llama_study.md.

    python benchmarks/llama_dropout_study.py [--ps 0.1 0.3] [--seeds 3] [--epochs 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from approxdrop import convert
from approxdrop._env import describe_machine
from approxdrop.data.corpus import batchify, load_pydoc
from approxdrop.experiments.bench_convert import add_mlp_dropout
from approxdrop.experiments.options import progress_bar

VARIANTS = {"none": None, "dropout": "bernoulli", "row": "row", "row-g4": "row-g4"}  # label -> how p is applied


def model_for(vocab: int, size: dict, variant: str, p: float, seed: int) -> torch.nn.Module:
    """A LlamaForCausalLM of ``size`` with ``variant``'s dropout at p on its MLP hidden units, seeded."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=size["d_model"], intermediate_size=size["d_hidden"],
        num_hidden_layers=size["layers"], num_attention_heads=size["heads"], num_key_value_heads=size["heads"],
        max_position_embeddings=size["bptt"], pad_token_id=None, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    method = VARIANTS[variant]
    if method == "bernoulli":
        add_mlp_dropout(model, p)
    elif method is not None:
        report = convert(model, p=p, method=method, generator=torch.Generator().manual_seed(seed))
        if len(report.converted) != size["layers"]:
            raise RuntimeError(f"convert made {report.converted}, not one block per layer:\n{report}")
    return model


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


def train_run(corpus, size: dict, variant: str, p: float, seed: int, lr: float, epochs: int) -> dict:
    """One run: validation perplexity after each epoch, the test perplexity at the best one, the seconds."""
    model = model_for(len(corpus.vocab), size, variant, p, seed)
    train = chunks(batchify(corpus.train[: size["train_tokens"]], size["batch"]), size["bptt"])
    valid = chunks(batchify(corpus.valid, size["batch"]), size["bptt"])
    test = chunks(batchify(corpus.test, size["batch"]), size["bptt"])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    order = torch.Generator().manual_seed(seed)
    valid_ppl, test_ppl, start = [], [], time.perf_counter()
    for _ in range(epochs):
        model.train()
        for i in torch.randperm(len(train), generator=order).tolist():
            opt.zero_grad(set_to_none=True)
            loss = model(input_ids=train[i], labels=train[i]).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{variant} p={p} seed={seed} lr={lr}: loss {float(loss)}")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        valid_ppl.append(perplexity(model, valid))
        test_ppl.append(perplexity(model, test))  # read only at the best validation epoch
    best = min(range(epochs), key=valid_ppl.__getitem__)
    return {
        "valid_ppl": valid_ppl, "best_epoch": best + 1, "valid_at_best": valid_ppl[best],
        "test_at_best": test_ppl[best], "seconds": time.perf_counter() - start,
    }  # fmt: skip


def cached(corpus, out: Path, key: str, settings: dict) -> dict:
    """``train_run(corpus, **settings)``, read from ``out/runs/key.json`` when that file was made with ``settings``,
    else run and saved there (atomically)."""
    path = out / "runs" / f"{key}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["settings"] == settings:
            return saved["result"]
    result = train_run(corpus, **settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "result": result}, indent=1))
    tmp.replace(path)
    return result


def configs(ps: list[float]) -> list[tuple[str, float]]:
    """(variant, p) of the study: no dropout once, every other variant at every p."""
    return [("none", 0.0)] + [(v, p) for p in ps for v in VARIANTS if v != "none"]


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    parser.add_argument("--out", type=Path, default=Path("benchmarks/llama_study"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not all(0.0 < p < 1.0 for p in args.ps) or args.seeds < 1 or args.epochs < 1 or args.pilot_epochs < 1:
        parser.error("--ps must lie in (0, 1); --seeds, --epochs and --pilot-epochs must be at least 1")
    torch.set_num_threads(1)
    corpus = load_pydoc()
    size = {k: getattr(args, k) for k in ("d_model", "d_hidden", "layers", "heads", "batch", "bptt", "train_tokens")}
    study = configs(args.ps)
    total = len(study) * (len(args.lrs) + args.seeds)
    rows = []
    with progress_bar(total, "llama study", not args.no_progress) as bar:
        for variant, p in study:
            pilot = {}
            for lr in args.lrs:
                settings = dict(size=size, variant=variant, p=p, seed=0, lr=lr, epochs=args.pilot_epochs)
                pilot[lr] = cached(corpus, args.out, f"pilot-{variant}-p{p}-lr{lr}", settings)["valid_at_best"]
                bar.update(1)
            lr = min(pilot, key=pilot.get)
            runs = []
            for seed in range(args.seeds):
                settings = dict(size=size, variant=variant, p=p, seed=seed, lr=lr, epochs=args.epochs)
                runs.append(cached(corpus, args.out, f"run-{variant}-p{p}-seed{seed}", settings))
                bar.update(1)
            rows.append((variant, p, lr, runs))
    lines = [
        f"LlamaForCausalLM d_model {size['d_model']}, MLP {size['d_hidden']}, {size['layers']} layers, "
        f"{size['heads']} heads; pydoc corpus ({len(corpus.train[: args.train_tokens])} training tokens, vocabulary "
        f"{len(corpus.vocab)}); "
        f"batch {size['batch']} x {size['bptt']} tokens; {args.epochs} epochs, {args.seeds} seed(s), lr from "
        f"{args.lrs} by a {args.pilot_epochs}-epoch pilot; {describe_machine('cpu')}",
        "",
        "| variant | p | lr | validation ppl (best epoch) | test ppl at it | best epoch | s / run |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, p, lr, runs in rows:
        valid, test = [r["valid_at_best"] for r in runs], [r["test_at_best"] for r in runs]
        epochs = "/".join(str(r["best_epoch"]) for r in runs)
        seconds = statistics.median(r["seconds"] for r in runs)
        lines.append(f"| {variant} | {p:g} | {lr:g} | {mean_sd(valid)} | {mean_sd(test)} | {epochs} | {seconds:.0f} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
