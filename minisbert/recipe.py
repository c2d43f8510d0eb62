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
import os
import random
import re
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import distributed, resume
from .data import SentencesDataset, load_stsb
from .evaluation import EmbeddingSimilarityEvaluator
from .losses import AnglELoss, CoSENTLoss, CosineSimilarityLoss
from .plots import plot_training_curves, require_matplotlib
from .sentence_transformer import SentenceTransformer

# --loss: SBERT's regression objective (section 4.2), or a ranking objective on the same pairs.
LOSSES = {"cosine": CosineSimilarityLoss, "cosent": CoSENTLoss, "angle": AnglELoss}


def at_least(minimum: int):
    """An argparse type: an int >= minimum, else a usage error that names the option."""
    def count(text: str) -> int:
        value = int(text)  # not a number: argparse reports "invalid count value"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return count


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1], else a usage error that names the option."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


class RecipeParser(argparse.ArgumentParser):
    """Also checks --resume while it parses: before a model is downloaded or loaded."""

    def parse_args(self, args=None, namespace=None):
        args = super().parse_args(args, namespace)
        if args.resume is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            self.error("argument --resume: resuming needs one process, not torchrun (a "
                       "checkpoint holds one process's state)")
        if args.resume is not None:
            try:
                options = checkpoint_options(args, output_folder(args, ""))
                resume.find_checkpoint(options["resume_from_checkpoint"], options["checkpoint_path"])
            except (ValueError, FileNotFoundError) as e:
                self.error(f"argument --resume: {e}")
        return args


def parser(description: str, default_model: str) -> argparse.ArgumentParser:
    p = RecipeParser(description=description,
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=default_model, help="local folder or hub name")
    p.add_argument("--data", default=None,
                   help="STSb folder (sts-*.csv) or stsbenchmark.tsv.gz; None: download once")
    p.add_argument("--epochs", type=at_least(1), default=4, help="passes over STSb train")
    p.add_argument("--batch-size", type=at_least(1), default=16, help="sentence pairs per step")
    p.add_argument("--lr", type=float, default=2e-5, help="peak learning rate of AdamW")
    p.add_argument("--warmup-ratio", type=fraction, default=0.1, help="share of steps for warmup")
    p.add_argument("--seed", type=int, default=42, help="data order, dropout and new weights")
    p.add_argument("--max-steps", type=at_least(1), default=None,
                   help="stop after this many steps; None: after the epochs")
    p.add_argument("--evaluation-steps", type=at_least(0), default=0,
                   help="also evaluate on dev every N steps (0: only at each epoch's end)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...; None: cuda if any")
    p.add_argument("--output", default=None, help="None: output/<script>-<model>-<time>")
    p.add_argument("--checkpoint-steps", type=at_least(0), default=0,
                   help="save a resumable checkpoint to <output>/checkpoints every N steps "
                        "(0: never); the newest two are kept")
    p.add_argument("--resume", default=None,
                   help='continue a stopped run from a checkpoint folder, or "latest" (the newest '
                        "in <output>/checkpoints; needs --output); use the run's other options")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="bf16/fp16: encode in it and train with mixed precision (bf16 where the "
                        "hardware has it, else fp16 with loss scaling)")
    p.add_argument("--loss", default="cosine", choices=list(LOSSES),
                   help="cosine: CosineSimilarityLoss (default), cosent: CoSENTLoss, angle: AnglELoss")
    p.add_argument("--plot", action="store_true",
                   help="after training, draw loss and dev Spearman to <output>/curves.png (matplotlib)")
    return p


def default_output(script: str, model: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model)
    return Path("output") / f"{script}-{name}-{datetime.now():%Y-%m-%d_%H-%M-%S}"


def output_folder(args, script: str) -> Path:
    """--output; else a new folder, or for --resume <checkpoint> the run that checkpoint is in."""
    checkpoint = getattr(args, "resume", None)  # a Namespace built by hand may lack the option
    if args.output:
        return Path(args.output)
    if checkpoint == "latest":
        raise ValueError("--resume latest needs --output, the folder of the run to continue")
    if checkpoint is not None:
        return Path(checkpoint).resolve().parent.parent  # <output>/checkpoints/checkpoint-<step>
    return default_output(script, args.model)


