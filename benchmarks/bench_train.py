"""Training speed and memory of minisbert against sentence-transformers, same model, same data.

Times N steps of CosineSimilarityLoss training on STSb train pairs (batch 16, AdamW, lr 2e-5) with
minisbert's fit (fp32, and use_amp=True: bf16 autocast on CPU) and sentence-transformers, in fp32
and with AMP. For sentence-transformers that is SentenceTransformerTrainer where `datasets` and
`accelerate` are installed (its default optimizer is torch's fused AdamW; AMP is its bf16 flag,
or fp16 on a GPU without bf16), else old_fit, its pre-v3 loop (torch's default AdamW; use_amp
autocasts to bf16 on CPU, to fp16 with a GradScaler on CUDA). The configurations alternate inside
every repetition; each timed call is a whole fit()/train() of N steps, optimizer set-up included,
model loading and the Trainer's construction not. With --epoch it also trains one full epoch with
minisbert in fp32 and in bf16 AMP and reports STSb test Spearman of both.

  python benchmarks/bench_train.py [--quick] [--threads 1] [--steps 20] [--epoch] [--json out.json]
  PYTHONPATH=/path/to/datasets-and-accelerate /work/stenv/bin/python benchmarks/bench_train.py
"""

import json
import sys
import tempfile
from pathlib import Path

import common
import numpy as np
import torch
from scipy.stats import spearmanr
from torch.utils.data import DataLoader

from minisbert import InputExample, SentenceTransformer, SentencesDataset, losses

def parse_args(argv=None):
    p = common.parser(__doc__, synthetic="pairs", probe="AMP")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epoch", action="store_true",
                   help="also train one epoch in fp32 and bf16 AMP and compare STSb test Spearman")
    p.add_argument("--quick", action="store_true", help="10 steps, 2 repetitions")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.reps = 10, 2
    return args


