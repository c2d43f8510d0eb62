"""SentenceTransformer: the modules in a row, text in, one vector per sentence out.

SBERT section 3: a sentence goes through BERT, then pooling (then, for some models, Normalize),
giving a fixed-size embedding u; comparing u and v with cosine similarity is the whole trick.
This file loads and saves the sentence-transformers folder layout (modules.json lists the modules
and their sub-folders) and implements encode(); fit() lives in training.py.
Read next: losses.py (how u and v are trained), then training.py.
"""

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import __version__
from .hub import resolve
from .models import Normalize, Pooling, Transformer, read_json, write_json

log = logging.getLogger(__name__)

# modules.json names each class by its import path, and that path has changed between
# sentence-transformers versions; the last dotted part, the class name, has not.
MODULE_TYPES = {"Transformer": Transformer, "Pooling": Pooling, "Normalize": Normalize}


def inside(root: Path, sub: str, file: Path) -> Path:
    """root/sub, refusing paths that leave root (../, absolute paths, links pointing out)."""
    if not isinstance(sub, str) or Path(sub).is_absolute() or \
            not (root / sub).resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{file}: module path {sub!r} leaves the model folder {root}")
    return root / sub


def load_modules(folder: Path) -> list[nn.Module]:
    """Build the modules a sentence-transformers folder lists in modules.json."""
    file = folder / "modules.json"
    entries = read_json_list(file)
    modules = []
    for entry in entries:
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        if kind not in MODULE_TYPES:
            raise ValueError(f"{file}: unknown module type {entry.get('type')!r}; minisbert "
                             f"knows {', '.join(MODULE_TYPES)}")
        path = inside(folder, entry.get("path", ""), file)
        if kind == "Transformer":
            sbert = path / "sentence_bert_config.json"
            options = read_json(sbert) if sbert.is_file() else {}
            modules.append(Transformer(path, max_seq_length=options.get("max_seq_length"),
                                       do_lower_case=options.get("do_lower_case", False)))
        else:
            modules.append(MODULE_TYPES[kind].load(path))
    return modules


def read_json_list(file: Path) -> list[dict]:
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: not a valid JSON file: {e}") from e
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{file}: expected a list of module objects")
    return sorted(entries, key=lambda e: e.get("idx", 0))


def replace_folder(tmp: Path, path: Path) -> None:
    """Move the freshly written folder `tmp` to `path`. Files of an old `path` that the new save
    does not write (a metrics.csv, say) are kept; the old model files are deleted only once the
    new ones are in place."""
    if not path.exists():
        os.replace(tmp, path)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    os.replace(path, backup / path.name)
    for entry in (backup / path.name).iterdir():
        if not (tmp / entry.name).exists():
            os.replace(entry, tmp / entry.name)
    os.replace(tmp, path)
    shutil.rmtree(backup)


class SentenceTransformer(nn.Sequential):
    """SentenceTransformer("path/or/hub-name") or SentenceTransformer(modules=[Transformer, Pooling, ...]).

    forward(input_ids (B, T), attention_mask (B, T)) -> sentence embeddings (B, dim)."""

    def __init__(self, model_name_or_path=None, modules=None, device=None):
        if model_name_or_path is not None:
            folder = resolve(model_name_or_path)
            if (folder / "modules.json").is_file():
                modules = load_modules(folder)
            else:
                transformer = Transformer(folder)
                log.info("%s has no modules.json: using its transformer with mean pooling", folder)
                modules = [transformer, Pooling(transformer.get_word_embedding_dimension(), "mean")]
        if not modules or not isinstance(modules[0], Transformer) or len(modules) < 2 \
                or not isinstance(modules[1], Pooling):
            raise ValueError("a SentenceTransformer is a Transformer, then a Pooling, then optional "
                             "Normalize modules")
        super().__init__(*modules)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def max_seq_length(self) -> int:
        return self[0].max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, n: int) -> None:
        self[0].max_seq_length = n

    def get_sentence_embedding_dimension(self) -> int:
        return self[1].get_sentence_embedding_dimension()

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self[0].tokenize(texts)

    def forward(self, input_ids, attention_mask):
        x = self[1](self[0](input_ids, attention_mask), attention_mask)  # (B, T, C) -> (B, C)
        for module in list(self)[2:]:
            x = module(x)
        return x

    def encode(self, sentences, batch_size=32, show_progress_bar=None, convert_to_numpy=True,
               convert_to_tensor=False, normalize_embeddings=False, device=None):
        """A str gives one vector (dim,); a list gives (N, dim) float32, in the input order."""
        single = isinstance(sentences, str)
        sentences = [sentences] if single else list(sentences)
        for i, s in enumerate(sentences):
            if not isinstance(s, str):
                raise TypeError(f"encode: sentence {i} is {type(s).__name__}, not str")
        device = torch.device(device) if device is not None else self.device
        # Longest first: each batch pads to its own longest sentence, so similar lengths together
        # waste the least compute on padding. `order` puts the results back afterwards.
        order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
        if show_progress_bar is None:
            show_progress_bar = len(sentences) > 32 * batch_size
        was_training = self.training
        self.eval()
        chunks = []
        try:
            with torch.inference_mode():
                for start in tqdm(range(0, len(order), batch_size), desc="Batches",
                                  disable=not show_progress_bar):
                    batch = [sentences[i] for i in order[start:start + batch_size]]
                    features = {k: v.to(device) for k, v in self.tokenize(batch).items()}
                    x = self(**features).float()
                    chunks.append(nn.functional.normalize(x, dim=-1) if normalize_embeddings else x)
        finally:
            self.train(was_training)
        dim = self.get_sentence_embedding_dimension()
        sorted_embeddings = torch.cat(chunks) if chunks else torch.zeros(0, dim, device=device)
        embeddings = torch.empty_like(sorted_embeddings)
        embeddings[torch.tensor(order, dtype=torch.long, device=device)] = sorted_embeddings
        if single:
            embeddings = embeddings[0]
        if convert_to_tensor:
            return embeddings
        return embeddings.cpu().numpy() if convert_to_numpy else list(embeddings)

    def save(self, path) -> None:
        """Write the sentence-transformers folder layout. The new folder is built beside `path`
        and moved into place only when complete, so a failed save never damages a saved model."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            entries = []
            for idx, module in enumerate(self):
                sub = "" if idx == 0 else f"{idx}_{type(module).__name__}"
                (tmp / sub).mkdir(exist_ok=True)
                module.save(tmp / sub)
                entries.append({"idx": idx, "name": str(idx), "path": sub,
                                "type": f"sentence_transformers.models.{type(module).__name__}"})
            write_json(tmp / "modules.json", entries)
            write_json(tmp / "config_sentence_transformers.json",
                       {"__version__": {"minisbert": __version__, "pytorch": torch.__version__},
                        "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})
            replace_folder(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def fit(self, *args, **kwargs):
        """Train with sentence-transformers' classic signature; see training.fit."""
        from .training import fit
        return fit(self, *args, **kwargs)
