"""The SBERT modules: Transformer (tokens -> vectors), Pooling (vectors -> one vector), Normalize.

SBERT section 3: "SBERT adds a pooling operation to the output of BERT to derive a fixed sized
sentence embedding"; mean pooling is its default, CLS and max the alternatives it compares.
Every pooling mode ignores padding through the (B, T) attention mask.
Each module saves itself into the sentence-transformers folder layout and loads back from it.
Read next: sentence_transformer.py (chains these modules and encodes text).
"""

import json
import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint, weights
from .config import BertConfig, is_int
from .encoder import BertModel
from .hub import resolve
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)


def mean_pooling(h, mask):
    """h: (B, T, C), mask: (B, T) 1/0 -> (B, C): the average over real tokens only."""
    m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


def mean_sqrt_len_pooling(h, mask):
    """Sum over real tokens divided by sqrt(count): longer sentences get larger vectors."""
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1e-9).sqrt()


def max_pooling(h, mask):
    """Per-dimension max over real tokens; padding is -inf so it can never win."""
    pad = ~mask.bool().unsqueeze(-1)  # (B, T, 1)
    out = h.masked_fill(pad, float("-inf")).max(dim=1).values
    return out.masked_fill(pad.all(dim=1), 0.0)  # a row without real tokens: zeros, as in mean


def cls_pooling(h, mask):
    """The vector of the first token, [CLS]."""
    return h[:, 0]


POOLING_FUNCTIONS = {"mean": mean_pooling, "max": max_pooling, "cls": cls_pooling,
                     "mean_sqrt_len_tokens": mean_sqrt_len_pooling}
# The flags of sentence-transformers' 1_Pooling/config.json, by our mode name.
POOLING_FLAGS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens",
                 "max": "pooling_mode_max_tokens",
                 "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens"}
UNSUPPORTED_FLAGS = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


def read_json(path: Path) -> dict:
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read JSON: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def write_json(path: Path, d: dict) -> None:
    Path(path).write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")


class Transformer(nn.Module):
    """Tokenizer + encoder. forward(input_ids, attention_mask) -> token embeddings (B, T, C).

    Load from a Hugging Face folder of any family in checkpoint.FAMILIES (config.json's
    model_type decides): Transformer("path/to/bert"), or build from parts:
    Transformer(encoder=BertModel(config), tokenizer=tok)."""

    def __init__(self, model_name_or_path=None, max_seq_length=None, do_lower_case=False, *,
                 encoder: BertModel | None = None, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.hf_config = {}  # the original config.json, so keys we do not model survive a save
        if model_name_or_path is not None:
            folder = resolve(model_name_or_path)
            self.hf_config = read_json(folder / "config.json")
            config = BertConfig.from_dict(self.hf_config, str(folder / "config.json"))
            encoder = BertModel(config)
            state, file = weights.read_weights(folder)
            state = checkpoint.hf_to_ours(state, file, family=config.model_type)
            checkpoint.load_into(encoder, state, file)
            if max_seq_length is None:
                max_seq_length = default_max_seq_length(folder, config.max_length)
            check_max_seq_length(max_seq_length, config)
            tokenizer = Tokenizer.from_folder(folder, int(max_seq_length), config.model_type)
        if encoder is None or tokenizer is None:
            raise TypeError("Transformer needs model_name_or_path, or both encoder= and tokenizer=")
        self.encoder, self.tokenizer = encoder, tokenizer
        self.do_lower_case = do_lower_case
        self.max_seq_length = tokenizer.max_seq_length if max_seq_length is None else max_seq_length

    @property
    def max_seq_length(self) -> int:
        return self.tokenizer.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, n: int) -> None:
        check_max_seq_length(n, self.encoder.config)
        self.tokenizer.max_seq_length = int(n)

    def get_word_embedding_dimension(self) -> int:
        return self.encoder.config.hidden_size

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer([t.lower() for t in texts] if self.do_lower_case else texts)

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids, attention_mask)  # (B, T, C)

    def save(self, folder) -> None:
        """config.json and model.safetensors in the family's own names, so transformers and
        sentence-transformers load them; then the tokenizer files."""
        folder = Path(folder)
        config = self.encoder.config
        write_json(folder / "config.json", config.to_hf_dict(self.hf_config))
        state = checkpoint.ours_to_hf(self.encoder.state_dict(), family=config.model_type)
        weights.write_safetensors(folder / "model.safetensors", state, {"format": "pt"})
        self.tokenizer.save(folder)
        write_json(folder / "sentence_bert_config.json",
                   {"max_seq_length": self.max_seq_length, "do_lower_case": self.do_lower_case})


