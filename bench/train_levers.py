"""The levers of fold training, one at a time, on the same batches of the same fold.

Usage (from the project root):

    .venv/bin/python bench/train_levers.py --levers loop,fused,fused+freeze4 [--steps 18] [--extra-turns 2]
    .venv/bin/python bench/train_levers.py --levers fused --profile   # torch.profiler's top operators

A lever set is `+`-joined words: `loop` (torch's default per-parameter AdamW), `foreach`, `fused`
(LEGOLAS's optimizer), `noclip` (no gradient clipping), `freezeN` (embeddings and the lowest N
layers frozen, as `TrainingConfig.freeze_layers`), `compile` (`torch.compile(dynamic=True)`; its
warm-up is printed apart), `clsonly` (the last layer at [CLS] only, training/last_layer.py),
`pcgdrop` (dropout masks from PCG64, training/dropout.py), `rowgrad` (the word-embedding gradient
and its clipping in the touched rows only, training/row_sparse.py), `rowadam` (`rowgrad` plus
AdamW moments only for the table rows that had a gradient; always fused) and `bf16` (bf16 autocast). LEGOLAS's
trainer runs `fused+clsonly+pcgdrop+rowadam` on CPU. Each set runs in its own subprocess on the first `--steps` length-grouped
batches of fold 0 (batch 16, MiniLM-L6, fp32 on CPU); the first 2 steps are warm-up. Prints
samples/s per set. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(levers: str, args) -> None:
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from train_throughput import fold_data

    from legolas_ml.training.batching import collate, length_grouped_batches
    from legolas_ml.training.losses import build_loss
    from legolas_ml.training.modeling import build_model, freeze_lower_layers
    from legolas_ml.training.trainer import _param_groups

    words = levers.split("+")
    cfg, data, train, _ = fold_data(args)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.labels)
    frozen = []
    for word in words:
        if word.startswith("freeze"):
            frozen = freeze_lower_layers(model, int(word[len("freeze"):]))
    trainable = [p for p in model.parameters() if p.requires_grad]
    loss_fn = build_loss("focal", np.maximum(np.bincount(train.targets, minlength=len(data.labels)), 1))
    # The context managers stay referenced until the process ends: their exit restores the model.
    from legolas_ml.training.dropout import pcg_dropout
    from legolas_ml.training.row_sparse import (
        RowSparseAdamW, row_sparse_embedding_grad, split_table_group,
    )
    from legolas_ml.training.last_layer import cls_only_last_layer

    held = []
    clip, table = torch.nn.utils.clip_grad_norm_, None
    if "rowgrad" in words or "rowadam" in words:
        held.append(row_sparse_embedding_grad(model))
        table = held[-1].__enter__()
        if table is None:
            raise SystemExit(f"{levers}: rowgrad/rowadam need a trainable word-embedding table (freezeN freezes it)")
        clip = table.clip_grad_norm_
    groups = _param_groups(model, cfg.weight_decay)
    if "rowadam" in words:
        optimizer = RowSparseAdamW(split_table_group(groups, table.weight), table, lr=cfg.lr)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused="fused" in words, foreach=True if "foreach" in words else None)
    if "clsonly" in words:
        held.append(cls_only_last_layer(model))
        assert held[-1].__enter__(), "the model does not support the [CLS]-only last layer"
    if "pcgdrop" in words:
        held.append(pcg_dropout(model, seed=cfg.seed))
        held[-1].__enter__()
    forward = torch.compile(model, dynamic=True) if "compile" in words else model
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if "bf16" in words else contextlib.nullcontext()
    targets = torch.from_numpy(train.targets)
    batches = length_grouped_batches(train.encoded.lengths, cfg.batch_size, np.random.default_rng(cfg.seed))[: args.steps]

    def step(idx):
        model.train()
        for module in frozen:
            module.eval()
        with precision:
            logits = forward(**collate(train.encoded, idx, data.pad_id)).logits
        loss = loss_fn(logits.float(), targets[idx])
        loss.backward()
        if "noclip" not in words:
            clip(trainable, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    for idx in batches[:2]:
        step(idx)
    warmup = time.perf_counter() - started
    timed = batches[2:]
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for idx in timed:
                step(idx)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    started = time.perf_counter()
    for idx in timed:
        step(idx)
    seconds = time.perf_counter() - started
    n = sum(len(idx) for idx in timed)
    real = sum(int(train.encoded.lengths[idx].sum()) for idx in timed)
    print(f"{levers:<22} {n / seconds:>7.2f} samples/s {real / seconds:>7.0f} real tokens/s  warm-up {warmup:5.1f}s  "
          f"({len(timed)} steps, threads {torch.get_num_threads()})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levers", default="loop,fused")
    parser.add_argument("--steps", type=int, default=18)
    parser.add_argument("--conversations", type=int, default=1500)
    parser.add_argument("--extra-turns", type=float, default=2.0)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one lever set
    args = parser.parse_args()
    args.epochs, args.batch_size, args.lr = 1, 16, 5e-5  # what fold_data reads
    if args.one:
        run(args.one, args)
        return
    for levers in args.levers.split(","):
        cmd = [sys.executable, __file__, "--one", levers, "--steps", str(args.steps), "--conversations", str(args.conversations),
               "--extra-turns", str(args.extra_turns), "--max-length", str(args.max_length)] + (["--profile"] if args.profile else [])
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        print(out.stdout.strip() or f"{levers} failed:\n{out.stderr[-2000:]}", flush=True)


if __name__ == "__main__":
    main()
