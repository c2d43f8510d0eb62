"""The STSbenchmark recipe that train_scratch.py and train_continue.py share.

SBERT section 4.2 trains on the STSb training set with the regression objective (cosine
similarity of u and v against the gold score / 5), picks the model on the dev set and reports
Spearman's rank correlation on the test set. The two scripts differ only in where the model comes
from; everything after that, the numbered steps below, is this file.
Read next: the two scripts at the top of the repository.
"""

import argparse
import json
import math
import random
import re
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data import SentencesDataset, load_stsb
from .evaluation import EmbeddingSimilarityEvaluator
from .losses import CosineSimilarityLoss
from .sentence_transformer import SentenceTransformer


def parser(description: str, default_model: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=default_model, help="local folder or hub name")
    p.add_argument("--data", default=None,
                   help="STSb folder (sts-*.csv) or stsbenchmark.tsv.gz; default: download once")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="share of steps for warmup")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--evaluation-steps", type=int, default=0,
                   help="also evaluate on dev every N steps (0: only at each epoch's end)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    p.add_argument("--output", default=None, help="default: output/<script>-<model>-<time>")
    return p


def default_output(script: str, model: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model)
    return Path("output") / f"{script}-{name}-{datetime.now():%Y-%m-%d_%H-%M-%S}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_on_stsb(model: SentenceTransformer, args, script: str) -> dict:
    """Fine-tune `model` on STSb train, keep the best on dev, report dev and test."""
    output = Path(args.output) if args.output else default_output(script, args.model)
    # 1. Data: pairs with gold scores scaled to 0-1.
    train, dev, test = (load_stsb(split, args.data) for split in ("train", "dev", "test"))
    loader = DataLoader(SentencesDataset(train, model), shuffle=True, batch_size=args.batch_size)
    # 2. The siamese regression objective and the dev evaluator that picks the best model.
    loss = CosineSimilarityLoss(model)
    dev_evaluator = EmbeddingSimilarityEvaluator.from_input_examples(dev, name="sts-dev")
    # 3. Train: warmup over the first warmup-ratio of all steps, then linear decay.
    steps = args.epochs * len(loader)
    if args.max_steps is not None:
        steps = min(steps, args.max_steps)
    warmup = math.ceil(steps * args.warmup_ratio)
    print(f"Training on {len(train)} pairs: {steps} steps of batch {args.batch_size}, "
          f"{warmup} warmup steps, device {model.device}; saving to {output}")
    start = time.perf_counter()
    rows = model.fit(train_objectives=[(loader, loss)], evaluator=dev_evaluator, epochs=args.epochs,
              warmup_steps=warmup, optimizer_params={"lr": args.lr},
              evaluation_steps=args.evaluation_steps, output_path=str(output),
              max_steps=args.max_steps, seed=args.seed)
    seconds = time.perf_counter() - start
    # 4. The last state goes to final/; the figures are those of the best model on dev.
    model.save(output / "final")
    best_row = max(rows, key=lambda row: np.nan_to_num(row[dev_evaluator.primary_metric], nan=-1))
    dev_scores = {k: v for k, v in best_row.items() if k not in ("step", "epoch", "loss", "lr")}
    best = SentenceTransformer(str(output), device=model.device)
    test_evaluator = EmbeddingSimilarityEvaluator.from_input_examples(test, name="sts-test")
    results = {"dev": dev_scores, "test": test_evaluator(best), "model": args.model,
               "epochs": args.epochs, "steps": steps, "batch_size": args.batch_size,
               "lr": args.lr, "seed": args.seed, "train_seconds": round(seconds, 1)}
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"dev  Spearman (cosine): {results['dev']['spearman_cosine']:.4f}")
    print(f"test Spearman (cosine): {results['test']['spearman_cosine']:.4f}")
    print(f"trained in {seconds:.0f} s; results in {output / 'results.json'}")
    return results
