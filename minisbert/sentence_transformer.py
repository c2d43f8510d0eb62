"""SentenceTransformer: the modules in a row, text in, one vector per sentence out.

SBERT section 3: a sentence goes through BERT, then pooling (then, for some models, Normalize),
giving a fixed-size embedding u; comparing u and v with cosine similarity is the whole trick.
This file implements encode() and save(); layout.py reads the sentence-transformers folder layout
back into modules, and fit() lives in training.py.
Read next: losses.py (how u and v are trained), then training.py.
"""

import contextlib
import copy
import logging
import math
import shutil
import tempfile
import threading
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import __version__
from .config import is_int
from .hub import resolve
from .layout import check_layout, load_modules, replace_folder
from .models import Pooling, Transformer, write_json
from .precision import WeightCache, precision_name, resolve_dtype, to_device, weights_as

log = logging.getLogger(__name__)

# encode() tokenizes this many sentences at a time: enough to sort them into batches of similar
# length, few enough that their padded token ids stay small next to the model.
TOKENIZE_CHUNK = 4096


def checked_sentences(sentences) -> list[str]:
    """encode's input as a list of str: one str, or any iterable of them (list, tuple, array)."""
    if isinstance(sentences, str):
        return [sentences]
    if isinstance(sentences, (bytes, dict)) or not hasattr(sentences, "__iter__"):
        raise TypeError(f"encode: sentences must be a str or a list of str, "
                        f"got {type(sentences).__name__}")
    sentences = list(sentences)
    for i, s in enumerate(sentences):
        if not isinstance(s, str):
            raise TypeError(f"encode: sentence {i} is {type(s).__name__}, not str")
    return sentences


