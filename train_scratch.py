"""Train a sentence embedding model from a pretrained transformer on STSbenchmark.

A pretrained BERT (or another supported family) gets a fresh pooling layer on top, and the pair
is trained as a siamese network with CosineSimilarityLoss (SBERT section 4.2).

    python train_scratch.py --model bert-base-uncased --pooling mean
    python train_scratch.py --model ../shared/models/all-MiniLM-L6-v2 --data ../shared/data/stsbenchmark
    torchrun --nproc_per_node=4 train_scratch.py --batch-size 16   # 4 GPUs, effective batch 64
"""

from minisbert import SentenceTransformer, distributed, models
from minisbert.recipe import at_least, parser, seed_everything, train_on_stsb

p = parser(__doc__.splitlines()[0], default_model="bert-base-uncased")
p.add_argument("--pooling", default="mean", choices=sorted(models.POOLING_FUNCTIONS))
p.add_argument("--max-seq-length", type=at_least(2), default=None, help="None: the model's limit")
args = p.parse_args()
rank, world_size, device = distributed.setup(args.device)  # under torchrun: one of world_size
seed_everything(args.seed)

# A transformer that maps tokens to vectors, then pooling that maps them to one vector.
transformer = models.Transformer(args.model, max_seq_length=args.max_seq_length)
pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode=args.pooling)
model = SentenceTransformer(modules=[transformer, pooling], device=device)
train_on_stsb(model, args, script="train_scratch")
distributed.cleanup()
