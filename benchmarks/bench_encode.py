"""Encode speed and memory of minisbert against sentence-transformers, same model, same data.

Encodes the 2758 STSb test sentences (and samples of 1k/4k/16k STSb train sentences, to check that
time grows linearly) with batch size 32 in fp32 and bf16, alternating the libraries inside every
repetition; prints sentences/second (median), peak memory (a fresh process per configuration) and
the ratio minisbert / sentence-transformers, and the share of this machine's matrix-product
throughput that encode reaches. sentence-transformers is optional: without it only minisbert runs.

  python benchmarks/bench_encode.py [--quick] [--threads 1] [--json out.json]
  /work/stenv/bin/python benchmarks/bench_encode.py      # with sentence-transformers

Useful FLOPs count only real tokens, never padding. For a sentence of L tokens through n layers of
width C and feed-forward width I:  2 * P * L + 4 * n * C * L^2,  where P = n * (4 C^2 + 2 C I) are
the weights in matrix products (q, k, v, out; up, down): 2 FLOPs per multiply-add, and attention's
Q K^T and A V each take L^2 * C multiply-adds per layer. Embeddings, LayerNorm, GELU, softmax and
pooling are left out (they are not matrix products). On a CPU the share of the peak compares FLOPs
per CPU-second of encode with those of a 2048^3 matrix product, which cancels the time other
processes take on a shared machine; on a GPU it uses wall time.
"""

import argparse
import json
import sys
from pathlib import Path

import common
import torch

from minisbert import SentenceTransformer
from minisbert.config import BertConfig
from minisbert.precision import resolve_dtype

def parse_args(argv=None):
    p = common.parser(__doc__, synthetic="sentences", probe="PRECISION")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--sizes", default="1000,4000,16000", help="sentence counts of the scaling runs")
    p.add_argument("--scaling-precisions", default="bf16")
    p.add_argument("--quick", action="store_true", help="1000 test sentences, 2 repetitions, "
                   "scaling 500/1000/2000")
    p.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.sizes, args.n = 2, "500,1000,2000", args.n or 1000
    return args


def stsb_test_sentences(args) -> list[str]:
    """The STSb test sentences (both columns, 2758), or synthetic ones where STSb is absent."""
    if args.stsb.is_dir():
        rows = common.stsb_rows(args.stsb, "test")
        sentences = [r[5] for r in rows] + [r[6] for r in rows]
    else:
        sentences = common.synthetic_sentences(vocabulary_words(args.model), 2758)
    return sentences[:args.n] if args.n else sentences


def pool_for_scaling(args) -> list[str]:
    if args.stsb.is_dir():
        rows = common.stsb_rows(args.stsb, "train")
        return [r[5] for r in rows] + [r[6] for r in rows]
    return common.synthetic_sentences(vocabulary_words(args.model), 20000, seed=1)


def vocabulary_words(model: Path) -> list[str]:
    words = (model / "vocab.txt").read_text(encoding="utf-8").split("\n")
    return [w for w in words if w.isalpha()]


def load(library: str, precision: str, args):
    """A model ready to encode in `precision`, the fastest way each library offers: minisbert
    casts a copy of its weights once (model.precision); sentence-transformers loads its weights in
    that dtype (model_kwargs={"dtype": ...}; on the 2758 STSb test sentences it ran as fast as
    model.to(dtype) and 30% faster than autocast, and it never holds fp32 weights)."""
    dtype = resolve_dtype(precision)
    if library == "minisbert":
        return SentenceTransformer(str(args.model), device=args.device, precision=precision)
    import sentence_transformers
    kwargs = {"model_kwargs": {"dtype": dtype}} if dtype != torch.float32 else {}
    return sentence_transformers.SentenceTransformer(str(args.model), device=args.device, **kwargs)


def encoder(model, sentences, batch_size):
    return lambda: model.encode(sentences, batch_size=batch_size, show_progress_bar=False)


