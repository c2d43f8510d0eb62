#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, a CUDA build of torch and (optionally)
# sentence-transformers, run the test suite (tests/test_cuda.py: CPU-vs-CUDA parity in fp32, bf16
# and fp16, AMP training), both benchmarks on CUDA and a short AMP training run. Needs nothing from
# ../shared: a random-weight model of all-MiniLM-L6-v2's shape and synthetic sentences stand in.
# Each step has a time limit; the whole check stays under 8 minutes. Logs and JSON results go to
# $OUT (default ./gpu_check_out); the exit status is 1 if any step failed.
#
#   bash benchmarks/gpu_check.sh     # PYTHON=/path/to/python picks the interpreter;
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_check.sh   rehearses the plumbing on a CPU-only machine
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:+--quick}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset CI  # no ../shared here: the tests that need the real model skip instead of failing
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
failed=()

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "   exit $rc after $((SECONDS - start))s"
  tail -n 25 "$OUT/$name.log" | sed 's/^/   /'
  [ "$rc" -eq 0 ] || failed+=("$name")
}

step environment 30 bash -c "nvidia-smi; $PY -c '
import torch
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available())
print(torch.cuda.get_device_name(), \"bf16:\", torch.cuda.is_bf16_supported(including_emulation=False))
try:
    import sentence_transformers, transformers
    print(\"sentence-transformers\", sentence_transformers.__version__, \"transformers\", transformers.__version__)
except ImportError:
    print(\"sentence-transformers not installed: minisbert only\")
'"

step random_model 60 "$PY" benchmarks/make_random_model.py "$WORK/minilm-random"
MODEL="$WORK/minilm-random"
PRECISIONS=$("$PY" -c "from minisbert.precision import supports_bf16
print('fp32,bf16' + (',fp16' if '$DEVICE' == 'cuda' else '') if supports_bf16('$DEVICE') else 'fp32,fp16')")

step tests_cuda 90 "$PY" -m pytest tests/test_cuda.py -v -rs
step tests_all 120 "$PY" -m pytest tests -q

step bench_encode 120 "$PY" benchmarks/bench_encode.py --device "$DEVICE" --model "$MODEL" \
  --stsb "$WORK/no-stsb" --precisions "$PRECISIONS" --scaling-precisions "$PRECISIONS" \
  --reps 5 $QUICK --json "$OUT/bench_encode.json"

step bench_train 120 "$PY" benchmarks/bench_train.py --device "$DEVICE" --model "$MODEL" \
  --stsb "$WORK/no-stsb" --steps 50 --reps 3 $QUICK --json "$OUT/bench_train.json"

# A short AMP run on a synthetic task: a sentence and a shuffle of its words are similar (0.9), two
# unrelated sentences are not (0.1). The loss must stay finite and fall; held-out Spearman is shown.
step amp_training 60 "$PY" - "$MODEL" "$DEVICE" $QUICK <<'EOF'
import random, sys
import numpy as np
from scipy.stats import spearmanr
from torch.utils.data import DataLoader
from minisbert import InputExample, SentenceTransformer, SentencesDataset, losses
from minisbert.precision import supports_bf16
sys.path.insert(0, "benchmarks")
import common

model, device = SentenceTransformer(sys.argv[1], device=sys.argv[2]), sys.argv[2]
words = [w for w in open(f"{sys.argv[1]}/vocab.txt").read().split() if w.isalpha()][:2000]
rng = random.Random(0)

def pair(i):
    a = common.synthetic_sentences(words, 1, seed=i)[0]
    if i % 2:
        shuffled = a.split()
        rng.shuffle(shuffled)
        return InputExample(texts=[a, " ".join(shuffled)], label=0.9)
    return InputExample(texts=[a, common.synthetic_sentences(words, 1, seed=10**6 + i)[0]], label=0.1)

n_train = 320 if "--quick" in sys.argv else 3200  # 20 or 200 steps
train, held_out = [pair(i) for i in range(n_train)], [pair(i) for i in range(10**5, 10**5 + 400)]
precision = "bf16" if supports_bf16(device) else "fp16"

def spearman():
    u = model.encode([e.texts[0] for e in held_out], precision=precision)
    v = model.encode([e.texts[1] for e in held_out], precision=precision)
    return spearmanr((u * v).sum(1), [e.label for e in held_out]).statistic

before = spearman()
loader = DataLoader(SentencesDataset(train), batch_size=16, shuffle=True)
rows = model.fit([(loader, losses.CosineSimilarityLoss(model))], epochs=1, warmup_steps=20,
                 use_amp=True, evaluation_steps=n_train // 16 // 4, show_progress_bar=False)
after = spearman()
print("mean loss of each quarter of the run:", [round(r["loss"], 4) for r in rows])
print(f"held-out Spearman ({precision} encode) before {before:.4f}, after {after:.4f}")
assert all(np.isfinite(r["loss"]) for r in rows) and rows[-1]["loss"] < rows[0]["loss"]
EOF

echo
if [ ${#failed[@]} -eq 0 ]; then
  echo "gpu_check: all steps passed; results in $OUT" | tee "$OUT/summary.txt"
else
  echo "gpu_check: FAILED steps: ${failed[*]}; logs in $OUT" | tee "$OUT/summary.txt"
  exit 1
fi
