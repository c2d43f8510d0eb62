"""Continue training an existing sentence-transformers model on STSbenchmark.

The model is loaded whole (transformer, pooling, normalize, as its modules.json lists them) and
fine-tuned with CosineSimilarityLoss, as in SBERT's own example (SBERT section 4.2).

    python train_continue.py --model nli-distilroberta-base-v2
    python train_continue.py --model ../shared/models/all-MiniLM-L6-v2 --data ../shared/data/stsbenchmark
    torchrun --nproc_per_node=4 train_continue.py --batch-size 16   # 4 GPUs, effective batch 64
"""

from minisbert import SentenceTransformer, distributed
from minisbert.recipe import parser, seed_everything, train_on_stsb

args = parser(__doc__.splitlines()[0], default_model="nli-distilroberta-base-v2").parse_args()
rank, world_size, device = distributed.setup(args.device)  # under torchrun: one of world_size
seed_everything(args.seed)

model = SentenceTransformer(args.model, device=device)
train_on_stsb(model, args, script="train_continue")
distributed.cleanup()
