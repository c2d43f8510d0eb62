"""The BERT encoder, written out by hand (BERT, Devlin et al. 2019, section 3).

Token ids -> embeddings (word + position + token type) -> N post-LayerNorm transformer layers,
each multi-head self-attention ("Attention is all you need", eq. 1) then a GELU feed-forward.
The output is one contextual vector per token; SBERT pools them into a sentence vector.
Parameter names are our own and short; checkpoint.py maps Hugging Face names onto them.
Read next: models.py (Transformer wraps this with a tokenizer; Pooling turns tokens into one vector).
"""

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class BertConfig:
    vocab_size: int = 30522  # rows of the word-embedding table
    hidden_size: int = 768  # C: width of every token vector
    num_hidden_layers: int = 12  # number of transformer layers
    num_attention_heads: int = 12  # nh: heads per attention layer; hs = C // nh
    intermediate_size: int = 3072  # width of the feed-forward hidden layer
    hidden_act: str = "gelu"  # feed-forward activation; BERT uses the exact (erf) GELU
    hidden_dropout_prob: float = 0.1  # dropout after embeddings and each sublayer
    attention_probs_dropout_prob: float = 0.1  # dropout on the attention weights
    max_position_embeddings: int = 512  # longest sequence the position table covers
    type_vocab_size: int = 2  # segment ids (sentence A / B)
    layer_norm_eps: float = 1e-12  # BERT's LayerNorm epsilon (far smaller than torch's default)
    pad_token_id: int = 0  # id of [PAD]
    model_type: str = "bert"  # which family the checkpoint came from

    # The shape-defining keys: a config.json without them describes no particular model.
    REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings")

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "BertConfig":
        missing = [k for k in cls.REQUIRED if k not in d]
        if missing:
            raise ValueError(f"{source}: missing required key(s) {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        config = cls(**kwargs)
        config.validate(source)
        return config

    @classmethod
    def from_json(cls, path) -> "BertConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read the model config: {e}") from e
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
        return cls.from_dict(d, str(path))

    @classmethod
    def tiny(cls, **overrides) -> "BertConfig":
        """2 layers, hidden 32, 4 heads: the size the unit tests use."""
        base = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=64)
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def validate(self, source: str = "config") -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type is str:
                ok = isinstance(value, str)
            elif f.type is int:
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok:
                raise ValueError(f"{source}: key {f.name!r} should be {f.type.__name__}, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"{source}: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in ("gelu", "relu"):
            raise ValueError(f"{source}: hidden_act {self.hidden_act!r} is not supported")


def reference_attention(q, k, v, mask):
    """softmax(Q K^T / sqrt(hs)) V, spelled out. q, k, v: (B, nh, T, hs); mask: (B, 1, 1, T) bool,
    True where a key is a real token. Padded keys get probability exactly 0."""
    hs = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, T)
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v  # (B, nh, T, hs)


class SelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        C = config.hidden_size
        self.nh = config.num_attention_heads
        self.query, self.key, self.value = nn.Linear(C, C), nn.Linear(C, C), nn.Linear(C, C)
        self.out = nn.Linear(C, C)
        self.dropout = config.attention_probs_dropout_prob

    def forward(self, x, mask):
        B, T, C = x.shape
        nh, hs = self.nh, C // self.nh

        def heads(t):
            return t.view(B, T, nh, hs).transpose(1, 2)  # (B, T, C) -> (B, nh, T, hs)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.out(y)


class FeedForward(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        # BERT's "gelu" is the exact erf form, not the tanh approximation.
        self.act = nn.GELU() if config.hidden_act == "gelu" else nn.ReLU()

    def forward(self, x):
        return self.down(self.act(self.up(x)))


class Layer(nn.Module):
    """One transformer layer, post-LayerNorm as in the original BERT: x = LN(x + sublayer(x))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        C, eps = config.hidden_size, config.layer_norm_eps
        self.attn = SelfAttention(config)
        self.attn_norm = nn.LayerNorm(C, eps=eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(C, eps=eps)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, mask):
        x = self.attn_norm(x + self.drop(self.attn(x, mask)))
        return self.ffn_norm(x + self.drop(self.ffn(x)))


class Embeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        C = config.hidden_size
        self.word = nn.Embedding(config.vocab_size, C, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, C)
        self.token_type = nn.Embedding(config.type_vocab_size, C)
        self.norm = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids=None):
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device)  # (T,), broadcast over the batch
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # one sentence at a time: segment A
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)
        return self.drop(self.norm(x))  # (B, T, C)


class BertModel(nn.Module):
    """input_ids (B, T), attention_mask (B, T) with 1 = real token, 0 = padding -> (B, T, C)."""

    def __init__(self, config: BertConfig, add_pooler: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        # BERT's [CLS] pooler (dense + tanh) is kept so checkpoints round-trip; SBERT does not use it.
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if add_pooler else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        # The one mask for all layers: (B, T) -> (B, 1, 1, T), broadcast over heads and queries.
        mask = attention_mask.bool()[:, None, None, :]
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return x  # (B, T, C)