def matmul_throughput(device: str, dtype: torch.dtype, n: int = 2048, reps: int = 10) -> dict:
    """GFLOP per second of wall time and per CPU-second of an n x n by n x n matrix product
    (2 n^3 FLOPs), medians of `reps`."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    seconds = common.alternate({"matmul": lambda: a @ b}, reps, device, quiet=True)["matmul"]
    return {clock: 2 * n**3 / common.median(seconds[clock]) / 1e9 for clock in ("wall", "cpu")}


def useful_flops(model, sentences: list[str]) -> tuple[float, int]:
    """(FLOPs, tokens) of encoding `sentences`, by the formula in the module docstring."""
    config: BertConfig = model[0].encoder.config
    n, C, I = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    P = n * (4 * C * C + 2 * C * I)
    lengths = torch.cat([model.tokenize(sentences[i:i + 4096])["attention_mask"].sum(1)
                         for i in range(0, len(sentences), 4096)]).double()
    return float(2 * P * lengths.sum() + 4 * n * C * (lengths ** 2).sum()), int(lengths.sum())


def memory_probe(args) -> None:
    """In a fresh process: load one configuration, encode the test set once, print the memory."""
    common.set_threads(args.threads)
    library, precision = args.memory_probe
    sentences = stsb_test_sentences(args)
    model = load(library, precision, args)
    report = common.memory_report(encoder(model, sentences, args.batch_size), args.device)
    print(json.dumps(report))


def compare(args, sentences, precisions, libraries) -> list[dict]:
    """One row per (library, precision): sentences/s over alternating repetitions."""
    models = {(lib, p): load(lib, p, args) for p in precisions for lib in libraries}
    configs = {f"{lib} {p}": encoder(m, sentences, args.batch_size) for (lib, p), m in models.items()}
    print(f"encoding {len(sentences)} sentences: {', '.join(configs)}", file=sys.stderr)
    seconds = common.alternate(configs, args.reps, args.device)
    flops, tokens = useful_flops(models[("minisbert", precisions[0])], sentences)
    rows = []
    for (lib, p), name in zip(models, configs):
        s, cpu = common.median(seconds[name]["wall"]), common.median(seconds[name]["cpu"])
        rows.append({"library": lib, "precision": p, "sentences": len(sentences),
                     "seconds": seconds[name], "median_s": s, "median_cpu_s": cpu,
                     "sentences_per_s": len(sentences) / s, "sentences_per_cpu_s": len(sentences) / cpu,
                     "useful_gflop": flops / 1e9, "useful_gflop_per_s": flops / s / 1e9,
                     "tokens": tokens})
    return rows


def ratios(row: dict, rows: list[dict], key: str) -> dict:
    """row's speed over sentence-transformers' in the same precision and in fp32, by wall time
    and by CPU time (None without sentence-transformers)."""
    out = {}
    for label, precision in (("same_precision", row["precision"]), ("fp32", "fp32")):
        st = [r for r in rows if r["library"] == common.ST_NAME and r["precision"] == precision]
        for clock, k in (("", key), ("_cpu", key.replace("_per_s", "_per_cpu_s"))):
            out[f"vs_st_{label}{clock}"] = row[k] / st[0][k] if st else None
    return out


def scaling(args, pool, precisions) -> list[dict]:
    sizes = [int(x) for x in args.sizes.split(",")]
    models = {p: load("minisbert", p, args) for p in precisions}
    rows = []
    for p, model in models.items():
        model.encode(pool[:512], batch_size=args.batch_size, show_progress_bar=False)  # warm-up
        configs = {n: encoder(model, common.sample(pool, n, seed=n), args.batch_size) for n in sizes}
        tokens = {n: useful_flops(model, common.sample(pool, n, seed=n))[1] for n in sizes}
        seconds = common.alternate(configs, 1, args.device, warmup=False)
        base = None
        for n in sizes:
            wall, cpu = seconds[n]["wall"][0], seconds[n]["cpu"][0]
            base = base or cpu / tokens[n]
            rows.append({"precision": p, "sentences": n, "tokens": tokens[n], "seconds": wall,
                         "cpu_seconds": cpu, "us_per_sentence": wall / n * 1e6,
                         "cpu_us_per_token": cpu / tokens[n] * 1e6,
                         "relative_to_smallest": cpu / tokens[n] / base})
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.memory_probe:
        memory_probe(args)
        return {}
    threads = common.set_threads(args.threads)
    gpu = args.device.startswith("cuda")
    precisions = args.precisions.split(",")
    libraries = common.libraries(args)
    sentences = stsb_test_sentences(args)

    peaks = {p: matmul_throughput(args.device, resolve_dtype(p)) for p in precisions}
    rows = compare(args, sentences, precisions, libraries)
    for row in rows:
        # On a shared CPU, compare per CPU-second (contention cancels); a GPU has only wall time.
        clock, seconds = ("wall", "median_s") if gpu else ("cpu", "median_cpu_s")
        row["share_of_matmul_peak"] = \
            row["useful_gflop"] / row[seconds] / peaks[row["precision"]][clock]
        row.update(ratios(row, rows, "sentences_per_s"))
        if not args.no_memory:
            probe = ["--memory-probe", row["library"], row["precision"], "--model", str(args.model),
                     "--stsb", str(args.stsb), "--device", args.device,
                     "--batch-size", str(args.batch_size)]
            probe += ["--n", str(args.n)] if args.n else []
            probe += ["--threads", str(threads)]
            row["memory"] = common.probe_in_subprocess(Path(__file__), probe)
    scale = scaling(args, pool_for_scaling(args), args.scaling_precisions.split(","))

    return common.report(args, {"matmul_gflop_per_s": peaks, "encode": rows, "scaling": scale},
                         print_tables)


def print_tables(result: dict, args) -> None:
    m = result["machine"]
    print(f"\n### Encode, batch {args.batch_size}, {result['encode'][0]['sentences']} sentences "
          f"({result['encode'][0]['tokens']} tokens), device {args.device}, {m['threads']} threads, "
          f"median of {args.reps}\n")
    header = ["library", "precision", "sentences/s", "x ST same precision", "x ST fp32",
              "sentences/cpu-s", "x ST same (cpu)", "x ST fp32 (cpu)", "useful GFLOP/s",
              "% of matmul peak", "peak RSS MiB", "RSS rise MiB"]
    if args.device.startswith("cuda"):
        header.append("CUDA peak MiB")
    rows = []
    for r in result["encode"]:
        mem = r.get("memory", {})
        nan = float("nan")
        row = [r["library"], r["precision"], r["sentences_per_s"],
               r["vs_st_same_precision"] or nan, r["vs_st_fp32"] or nan, r["sentences_per_cpu_s"],
               r["vs_st_same_precision_cpu"] or nan, r["vs_st_fp32_cpu"] or nan,
               r["useful_gflop_per_s"], 100 * r["share_of_matmul_peak"],
               mem.get("peak_rss_mib", nan), mem.get("peak_rise_mib") or nan]
        if args.device.startswith("cuda"):
            row.append(mem.get("cuda_peak_mib", nan))
        rows.append(row)
    print(common.markdown_table(header, rows))
    print("\nmatmul peak (2048^3): " + ", ".join(
        f"{p} {g['wall']:.0f} GFLOP/s ({g['cpu']:.0f} per cpu-s)"
        for p, g in result["matmul_gflop_per_s"].items()))
    print("% of matmul peak: useful FLOPs per CPU-second over the matmul's (per second on a GPU)")
    print("\n### Scaling (minisbert)\n")
    print(common.markdown_table(
        ["precision", "sentences", "tokens", "seconds", "us/sentence", "cpu-us/token",
         "cpu-us/token relative to smallest"],
        [[r["precision"], r["sentences"], r["tokens"], r["seconds"], r["us_per_sentence"],
          r["cpu_us_per_token"], r["relative_to_smallest"]] for r in result["scaling"]]))


if __name__ == "__main__":
    main()
