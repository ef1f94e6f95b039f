"""Sweep of course-model recipes at a fixed wall-clock budget, scored in bits per byte.

Each configuration (vocabulary size, width, depth, batch, sequence length, learning rate)
trains for the same number of seconds on the TinyStories sample (as many steps as fit in them on
an idle machine, from a timing of one step, so that a busy machine slows the sweep down but does
not change its results) with a BPE tokenizer trained on
the training split, then is scored on the whole held-out split in bits per byte, which does not
depend on the tokenizer. The winner became the ``cpu`` profile's course-model recipe.

    python benchmarks/recipe_sweep.py --measure-only   # on an idle machine
    python benchmarks/recipe_sweep.py --seconds 240 --out sweep.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from llmcourse import data_files
from llmcourse.model import GPT, GPTConfig
from llmcourse.optimizer import make_optimizer
from llmcourse.schedules import warmup_cosine_scheduler
from llmcourse.sliding_window import SlidingWindowDataset, create_dataloader, split_text
from llmcourse.tokenizers import BPETokenizer
from llmcourse.training import TrainingConfig

# (vocab, n_layer, n_head, n_embd, batch, context, learning rate, dropout)
GRID = [
    (4096, 4, 4, 256, 8, 128, 2e-3, 0.0),
    (4096, 4, 4, 256, 8, 256, 2e-3, 0.0),
    (4096, 5, 5, 320, 8, 128, 1.5e-3, 0.0),
    (4096, 6, 6, 384, 8, 128, 1e-3, 0.1),
    (8192, 4, 4, 256, 8, 128, 2e-3, 0.0),
    (4096, 4, 4, 256, 16, 128, 3e-3, 0.0),
    (2048, 4, 4, 256, 8, 128, 2e-3, 0.0),
    (4096, 3, 4, 192, 8, 128, 3e-3, 0.0),
    (4096, 4, 4, 256, 4, 128, 2e-3, 0.0),
    (8192, 4, 4, 256, 4, 128, 2e-3, 0.0),
    (2048, 4, 4, 256, 4, 128, 2e-3, 0.0),
    (4096, 5, 5, 320, 4, 128, 1.5e-3, 0.0),
    (4096, 4, 4, 256, 4, 128, 3e-3, 0.0),
]


def tokenizer_for(vocab: int, train_text: str, cache: Path) -> BPETokenizer:
    path = cache / f"bpe-{vocab}.json"
    if path.is_file():
        return BPETokenizer.load(path)
    tokenizer = BPETokenizer.train(train_text, vocab)
    tokenizer.save(path)
    return tokenizer


def bits_per_byte(model: GPT, ids: torch.Tensor, token_bytes: torch.Tensor, context: int) -> float:
    """Summed next-token loss over every window of the held-out ids, in bits, over the UTF-8
    bytes of the predicted tokens."""
    model.eval()
    total_nats, total_bytes = 0.0, 0
    dataset = SlidingWindowDataset(ids, context, context)
    loader = create_dataloader(dataset, batch_size=32, shuffle=False, drop_last=False)
    with torch.no_grad():
        for inputs, targets in loader:
            logits = model(inputs)
            nats = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), targets.flatten(), reduction="sum"
            )
            total_nats += nats.item()
            total_bytes += int(token_bytes[targets].sum())
    model.train()
    return total_nats / math.log(2) / total_bytes


def build(config: tuple, seed: int) -> GPT:
    vocab, n_layer, n_head, n_embd, _, context, _, dropout = config
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, context_length=context, n_layer=n_layer,
                         n_head=n_head, n_embd=n_embd, dropout=dropout))


def seconds_per_step(config: tuple, train_ids: torch.Tensor) -> float:
    """Seconds of one optimizer step, timed after three warmup steps: measured once per
    configuration, on an otherwise idle machine, so that the runs can be given step counts."""
    batch, context, lr = config[4], config[5], config[6]
    model = build(config, seed=0)
    optimizer = make_optimizer(model, TrainingConfig(learning_rate=lr, max_steps=1))
    loader = create_dataloader(SlidingWindowDataset(train_ids, context, context),
                               batch_size=batch, seed=0)
    batches = iter(loader)
    timings = []
    for _ in range(11):
        inputs, targets = next(batches)
        start = time.perf_counter()
        _, loss = model(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        timings.append(time.perf_counter() - start)
    return sorted(timings[3:])[len(timings[3:]) // 2]  # the median of the timed steps


def run(config: tuple, train_ids, val_ids, token_bytes, steps: int, seed: int) -> dict:
    vocab, n_layer, n_head, n_embd, batch, context, lr, dropout = config
    model = build(config, seed)
    loader = create_dataloader(SlidingWindowDataset(train_ids, context, context),
                               batch_size=batch, seed=seed)
    optimizer = make_optimizer(model, TrainingConfig(learning_rate=lr, max_steps=steps))
    scheduler = warmup_cosine_scheduler(optimizer, warmup_steps=max(1, steps // 20),
                                        total_steps=steps, min_lr_ratio=0.1)
    start = time.perf_counter()
    step = 0
    while step < steps:
        for inputs, targets in loader:
            _, loss = model(inputs, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            if step >= steps:
                break
    wall = time.perf_counter() - start
    bpb = bits_per_byte(model, val_ids, token_bytes, context)
    return {"vocab": vocab, "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd,
            "batch": batch, "context": context, "lr": lr, "dropout": dropout, "steps": steps,
            "tokens": steps * batch * context, "epochs": steps * batch * context / len(train_ids),
            "wall_seconds": round(wall, 1), "train_loss_last": loss.item(),
            "val_bits_per_byte": round(bpb, 4),
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--out", type=Path, default=Path("sweep.jsonl"))
    parser.add_argument("--cache", type=Path, default=Path(".cache/sweep"))
    parser.add_argument("--only", type=int, nargs="*", help="indices into GRID")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--measure-only", action="store_true",
                        help="only time one step of each configuration (run on an idle machine)")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    text = data_files.fetch("tinystories-2mib").read_text(encoding="utf-8")
    train_text, val_text = split_text(text, 0.9)
    grid = [GRID[i] for i in args.only] if args.only else GRID
    timing_path = args.cache / "seconds_per_step.json"
    timings = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    for config in grid:
        tokenizer = tokenizer_for(config[0], train_text, args.cache)
        encoded = {}
        for name, part in (("train", train_text), ("val", val_text)):
            ids_path = args.cache / f"{name}-{config[0]}.pt"
            if not ids_path.is_file():
                torch.save(torch.tensor(tokenizer.encode(part, allowed_special="all")), ids_path)
            encoded[name] = torch.load(ids_path)
        token_bytes = torch.tensor([len(tokenizer.token_bytes(i))
                                    for i in range(tokenizer.vocab_size)])
        timings[str(config)] = timings.get(str(config)) or seconds_per_step(config,
                                                                            encoded["train"])
        timing_path.write_text(json.dumps(timings, indent=1))
        if args.measure_only:
            print(config, f"{timings[str(config)]:.3f} s/step", flush=True)
            continue
        steps = int(args.seconds / timings[str(config)])
        result = run(config, encoded["train"], encoded["val"], token_bytes, steps, args.seed)
        result["idle_seconds_per_step"] = timings[str(config)]
        print(json.dumps(result), flush=True)
        with args.out.open("a") as file:
            file.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
