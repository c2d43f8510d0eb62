"""Stand-ins for SentenceTransformer in the data, loss, evaluation and training tests.

They implement only the contract those modules rely on (tokenize, forward(**features), encode,
save, device, fit), so the tests pin training logic independently of the real encoder.
"""

import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from minisbert import training


class FakeSentenceTransformer(nn.Module):
    """Bag of hashed words: embedding -> LayerNorm -> mean over real tokens -> Linear."""

    def __init__(self, vocab_size: int = 64, dim: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, dim)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        self.saved = []  # the paths passed to save(), in order

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def tokenize(self, texts: list[str]) -> dict:
        # crc32, not hash(): Python salts str hashes per process.
        ids = [[1 + zlib.crc32(w.encode()) % (self.vocab_size - 1) for w in t.lower().split()] for t in texts]
        T = max(1, max(len(row) for row in ids))
        input_ids = torch.zeros(len(texts), T, dtype=torch.long)  # 0 = padding
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}

    def forward(self, input_ids, attention_mask):
        h = self.norm(self.embed(input_ids))  # (B, T, C)
        mask = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        return self.proj((h * mask).sum(1) / mask.sum(1).clamp(min=1))  # (B, C)

    @torch.no_grad()
    def encode(self, sentences, batch_size=32, show_progress_bar=False, convert_to_numpy=True):
        was_training = self.training
        self.eval()
        chunks = [self(**self.tokenize(sentences[i:i + batch_size])) for i in range(0, len(sentences), batch_size)]
        self.train(was_training)
        return torch.cat(chunks).float().numpy()

    def save(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), Path(path) / "fake_model.pt")
        self.saved.append(Path(path))

    def fit(self, *args, **kwargs):
        return training.fit(self, *args, **kwargs)


class FixedEncoder:
    """encode() returns given vectors per sentence; records every list it was asked to encode."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors
        self.calls = []

    def encode(self, sentences, batch_size=32, show_progress_bar=False, convert_to_numpy=True):
        self.calls.append(list(sentences))
        return np.array([self.vectors[s] for s in sentences], dtype=np.float32)


class ScriptedEvaluator:
    """An evaluator whose primary score at each call is the next of `scores`."""

    primary_metric = "spearman_cosine"

    def __init__(self, scores):
        self.scores = iter(scores)

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        return {"spearman_cosine": next(self.scores)}