def pairs(args, split: str = "train") -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score in [0, 1]) of STSb, or synthetic pairs where it is absent."""
    if args.stsb.is_dir():
        return [(r[5], r[6], float(r[4]) / 5) for r in common.stsb_rows(args.stsb, split)]
    words = [w for w in (args.model / "vocab.txt").read_text(encoding="utf-8").split("\n")
             if w.isalpha()]
    a, b = (common.synthetic_sentences(words, 5749, seed=s) for s in (1, 2))
    rng = np.random.default_rng(0)
    return list(zip(a, b, rng.random(len(a)).tolist()))


def st_api() -> str:
    """sentence-transformers' recommended SentenceTransformerTrainer where its extra packages
    (datasets, accelerate) are installed, else its pre-v3 loop old_fit."""
    try:
        import accelerate  # noqa: F401
        import datasets  # noqa: F401
    except ImportError:
        return "old_fit"
    return "trainer"


class Run:
    """One configuration: a loaded model, its data and loss; calling it trains N steps."""

    def __init__(self, library: str, amp: bool, args, data):
        self.library, self.amp, self.args, self.data = library, amp, args, data
        self.prepared, self.optimizer_params = None, {"lr": 2e-5}
        generator = torch.Generator().manual_seed(0)
        if library == "minisbert":
            self.model = SentenceTransformer(str(args.model), device=args.device)
            examples = [InputExample(texts=[a, b], label=y) for a, b, y in data]
            self.loader = DataLoader(SentencesDataset(examples), batch_size=args.batch_size,
                                     shuffle=True, generator=generator)
            self.loss = losses.CosineSimilarityLoss(self.model)
            return
        import sentence_transformers as st
        from sentence_transformers.sentence_transformer import losses as st_losses
        self.model = st.SentenceTransformer(str(args.model), device=args.device)
        self.loss = st_losses.CosineSimilarityLoss(self.model)
        self.api = st_api()
        if self.api == "old_fit":
            examples = [st.InputExample(texts=[a, b], label=y) for a, b, y in data]
            self.loader = DataLoader(examples, batch_size=args.batch_size, shuffle=True,
                                     generator=generator)
        else:
            import pyarrow
            from datasets import Dataset
            a, b, y = (list(column) for column in zip(*data))
            # A fixed fingerprint skips datasets' hashing of the table, which some
            # datasets/dill/pyarrow version mixes cannot do; it plays no part in training.
            table = pyarrow.table({"sentence1": a, "sentence2": b, "score": y})
            self.dataset = Dataset(table, fingerprint="stsb-train-bench")

    def __call__(self, steps: int | None = None, warmup_steps: int = 0):
        steps = steps or self.args.steps
        if self.library == "minisbert":
            self.model.fit([(self.loader, self.loss)], epochs=1, max_steps=steps,
                           warmup_steps=warmup_steps, use_amp=self.amp, show_progress_bar=False,
                           optimizer_params=self.optimizer_params)
        elif self.api == "old_fit":
            self.model.old_fit([(self.loader, self.loss)], epochs=1, steps_per_epoch=steps,
                               warmup_steps=warmup_steps, use_amp=self.amp, show_progress_bar=False,
                               optimizer_params=self.optimizer_params)
        else:
            if self.prepared is None or self.prepared.args.max_steps != steps:
                self.prepare(steps, warmup_steps)
            trainer, self.prepared = self.prepared, None
            trainer.train()

    def prepare(self, steps: int | None = None, warmup_steps: int = 0) -> None:
        """Build the next SentenceTransformerTrainer ahead of the timed call, as the set-up
        (model card, accelerate state) is no training step; minisbert's fit has none."""
        if self.library != "minisbert" and self.api == "trainer":
            self.prepared = self.trainer(steps or self.args.steps, warmup_steps)

    def trainer(self, steps: int, warmup_steps: int):
        """A SentenceTransformerTrainer for `steps` steps, saving and logging nothing. Its AMP
        follows the Trainer's flags: bf16 where the device has it, else fp16."""
        from sentence_transformers import (SentenceTransformerTrainer,
                                           SentenceTransformerTrainingArguments)
        from minisbert.precision import supports_bf16
        bf16 = self.amp and supports_bf16(self.args.device)
        options = SentenceTransformerTrainingArguments(
            output_dir=tempfile.mkdtemp(prefix="st-bench-"), max_steps=steps,
            per_device_train_batch_size=self.args.batch_size, learning_rate=2e-5,
            warmup_steps=warmup_steps, bf16=bf16, fp16=self.amp and not bf16,
            use_cpu=self.args.device == "cpu", report_to="none", save_strategy="no",
            logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0)
        trainer = SentenceTransformerTrainer(model=self.model, args=options,
                                             train_dataset=self.dataset, loss=self.loss)
        from transformers.trainer_callback import PrinterCallback
        trainer.remove_callback(PrinterCallback)  # it prints the metrics of every run
        return trainer


def memory_probe(args) -> None:
    """In a fresh process: N training steps of one configuration, then print the memory."""
    common.set_threads(args.threads)
    library, amp = args.memory_probe
    run = Run(library, amp == "amp", args, pairs(args))
    print(json.dumps(common.memory_report(run, args.device)))


def compare(args, libraries) -> list[dict]:
    data = pairs(args)
    runs = {f"{lib} {'amp' if amp else 'fp32'}": Run(lib, amp, args, data)
            for amp in (False, True) for lib in libraries}
    for run in runs.values():
        run(steps=3)  # warm-up: oneDNN kernels, optimizer code paths
    print(f"{args.steps} steps of batch {args.batch_size}: {', '.join(runs)}", file=sys.stderr)
    seconds = common.alternate(runs, args.reps, args.device, warmup=False)
    rows = []
    for name, run in runs.items():
        wall, cpu = common.median(seconds[name]["wall"]), common.median(seconds[name]["cpu"])
        rows.append({"name": name, "library": run.library, "amp": run.amp,
                     "api": getattr(run, "api", "fit"), "optimizer": run.optimizer_params,
                     "steps": args.steps, "seconds": seconds[name],
                     "steps_per_s": args.steps / wall, "steps_per_cpu_s": args.steps / cpu})
    for row in rows:
        st_fp32 = [r for r in rows if r["library"] == common.ST_NAME and not r["amp"]]
        st_same = [r for r in rows if r["library"] == common.ST_NAME and r["amp"] == row["amp"]]
        for label, ref in (("same", st_same), ("fp32", st_fp32)):
            for key in ("steps_per_s", "steps_per_cpu_s"):
                row[f"vs_st_{label}_{key}"] = row[key] / ref[0][key] if ref else None
    return rows


