"""One process of tests/test_distributed.py's torchrun job: train_scratch.py's steps on the tiny
model, then this rank's final weights to <output>/../rank<r>.pt so the test can compare ranks.

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py --model ... --output ...
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for minisbert
from minisbert import SentenceTransformer, distributed  # noqa: E402
from minisbert.recipe import parser, seed_everything, train_on_stsb  # noqa: E402

torch.set_num_threads(1)  # two processes share the test machine's cores
args = parser("ddp worker", default_model="").parse_args()
rank, world_size, device = distributed.setup(args.device)
seed_everything(args.seed)
model = SentenceTransformer(args.model, device=device)
train_on_stsb(model, args, script="test")
torch.save(model.state_dict(), Path(args.output).parent / f"rank{rank}.pt")
distributed.cleanup()
