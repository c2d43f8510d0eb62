"""Labelled sentence pairs, their batching, and the STS benchmark reader.

An `InputExample` is one pair with a gold similarity; `SentencesDataset` holds them and `collate`
turns a batch into one tokenized feature dict per text column plus a float label tensor: the two
inputs of the siamese network and the target of the regression objective (SBERT section 3),
trained on STSb as in SBERT section 4.2. `read_sts` reads STSb (Cer et al. 2017) in its authors'
layout or in the single gzipped TSV. Read next: losses.py.
"""

import gzip
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from minisbert import hub

SPLITS = ("train", "dev", "test")
# The single-file STSb that sentence-transformers used to publish (see `load_stsb`).
STSB_URL = "https://sbert.net/datasets/stsbenchmark.tsv.gz"
MAX_SCORE = 5.0  # STSb gold scores run from 0 (unrelated) to 5 (equivalent)


@dataclass
class InputExample:
    """One training or evaluation example: `texts` (here a sentence pair) and its `label`.

    The field order (guid, texts, label) is sentence-transformers' positional order.
    """

    guid: str = ""
    texts: list[str] = field(default_factory=list)
    label: float = 0.0

    def __post_init__(self):
        # Catches InputExample(["a", "b"]) and InputExample(["a", "b"], 0.8), which would
        # otherwise put the texts into `guid`.
        if not isinstance(self.guid, str):
            raise TypeError(f"InputExample.guid must be a str, got {self.guid!r}; give the "
                            f"sentences as texts=[...]")
        if not isinstance(self.texts, (list, tuple)) or not all(isinstance(t, str) for t in self.texts):
            raise TypeError(f"InputExample.texts must be a list of strings, got {self.texts!r}")
        self.texts = list(self.texts)


class SentencesDataset(Dataset):
    """A map-style dataset of InputExamples; tokenization happens per batch, in `collate`.

    `model` is accepted for compatibility with sentence-transformers' signature and is not used:
    tokenizing per batch pads each batch only to its own longest sentence.
    """

    def __init__(self, examples: list[InputExample], model=None):
        self.examples = list(examples)
        self.model = model

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> InputExample:
        return self.examples[index]


def collate(batch: list[InputExample], model) -> tuple[list[dict], torch.Tensor]:
    """Batch of examples -> ([features of text 0, features of text 1, ...], labels (B,) float32).

    Each features dict is `model.tokenize(texts)`: {"input_ids": (B, T), "attention_mask": (B, T)}.
    """
    n_texts = len(batch[0].texts)
    if any(len(ex.texts) != n_texts for ex in batch):
        raise ValueError(f"all examples in a batch need the same number of texts ({n_texts})")
    features = [model.tokenize([ex.texts[i] for ex in batch]) for i in range(n_texts)]
    labels = torch.tensor([float(ex.label) for ex in batch], dtype=torch.float32)
    return features, labels


def _lines(path: Path):
    """Yield (line number, fields) of a tab-separated file, plain or gzipped.

    Fields are split on tabs only: STSb sentences contain unbalanced double quotes, and a csv
    reader with quoting would merge or drop rows.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: not valid UTF-8 ({e.reason})") from None
            yield lineno, line.rstrip("\r\n").split("\t")
    if lineno == 0:
        raise ValueError(f"{path}: empty file")


def _example(path: Path, lineno: int, score: str, sentence1: str, sentence2: str) -> InputExample:
    """Validate one row and scale its score from 0-5 to the 0-1 range of cosine targets."""
    try:
        value = float(score)
    except ValueError:
        raise ValueError(f"{path}, line {lineno}: score {score!r} is not a number") from None
    # `not (0 <= value <= 5)` is also true for NaN, which compares false with everything.
    if not (0.0 <= value <= MAX_SCORE) or math.isnan(value):
        raise ValueError(f"{path}, line {lineno}: score {score!r} is outside 0-{MAX_SCORE:g}")
    return InputExample(guid=f"{path.name}:{lineno}", texts=[sentence1, sentence2], label=value / MAX_SCORE)


def _read_original(path: Path) -> list[InputExample]:
    """The authors' sts-*.csv: genre, file, year, id, score, sentence1, sentence2[, sources...]."""
    examples = []
    for lineno, cols in _lines(path):
        if len(cols) < 7:
            raise ValueError(f"{path}, line {lineno}: expected at least 7 tab-separated columns, got {len(cols)}")
        examples.append(_example(path, lineno, cols[4], cols[5], cols[6]))
    return examples


def _read_single_tsv(path: Path, split: str) -> list[InputExample]:
    """One file for all splits, with a header: split genre dataset year sid score sentence1 sentence2."""
    rows = _lines(path)
    _, header = next(rows)
    missing = [name for name in ("split", "score", "sentence1", "sentence2") if name not in header]
    if missing:
        raise ValueError(f"{path}, line 1: header lacks column(s) {missing} (for the authors' "
                         "sts-train.csv, sts-dev.csv and sts-test.csv, give their folder)")
    index = {name: header.index(name) for name in ("split", "score", "sentence1", "sentence2")}
    examples = []
    for lineno, cols in rows:
        if len(cols) < len(header):
            raise ValueError(f"{path}, line {lineno}: expected {len(header)} tab-separated columns, got {len(cols)}")
        if cols[index["split"]] == split:
            examples.append(_example(path, lineno, *(cols[index[k]] for k in ("score", "sentence1", "sentence2"))))
    if not examples:
        raise ValueError(f"{path}: no rows with split {split!r}")
    return examples


def read_sts(path: str | os.PathLike, split: str) -> list[InputExample]:
    """Read one STSb split ("train", "dev" or "test") as InputExamples with labels in [0, 1].

    `path` is either a folder holding the authors' `sts-train.csv`, `sts-dev.csv`, `sts-test.csv`,
    or the single TSV file (usually gzipped) with a header row and a `split` column.
    Malformed rows raise ValueError naming the file and line.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such STSb folder or file (give the folder holding "
                                "sts-train.csv, sts-dev.csv and sts-test.csv, or stsbenchmark.tsv.gz)")
    if path.is_dir():
        return _read_original(path / f"sts-{split}.csv")
    return _read_single_tsv(path, split)


def load_stsb(split: str, source: str | os.PathLike | None = None) -> list[InputExample]:
    """One STSb split from `source` (a folder of sts-*.csv files or the single TSV, see read_sts).

    With no source, the single gzipped TSV is downloaded once into the cache (hub.cached_url)
    from STSB_URL, or from the URL in the environment variable MINISBERT_STSB_URL.
    """
    if source is None:
        try:
            source = hub.cached_url(os.environ.get("MINISBERT_STSB_URL") or STSB_URL)
        except hub.HubError as e:
            raise hub.HubError(f"{e}; or read a local STSb: --data FOLDER in the scripts, "
                               f"load_stsb(split, FOLDER) in Python") from e
    return read_sts(source, split)