def one_epoch_spearman(args) -> list[dict]:
    """STSb test Spearman (cosine) after one epoch, 10% warm-up, in fp32 and in bf16 AMP."""
    test = pairs(args, "test")
    out = []
    for amp in (False, True):
        torch.manual_seed(0)
        run = Run("minisbert", amp, args, pairs(args))
        steps = len(run.loader)
        run(steps=steps, warmup_steps=steps // 10)
        u = run.model.encode([a for a, _, _ in test], show_progress_bar=False)
        v = run.model.encode([b for _, b, _ in test], show_progress_bar=False)
        rho = spearmanr((u * v).sum(1), [y for _, _, y in test]).statistic
        out.append({"amp": amp, "steps": steps, "test_spearman": float(rho)})
        print(f"  one epoch, {'bf16 amp' if amp else 'fp32'}: test Spearman {rho:.4f}",
              file=sys.stderr, flush=True)
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.memory_probe:
        memory_probe(args)
        return {}
    threads = common.set_threads(args.threads)
    libraries = common.libraries(args)
    rows = compare(args, libraries)
    if not args.no_memory:
        for row in rows:
            probe = ["--memory-probe", row["library"], "amp" if row["amp"] else "fp32",
                     "--model", str(args.model), "--stsb", str(args.stsb), "--device", args.device,
                     "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                     "--threads", str(threads)]
            row["memory"] = common.probe_in_subprocess(Path(__file__), probe)
    return common.report(args, {"train": rows,
                                "epoch": one_epoch_spearman(args) if args.epoch else None},
                         print_tables)


def print_tables(result: dict, args) -> None:
    m = result["machine"]
    print(f"\n### Training, {args.steps} steps of batch {args.batch_size}, device {args.device}, "
          f"{m['threads']} threads, median of {args.reps}\n")
    nan = float("nan")
    header = ["configuration", "steps/s", "x ST same", "x ST fp32", "steps/cpu-s",
              "x ST same (cpu)", "x ST fp32 (cpu)", "peak RSS MiB"]
    if args.device.startswith("cuda"):
        header.append("CUDA peak MiB")
    rows = []
    for r in result["train"]:
        mem = r.get("memory", {})
        row = [r["name"] + (f" ({r['api']})" if r["library"] == common.ST_NAME else ""), r["steps_per_s"],
               r["vs_st_same_steps_per_s"] or nan, r["vs_st_fp32_steps_per_s"] or nan,
               r["steps_per_cpu_s"], r["vs_st_same_steps_per_cpu_s"] or nan,
               r["vs_st_fp32_steps_per_cpu_s"] or nan, mem.get("peak_rss_mib", nan)]
        if args.device.startswith("cuda"):
            row.append(mem.get("cuda_peak_mib", nan))
        rows.append(row)
    print(common.markdown_table(header, rows))
    print("\namp: minisbert bf16 autocast where bf16 is native, else fp16 + GradScaler; "
          "sentence-transformers trainer: bf16 where native, else fp16; old_fit: torch.autocast's "
          "default dtype (bf16 on CPU, fp16 on CUDA)")
    if result["epoch"]:
        print("\n### One epoch (minisbert), STSb test Spearman\n")
        print(common.markdown_table(["precision", "steps", "test Spearman"],
                                    [["bf16 amp" if e["amp"] else "fp32", e["steps"],
                                      f"{e['test_spearman']:.4f}"] for e in result["epoch"]]))


if __name__ == "__main__":
    main()
