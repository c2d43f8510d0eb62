"""minisbert: Sentence-BERT (Reimers & Gurevych, 2019) from scratch in plain PyTorch.

Read the package in the order the data flows: tokenizer.py -> encoder.py -> models.py ->
sentence_transformer.py -> losses.py -> training.py -> evaluation.py.
"""

__version__ = "0.1.0"

from . import evaluation, losses, models  # noqa: E402
from .data import InputExample, SentencesDataset  # noqa: E402
from .sentence_transformer import SentenceTransformer  # noqa: E402

__all__ = ["SentenceTransformer", "InputExample", "SentencesDataset", "losses", "models",
           "evaluation"]
