"""How well embedding similarity ranks sentence pairs like humans do.

`EmbeddingSimilarityEvaluator` embeds both sides of each pair, scores the pairs by cosine
similarity (and, for comparison, negative Euclidean and Manhattan distance and dot product), and
reports Pearson and Spearman correlation with the gold scores. Spearman of the cosine is the
figure the SBERT paper reports for STS (section 4). Read next: data.py, where the pairs come from.
"""

import csv
import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

from minisbert.data import InputExample

logger = logging.getLogger(__name__)

SIMILARITIES = ("cosine", "euclidean", "manhattan", "dot")


def pair_similarities(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Row-wise similarities of a, b (N, D) -> {name: (N,)}; distances are negated so that for
    every entry larger means more similar, which is what a rank correlation with gold needs."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    dot = np.sum(a * b, axis=1)
    return {
        "cosine": dot / norms,
        "euclidean": -np.linalg.norm(a - b, axis=1),
        "manhattan": -np.sum(np.abs(a - b), axis=1),
        "dot": dot,
    }


def _correlation(fn, predicted: np.ndarray, gold: np.ndarray, what: str) -> float:
    """fn(predicted, gold).statistic, or NaN with a warning where it is undefined."""
    if len(gold) < 2 or np.ptp(predicted) == 0 or np.ptp(gold) == 0:
        # A constant column (e.g. a collapsed model giving every pair the same score) has no
        # correlation; an evaluation during training must report that, not stop the run.
        warnings.warn(f"{what}: constant input or fewer than 2 pairs, correlation is NaN", RuntimeWarning)
        return float("nan")
    return float(fn(predicted, gold).statistic)


def similarity_metrics(a: np.ndarray, b: np.ndarray, gold) -> dict[str, float]:
    """{"pearson_cosine", "spearman_cosine", ..., "spearman_dot"} for embeddings a, b (N, D)."""
    gold = np.asarray(gold, dtype=np.float64)
    metrics = {}
    for name, predicted in pair_similarities(a, b).items():
        metrics[f"pearson_{name}"] = _correlation(pearsonr, predicted, gold, f"pearson_{name}")
        metrics[f"spearman_{name}"] = _correlation(spearmanr, predicted, gold, f"spearman_{name}")
    return metrics


def finite_float(score, i: int) -> float:
    """A gold score as a float; NaN or inf would turn every correlation into NaN."""
    try:
        value = float(score)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"gold score {i} is {score!r}; scores must be finite numbers")
    return value


class EmbeddingSimilarityEvaluator:
    """Correlation between embedding similarities and gold scores on a fixed list of pairs."""

    primary_metric = "spearman_cosine"  # what training.fit uses to pick the best model

    def __init__(self, sentences1: list[str], sentences2: list[str], scores: list[float],
                 batch_size: int = 16, name: str = "", show_progress_bar: bool = False):
        if not len(sentences1) == len(sentences2) == len(scores):
            raise ValueError(f"got {len(sentences1)} first sentences, {len(sentences2)} second "
                             f"sentences and {len(scores)} scores; they must be equally many")
        self.sentences1, self.sentences2 = list(sentences1), list(sentences2)
        self.scores = [finite_float(s, i) for i, s in enumerate(scores)]
        self.batch_size, self.name, self.show_progress_bar = batch_size, name, show_progress_bar

    @classmethod
    def from_input_examples(cls, examples: list[InputExample], **kwargs) -> "EmbeddingSimilarityEvaluator":
        """Build from sentence-pair InputExamples (texts[0], texts[1], label)."""
        return cls([e.texts[0] for e in examples], [e.texts[1] for e in examples],
                   [e.label for e in examples], **kwargs)

    @property
    def csv_name(self) -> str:
        return f"similarity_evaluation{'_' + self.name if self.name else ''}_results.csv"

    def embed(self, model) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) embeddings of both sides; a sentence that occurs several times is encoded once."""
        unique = list(dict.fromkeys(self.sentences1 + self.sentences2))
        vectors = model.encode(unique, batch_size=self.batch_size, convert_to_numpy=True,
                               show_progress_bar=self.show_progress_bar)
        row = {sentence: i for i, sentence in enumerate(unique)}
        vectors = np.asarray(vectors)
        return vectors[[row[s] for s in self.sentences1]], vectors[[row[s] for s in self.sentences2]]

    def __call__(self, model, output_path: str | os.PathLike | None = None,
                 epoch: int = -1, steps: int = -1) -> dict[str, float]:
        """Evaluate `model`; with output_path, append a row (epoch, steps, metrics) to csv_name."""
        metrics = similarity_metrics(*self.embed(model), self.scores)
        logger.info("%s epoch %d steps %d: spearman_cosine %.4f",
                    self.name or "evaluation", epoch, steps, metrics["spearman_cosine"])
        if output_path is not None:
            self._append_csv(Path(output_path), epoch, steps, metrics)
        return metrics

    def _append_csv(self, folder: Path, epoch: int, steps: int, metrics: dict[str, float]):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.csv_name
        is_new = not path.exists()
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if is_new:
                writer.writerow(["epoch", "steps", *metrics])
            writer.writerow([epoch, steps, *metrics.values()])