def checkpoint_options(args, output: Path) -> dict:
    """fit's checkpoint arguments for --checkpoint-steps and --resume."""
    checkpoint = getattr(args, "resume", None)
    return {"checkpoint_path": str(output / "checkpoints"),
            "checkpoint_save_steps": getattr(args, "checkpoint_steps", 0),
            "checkpoint_save_total_limit": 2,
            "resume_from_checkpoint": True if checkpoint == "latest" else checkpoint}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_on_stsb(model: SentenceTransformer, args, script: str) -> dict:
    """Fine-tune `model` on STSb train, keep the best on dev, report dev and test.

    Under torchrun every rank trains on its share of the data; rank 0 alone saves and reports,
    and the other ranks return {} once training is done."""
    output = output_folder(args, script)
    # A Namespace built by hand (as in the tests) may lack the newer options.
    loss_name, plot = getattr(args, "loss", "cosine"), getattr(args, "plot", False)
    precision = getattr(args, "precision", "fp32")
    model.precision = precision  # the evaluators' encode runs in it; training uses autocast
    if plot:
        require_matplotlib()  # fail before training, not after
    # 1. Data: pairs with gold scores scaled to 0-1.
    train, dev, test = (load_stsb(split, args.data) for split in ("train", "dev", "test"))
    dataset = SentencesDataset(train, model)
    sampler = distributed.sampler(dataset, seed=args.seed)  # None: a single process shuffles
    loader = DataLoader(dataset, shuffle=sampler is None, sampler=sampler, batch_size=args.batch_size)
    # 2. The siamese objective (default: regression) and the dev evaluator that picks the best model.
    loss = LOSSES[loss_name](model)
    dev_evaluator = EmbeddingSimilarityEvaluator.from_input_examples(dev, name="sts-dev")
    # 3. Train: warmup over the first warmup-ratio of all steps, then linear decay.
    steps = args.epochs * len(loader)
    if args.max_steps is not None:
        steps = min(steps, args.max_steps)
    warmup = math.ceil(steps * args.warmup_ratio)
    world = distributed.world_size()
    batch = f"{args.batch_size}" if world == 1 else \
        f"{args.batch_size} per process x {world} processes = {args.batch_size * world}"
    options = checkpoint_options(args, output)
    if distributed.is_main():
        print(f"Training on {len(train)} pairs: {steps} steps of batch {batch}, "
              f"{warmup} warmup steps, device {model.device}, {precision}; saving to {output}")
        if options["resume_from_checkpoint"]:
            print("Resuming from", resume.find_checkpoint(options["resume_from_checkpoint"],
                                                          options["checkpoint_path"]))
    start = time.perf_counter()
    rows = model.fit(train_objectives=[(loader, loss)], evaluator=dev_evaluator, epochs=args.epochs,
              warmup_steps=warmup, optimizer_params={"lr": args.lr},
              evaluation_steps=args.evaluation_steps, output_path=str(output),
              max_steps=args.max_steps, seed=args.seed, use_amp=precision != "fp32",
              **options)
    seconds = time.perf_counter() - start
    if not distributed.is_main():
        return {}
    # 4. The last state goes to final/; the figures are those of the best model on dev.
    model.save(output / "final")
    best_row = max(rows, key=lambda row: np.nan_to_num(row[dev_evaluator.primary_metric], nan=-1))
    not_scores = ("step", "epoch", "loss", "lr", "nonfinite_steps")
    dev_scores = {k: v for k, v in best_row.items() if k not in not_scores}
    best = SentenceTransformer(str(output), device=model.device, precision=precision)
    test_evaluator = EmbeddingSimilarityEvaluator.from_input_examples(test, name="sts-test")
    results = {"dev": dev_scores, "test": test_evaluator(best), "model": args.model,
               "epochs": round(steps / len(loader), 4),  # passes done: < --epochs if cut short
               "steps": steps, "batch_size": args.batch_size,
               "processes": world, "lr": args.lr, "loss": loss_name, "precision": precision,
               "seed": args.seed, "train_seconds": round(seconds, 1)}
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"dev  Spearman (cosine): {results['dev']['spearman_cosine']:.4f}")
    print(f"test Spearman (cosine): {results['test']['spearman_cosine']:.4f}")
    print(f"trained in {seconds:.0f} s; results in {output / 'results.json'}")
    if plot:
        print(f"curves: {plot_training_curves(output / 'metrics.csv', output / 'curves.png')}")
    return results
