"""What bench_encode.py and bench_train.py share: data, timing, peak memory, tables.

Timing alternates the configurations inside every repetition (A B C D, A B C D, ...), so a burst
of load from other processes hits all of them alike, and reports medians. Peak memory is the
resident-set high-water mark of a fresh process per configuration (it counts every allocation of
torch, oneDNN, the tokenizer and Python, which tracemalloc would miss), plus
torch.cuda.max_memory_allocated on a GPU.
"""

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

SHARED = ROOT.parent / "shared"
DEFAULT_MODEL = SHARED / "models" / "all-MiniLM-L6-v2"
DEFAULT_STSB = SHARED / "data" / "stsbenchmark"
ST_NAME = "sentence-transformers"


def parser(doc: str, synthetic: str, probe: str) -> argparse.ArgumentParser:
    """The options both benchmarks take; each adds its own. `synthetic`: what stands in for STSb
    when it is absent; `probe`: the second value of the hidden --memory-probe option."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--stsb", type=Path, default=DEFAULT_STSB,
                   help=f"STSb folder; if it does not exist, synthetic {synthetic} are used")
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-st", action="store_true", help="minisbert only")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--memory-probe", nargs=2, metavar=("LIBRARY", probe), help=argparse.SUPPRESS)
    return p


def have_sentence_transformers() -> bool:
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


def libraries(args) -> list[str]:
    """minisbert, and sentence-transformers beside it unless --no-st or not installed."""
    if args.no_st or not have_sentence_transformers():
        return ["minisbert"]
    return ["minisbert", ST_NAME]


def stsb_rows(stsb_dir: Path, split: str) -> list[list[str]]:
    """Rows of sts-{split}.csv split on tabs only (the sentences hold unbalanced quotes)."""
    text = (Path(stsb_dir) / f"sts-{split}.csv").read_text(encoding="utf-8")
    return [line.split("\t") for line in text.splitlines()]


def sample(sentences: list[str], n: int, seed: int = 0) -> list[str]:
    """n sentences drawn with replacement: every size has the same length distribution."""
    rng = random.Random(seed)
    return [rng.choice(sentences) for _ in range(n)]


def synthetic_sentences(words: list[str], n: int, seed: int = 0) -> list[str]:
    """n sentences of 4 to 40 random words (STSb's are 14 tokens long on average)."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=min(40, 4 + int(rng.expovariate(1 / 9)))))
            for _ in range(n)]


def set_threads(threads: int | None) -> int:
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def alternate(configs: dict, reps: int, device: str, warmup: bool = True,
              quiet: bool = False) -> dict[str, dict]:
    """{name: fn} -> {name: {"wall": [seconds], "cpu": [seconds]}}, one entry per repetition; the
    functions take turns within each repetition. CPU time (of all this process's threads) leaves
    out the time other processes held the cores, so on a shared machine it is the steadier of the
    two; on a GPU only wall time means anything. The warm-up call lets oneDNN build its kernels
    for every shape it will see. A function with a `prepare` method has it called, untimed,
    before each timed call."""
    if warmup:
        for fn in configs.values():
            fn()
    seconds = {name: {"wall": [], "cpu": []} for name in configs}
    for rep in range(reps):
        for name, fn in configs.items():
            if hasattr(fn, "prepare"):
                fn.prepare()
            synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            synchronize(device)
            seconds[name]["wall"].append(time.perf_counter() - wall)
            seconds[name]["cpu"].append(time.process_time() - cpu)
        if not quiet:
            print(f"  repetition {rep + 1}/{reps}: " + ", ".join(
                f"{n} {s['wall'][-1]:.2f}s ({s['cpu'][-1]:.2f} cpu-s)" for n, s in seconds.items()),
                file=sys.stderr, flush=True)
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _status_mib(field: str) -> float:
    """A memory line of /proc/self/status (Linux), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset this process's high-water mark to its current RSS (Linux's clear_refs, value 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_report(run, device: str) -> dict:
    """Run `run()` once and report memory: the process's peak resident set (VmHWM, which unlike
    getrusage's ru_maxrss is not inherited from the parent process), and how far the resident
    set rose above what the process held before the run (imports, model and data loaded)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    load_peak, before = _status_mib("VmHWM"), _status_mib("VmRSS")
    reset = reset_peak_rss()
    run()
    run_peak = _status_mib("VmHWM")
    report = {"rss_before_mib": round(before, 1), "peak_rss_mib": round(max(load_peak, run_peak), 1),
              "peak_rise_mib": round(run_peak - before, 1) if reset else None}
    if torch.device(device).type == "cuda":
        report["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return report


def probe_in_subprocess(script: Path, args: list[str]) -> dict:
    """Run `script --memory-probe ...` in a fresh interpreter; it prints one JSON line last."""
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(x):
        if isinstance(x, float):
            return "n/a" if math.isnan(x) else f"{x:.2f}" if abs(x) < 10 else f"{x:.0f}"
        return str(x)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict:
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import sentence_transformers
        import transformers
        info["sentence_transformers"] = sentence_transformers.__version__
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def report(args, result: dict, print_tables) -> dict:
    """The run's machine and arguments, then `result`; printed as tables, and to --json."""
    result = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, **result}
    print_tables(result, args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result
