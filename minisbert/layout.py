"""The sentence-transformers folder layout: modules.json and one sub-folder per module.

A saved model is a folder whose modules.json lists its modules in order, each with the class name
and the sub-folder of its files ("" for the transformer at the top, "1_Pooling", "2_Normalize").
This file reads that list back into modules, checks the order SBERT needs (transformer, pooling,
then Normalize), and moves a freshly written folder into place without losing a saved model.
Read sentence_transformer.py for the model these modules make up.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch.nn as nn

from .models import Normalize, Pooling, Transformer, read_json

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
        if "path" not in entry:
            raise ValueError(f"{file}: module {entry.get('idx', 0)} has no 'path' (the folder of "
                             f"its files, \"\" for the model folder itself)")
        path = inside(folder, entry["path"], file)
        if kind == "Transformer":
            modules.append(load_transformer(path))
        else:
            modules.append(MODULE_TYPES[kind].load(path))
        if kind == "Pooling" and modules and isinstance(modules[0], Transformer):
            width = modules[0].get_word_embedding_dimension()
            if modules[-1].word_embedding_dimension != width:
                raise ValueError(f"{path / 'config.json'}: word_embedding_dimension "
                                 f"{modules[-1].word_embedding_dimension} is not the "
                                 f"transformer's hidden size {width}")
    try:
        check_layout(modules)
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None
    return modules


def check_layout(modules) -> None:
    """A Transformer, then a Pooling as wide as its vectors, then only Normalize modules."""
    modules = list(modules or [])
    if len(modules) < 2 or not isinstance(modules[0], Transformer) or \
            not isinstance(modules[1], Pooling) or \
            not all(isinstance(m, Normalize) for m in modules[2:]):
        raise ValueError(f"a SentenceTransformer is a Transformer, then a Pooling, then optional "
                         f"Normalize modules; got {[type(m).__name__ for m in modules]}")
    width, pooled = modules[0].get_word_embedding_dimension(), modules[1].word_embedding_dimension
    if width != pooled:
        raise ValueError(f"pooling is {pooled} wide but the transformer's vectors are {width}")


def load_transformer(path: Path) -> Transformer:
    """The Transformer in `path`, with the options of its sentence_bert_config.json."""
    sbert = path / "sentence_bert_config.json"
    options = read_json(sbert) if sbert.is_file() else {}
    n, lower = options.get("max_seq_length"), options.get("do_lower_case", False)
    if not (n is None or type(n) is int) or not isinstance(lower, bool):
        raise ValueError(f"{sbert}: max_seq_length must be an int or null and do_lower_case a "
                         f"bool, got {n!r} and {lower!r}")
    transformer = Transformer(path, do_lower_case=lower)
    if n is not None:
        try:
            transformer.max_seq_length = n
        except ValueError as e:
            raise ValueError(f"{sbert}: {e}") from None
    return transformer


def read_json_list(file: Path) -> list[dict]:
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: not a valid JSON file: {e}") from e
    if not isinstance(entries, list) or not entries or not all(
            isinstance(e, dict) and type(e.get("idx", 0)) is int for e in entries):
        raise ValueError(f"{file}: expected a non-empty list of module objects with int idx")
    return sorted(entries, key=lambda e: e.get("idx", 0))


def replace_folder(tmp: Path, path: Path) -> None:
    """Move the freshly written folder `tmp` to `path`. Files of an old `path` that the new save
    does not write (a metrics.csv, say) are kept; the old model files are deleted only once the
    new ones are in place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private; a saved model is an ordinary folder
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a model folder; nothing was saved")
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