def check_max_seq_length(n, config: BertConfig) -> None:
    """[CLS] and [SEP] need two tokens; the position table covers config.max_length."""
    if not is_int(n) or n < 2 or n > config.max_length:
        raise ValueError(f"max_seq_length={n!r} must be an int between 2 and "
                         f"{config.max_length}, the tokens the model's max_position_embeddings "
                         f"({config.max_position_embeddings}) cover")


def default_max_seq_length(folder: Path, limit: int) -> int:
    """The default max_seq_length of a plain Hugging Face folder: the tokenizer's
    model_max_length, capped by what the position table covers (some files say 1e30 for "no
    limit")."""
    tok_config = folder / "tokenizer_config.json"
    n = read_json(tok_config).get("model_max_length", limit) if tok_config.is_file() else limit
    return int(min(n, limit)) if isinstance(n, (int, float)) else limit


class Pooling(nn.Module):
    """forward(token_embeddings (B, T, C), attention_mask (B, T)) -> (B, C)."""

    def __init__(self, word_embedding_dimension: int, pooling_mode: str = "mean"):
        super().__init__()
        if not is_int(word_embedding_dimension) or word_embedding_dimension < 1:
            raise ValueError(f"word_embedding_dimension={word_embedding_dimension!r} must be a "
                             f"positive int: the width of the transformer's token vectors")
        if not isinstance(pooling_mode, str) or pooling_mode not in POOLING_FUNCTIONS:
            raise ValueError(f"pooling_mode={pooling_mode!r}; choose one of "
                             f"{', '.join(POOLING_FUNCTIONS)}")
        self.word_embedding_dimension = int(word_embedding_dimension)
        self.pooling_mode = pooling_mode

    def forward(self, token_embeddings, attention_mask):
        return POOLING_FUNCTIONS[self.pooling_mode](token_embeddings, attention_mask)

    def get_sentence_embedding_dimension(self) -> int:
        return self.word_embedding_dimension

    def save(self, folder) -> None:
        config = {"word_embedding_dimension": self.word_embedding_dimension}
        config.update({flag: mode == self.pooling_mode for mode, flag in POOLING_FLAGS.items()})
        config.update({flag: False for flag in UNSUPPORTED_FLAGS})
        config["include_prompt"] = True
        write_json(Path(folder) / "config.json", config)

    @classmethod
    def load(cls, folder) -> "Pooling":
        path = Path(folder) / "config.json"
        config = read_json(path)
        if "pooling_mode" in config:  # sentence-transformers >= 6: the mode by name
            mode = config["pooling_mode"]
            modes = [mode] if isinstance(mode, str) else mode
            if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
                raise ValueError(f"{path}: pooling_mode must be a mode name or a list of them, "
                                 f"got {mode!r}")
            dim_key = "embedding_dimension"
        else:  # earlier versions: one boolean flag per mode
            for flag in (*POOLING_FLAGS.values(), *UNSUPPORTED_FLAGS):
                if not isinstance(config.get(flag, False), bool):
                    raise ValueError(f"{path}: {flag!r} must be true or false, got "
                                     f"{config[flag]!r}")
            modes = [m for m, flag in POOLING_FLAGS.items() if config.get(flag)]
            modes += [flag for flag in UNSUPPORTED_FLAGS if config.get(flag)]
            dim_key = "word_embedding_dimension"
        if len(modes) != 1 or modes[0] not in POOLING_FUNCTIONS:
            raise ValueError(f"{path}: expected exactly one supported pooling mode "
                             f"({', '.join(POOLING_FUNCTIONS)}), got {modes or 'none'}")
        dim = config.get(dim_key)
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise ValueError(f"{path}: {dim_key} must be a positive int, got {dim!r}")
        return cls(dim, modes[0])


class Normalize(nn.Module):
    """Scale each sentence vector to unit length, so the dot product is the cosine."""

    def forward(self, x):
        return F.normalize(x, p=2, dim=-1)

    def save(self, folder) -> None:
        pass  # no state: sentence-transformers writes an empty folder

    @classmethod
    def load(cls, folder) -> "Normalize":
        return cls()
