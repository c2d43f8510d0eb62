"""Train a sentence embedding model from a pretrained transformer on STSbenchmark.

A pretrained BERT (or another supported family) gets a fresh pooling layer on top, and the pair
is trained as a siamese network with CosineSimilarityLoss (SBERT section 4.2).

    python train_scratch.py --model bert-base-uncased --pooling mean
    python train_scratch.py --model ../shared/models/all-MiniLM-L6-v2 --data ../shared/data/stsbenchmark
"""

from minisbert import SentenceTransformer, models
from minisbert.recipe import parser, seed_everything, train_on_stsb

p = parser(__doc__.splitlines()[0], default_model="bert-base-uncased")
p.add_argument("--pooling", default="mean", choices=sorted(models.POOLING_FUNCTIONS))
p.add_argument("--max-seq-length", type=int, default=None, help="default: the model's limit")
args = p.parse_args()
seed_everything(args.seed)

# A transformer that maps tokens to vectors, then pooling that maps them to one vector.
transformer = models.Transformer(args.model, max_seq_length=args.max_seq_length)
pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode=args.pooling)
model = SentenceTransformer(modules=[transformer, pooling], device=args.device)
train_on_stsb(model, args, script="train_scratch")