class SentenceTransformer(nn.Sequential):
    """SentenceTransformer("path/or/hub-name") or SentenceTransformer(modules=[Transformer, Pooling, ...]).

    forward(input_ids (B, T), attention_mask (B, T)) -> sentence embeddings (B, dim)."""

    def __init__(self, model_name_or_path=None, modules=None, device=None, precision=None):
        if model_name_or_path is not None:
            folder = resolve(model_name_or_path)
            if (folder / "modules.json").is_file():
                modules = load_modules(folder)
            else:
                transformer = Transformer(folder)
                log.warning("%s has no modules.json: using its transformer with mean pooling", folder)
                modules = [transformer, Pooling(transformer.get_word_embedding_dimension(), "mean")]
        modules = list(modules) if modules is not None else []
        check_layout(modules)
        super().__init__(*modules)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.to(device)
        self.eval()  # as loaded pretrained models are: no dropout until fit() trains
        self.precision = precision
        self._logged = set()  # the (dtype, device) pairs encode has announced
        self._lock = threading.RLock()  # one encode at a time: it swaps weights and modes

    def __getstate__(self):  # a lock cannot be pickled or deep-copied; each copy gets its own
        with self._lock:
            state = super().__getstate__()
        state.pop("_lock", None)
        return state

    def __deepcopy__(self, memo):
        """The whole copy under the lock: never of a running encode's bf16 weights."""
        with self._lock:
            twin = self.__class__.__new__(self.__class__)
            memo[id(self)] = twin
            twin.__setstate__(copy.deepcopy(self.__getstate__(), memo))
            return twin

    def __setstate__(self, state):
        super().__setstate__(state)
        self._lock = threading.RLock()

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

    @property
    def precision(self) -> str:
        """The number format encode() runs in unless told otherwise: "fp32", "bf16" or "fp16".

        The weights stay fp32, so the model still trains. encode() casts a copy of them once and
        keeps it until the weights change (an optimizer step, load_state_dict, .to()); an edit
        through `.data` goes unnoticed, so set `precision` again after one: that drops the copy."""
        return self._precision

    @precision.setter
    def precision(self, value) -> None:
        self._precision = precision_name(value)
        self._weight_cache = WeightCache()  # encode's low-precision copy of the weights

    def encode(self, sentences, batch_size=32, show_progress_bar=None, convert_to_numpy=True,
               convert_to_tensor=False, normalize_embeddings=False, device=None, precision=None):
        """A str gives one vector (dim,); a list gives (N, dim) float32, in the input order.
        `precision` ("fp32", "bf16", "fp16"; None: the model's `precision`) is the number format
        of the forward pass; the embeddings come back as float32 either way. Calls from several
        threads are safe and run one at a time."""
        single = isinstance(sentences, str)
        sentences = checked_sentences(sentences)
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"encode: batch_size={batch_size!r} must be a positive int")
        dtype = resolve_dtype(precision if precision is not None else self.precision)
        if show_progress_bar is None:
            show_progress_bar = len(sentences) > 32 * batch_size
        n_batches = sum(math.ceil(min(TOKENIZE_CHUNK, len(sentences) - start) / batch_size)
                        for start in range(0, len(sentences), TOKENIZE_CHUNK))
        indices, chunks = [], []
        with self.inference():
            if device is not None and torch.device(device) != self.device:
                self.to(device)  # as in sentence-transformers, encode(device=...) moves the model
            device = self.device
            if (dtype, device) not in self._logged:
                self._logged.add((dtype, device))
                log.info("encode runs in %s on %s", precision_name(dtype), device)
            with weights_as(self, dtype, self._weight_cache), torch.inference_mode():
                for index, features in tqdm(self._length_sorted_batches(sentences, batch_size, device),
                                            total=n_batches, desc="Batches",
                                            disable=not show_progress_bar):
                    x = self(**features).float()
                    chunks.append(nn.functional.normalize(x, dim=-1) if normalize_embeddings else x)
                    indices.append(index)
        dim = self.get_sentence_embedding_dimension()
        embeddings = torch.zeros(len(sentences), dim, device=device)
        if chunks:
            embeddings[torch.cat(indices).to(device)] = torch.cat(chunks)
        if single:
            embeddings = embeddings[0]
        if convert_to_tensor:
            return embeddings
        if convert_to_numpy:
            return embeddings.cpu().numpy()
        return embeddings if single else list(embeddings)

    @contextlib.contextmanager
    def inference(self):
        """Hold the model for one inference call: no other thread's encode meanwhile, and eval
        mode (no dropout), with the caller's mode restored afterwards."""
        with self._lock:
            was_training = self.training
            self.eval()
            try:
                yield
            finally:
                self.train(was_training)

    def _length_sorted_batches(self, sentences: list[str], batch_size: int, device):
        """Yield (indices into `sentences`, features on `device`), longest sentences first.

        Each batch pads to its own longest sentence, so batching sentences of similar token length
        wastes the least compute on padding (on STSb test, sorting by token count pads 23% fewer
        tokens than sorting by characters). That needs the token counts before batching, so the
        sentences are tokenized a chunk at a time and each chunk moves to the device in one go."""
        for start in range(0, len(sentences), TOKENIZE_CHUNK):
            features = self.tokenize(sentences[start:start + TOKENIZE_CHUNK])
            lengths = features["attention_mask"].sum(1)  # (n,) real tokens per sentence
            order = torch.argsort(lengths, descending=True, stable=True)
            features = to_device(features, device)
            for b in range(0, len(order), batch_size):
                index = order[b:b + batch_size]
                T = int(lengths[index[0]])  # the batch's longest sentence
                on_device = index.to(device)
                yield start + index, {k: v[on_device, :T] for k, v in features.items()}

    def save(self, path) -> None:
        """Write the sentence-transformers folder layout. The new folder is built beside `path`
        and moved into place only when complete, so a failed save never damages a saved model."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            entries = []
            with self._lock:  # not mid-encode, when the weights may be bf16 copies
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

    save_pretrained = save  # the name Hugging Face libraries use

    def fit(self, *args, **kwargs):
        """Train with sentence-transformers' classic signature; see training.fit."""
        from .training import fit
        return fit(self, *args, **kwargs)

    def explain(self, a: str, b: str):
        """cos(encode(a), encode(b)) split into token-pair contributions; see explain.explain."""
        from .explain import explain
        return explain(self, a, b)
