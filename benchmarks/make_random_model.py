"""Write a random-weight model of all-MiniLM-L6-v2's shape, for machines without ../shared.

6 layers, hidden 384, 12 heads, feed-forward 1536, a 30522-entry WordPiece vocabulary of made-up
words, mean pooling and Normalize, saved in the sentence-transformers folder layout (so both
minisbert and sentence-transformers load it). Its speed is the real model's; its outputs mean
nothing. The benchmarks draw synthetic sentences from the vocabulary's words.

  python benchmarks/make_random_model.py OUT_FOLDER
"""

import itertools
import json
import sys
import tempfile
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
import torch

from minisbert import SentenceTransformer
from minisbert.config import BertConfig
from minisbert.encoder import BertModel
from minisbert.models import Normalize, Pooling, Transformer
from minisbert.tokenizer import Tokenizer

MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536, max_position_embeddings=512)


def made_up_words(n: int) -> list[str]:
    """n distinct lowercase words built from consonant-vowel syllables."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words = []
    for k in itertools.count(1):
        for combo in itertools.product(syllables, repeat=k):
            words.append("".join(combo))
            if len(words) == n:
                return words


def write(folder: Path, seed: int = 0) -> Path:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + list(".,!?") + made_up_words(MINILM["vocab_size"] - len(specials) - 4)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
        tokenizer = Tokenizer.from_folder(tmp, max_seq_length=256)
    transformer = Transformer(encoder=BertModel(BertConfig(**MINILM)), tokenizer=tokenizer)
    model = SentenceTransformer(modules=[transformer, Pooling(384, "mean"), Normalize()],
                                device="cpu")
    model.save(folder)
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    print(write(Path(sys.argv[1])))
