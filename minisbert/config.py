"""The encoder's configuration: one typed BertConfig for every family, read from config.json.

BertConfig has Hugging Face's field names (BERT section 3.1's L, H, A are num_hidden_layers,
hidden_size, num_attention_heads). RoBERTa, DistilBERT and MPNet spell some keys their own way
or hard-wire some fields; each family's ConfigFormat says how, so one `from_dict` reads them all
and checks every value, naming the file and key at fault.
Read next: encoder.py, the network this describes.
"""

import json
import numbers
from dataclasses import dataclass, field, fields
from pathlib import Path


def is_int(x) -> bool:
    """An int, Python's or numpy's, and not a bool (True is an int to Python)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


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
    max_position_embeddings: int = 512  # rows of the position table
    type_vocab_size: int = 2  # segment ids (sentence A / B); 0: no such table (DistilBERT, MPNet)
    layer_norm_eps: float = 1e-12  # BERT's LayerNorm epsilon (far smaller than torch's default)
    pad_token_id: int = 0  # id of the padding token
    model_type: str = "bert"  # which family the checkpoint came from: a key of CONFIG_FORMATS
    # RoBERTa, MPNet (fairseq): real tokens get positions pad_token_id + 1, + 2, ...; padding gets
    # pad_token_id. Their tables have 514 rows for 512 tokens.
    offset_positions: bool = False
    relative_attention_num_buckets: int = 0  # MPNet: rows of the relative position bias; 0: none
    sinusoidal_pos_embds: bool = False  # DistilBERT option: position table starts as sinusoids

    # The shape-defining keys: a config.json without them describes no particular model.
    REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings")

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "BertConfig":
        model_type = d.get("model_type", "bert")
        fmt = config_format(model_type, source)
        missing = [fmt.key(k) for k in cls.REQUIRED if fmt.key(k) not in d]
        if missing:
            raise ValueError(f"{source}: missing required key(s) {', '.join(missing)}")
        if d.get("position_embedding_type", "absolute") != "absolute":  # relative_key(_query)
            raise ValueError(f"{source}: key 'position_embedding_type' "
                             f"{d['position_embedding_type']!r} is not supported ('absolute' is)")
        kwargs = dict(fmt.defaults)
        kwargs.update({f.name: d[fmt.key(f.name)] for f in fields(cls)
                       if fmt.key(f.name) in d and f.name not in fmt.fixed})
        config = cls(**{**kwargs, **fmt.fixed, "model_type": model_type})
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

    def to_hf_dict(self, original: dict | None = None) -> dict:
        """The family's own config.json: `original` (the file we loaded, so keys we do not model
        survive) with every key we model updated, under the family's names."""
        fmt = config_format(self.model_type)
        d = dict(original or {})
        d.update({fmt.key(f.name): getattr(self, f.name) for f in fields(self)
                  if f.name not in fmt.fixed})
        d.setdefault("architectures", [fmt.architecture])
        return d

    @property
    def max_length(self) -> int:
        """The longest input, special tokens included, that the position table covers."""
        offset = self.pad_token_id + 1 if self.offset_positions else 0
        return self.max_position_embeddings - offset

    def validate(self, source: str = "config") -> None:
        key = config_format(self.model_type, source).key
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in (str, bool):
                ok = isinstance(value, f.type)
            elif f.type is int:
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok:
                raise ValueError(f"{source}: key {key(f.name)!r} should be {f.type.__name__}, "
                                 f"got {value!r}")
        for name in self.REQUIRED:  # a size of 0 makes no model (and 0 heads would divide by 0)
            if getattr(self, name) == 0:
                raise ValueError(f"{source}: key {key(name)!r} must be positive, got 0")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{source}: key {key(name)!r} must be a probability in [0, 1], "
                                 f"got {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"{source}: {key('hidden_size')} {self.hidden_size} is not divisible "
                             f"by {key('num_attention_heads')} {self.num_attention_heads}")
        if self.pad_token_id >= self.vocab_size:
            raise ValueError(f"{source}: key {key('pad_token_id')!r} {self.pad_token_id} is not a "
                             f"row of the {self.vocab_size}-row word table")
        if self.hidden_act not in ("gelu", "relu"):
            raise ValueError(f"{source}: {key('hidden_act')} {self.hidden_act!r} is not supported")


@dataclass(frozen=True)
class ConfigFormat:
    """How one family's config.json spells BertConfig, and what its architecture hard-wires."""
    architecture: str  # transformers' class name, written under "architectures" when saving
    renames: dict = field(default_factory=dict)  # config.json key -> our field
    defaults: dict = field(default_factory=dict)  # our field -> transformers' value when absent
    fixed: dict = field(default_factory=dict)  # our field -> value set by the architecture itself

    def key(self, name: str) -> str:
        """The config.json key for our field `name`."""
        return next((k for k, ours in self.renames.items() if ours == name), name)


# What the families without offset positions, relative bias or sinusoids fix those fields to.
_PLAIN = dict(offset_positions=False, relative_attention_num_buckets=0, sinusoidal_pos_embds=False)
CONFIG_FORMATS = {
    "bert": ConfigFormat("BertModel", fixed=_PLAIN),
    "roberta": ConfigFormat("RobertaModel", defaults={"pad_token_id": 1},
                            fixed={**_PLAIN, "offset_positions": True}),
    "distilbert": ConfigFormat(
        "DistilBertModel",
        renames={"dim": "hidden_size", "n_layers": "num_hidden_layers",
                 "n_heads": "num_attention_heads", "hidden_dim": "intermediate_size",
                 "activation": "hidden_act", "dropout": "hidden_dropout_prob",
                 "attention_dropout": "attention_probs_dropout_prob"},
        # no segment embeddings, and its LayerNorms are built with eps 1e-12 whatever the file says
        fixed={"offset_positions": False, "relative_attention_num_buckets": 0,
               "type_vocab_size": 0, "layer_norm_eps": 1e-12}),
    # MPNet's embeddings hard-code padding index 1, whatever pad_token_id says.
    "mpnet": ConfigFormat("MPNetModel", defaults={"relative_attention_num_buckets": 32},
                          fixed={"offset_positions": True, "sinusoidal_pos_embds": False,
                                 "type_vocab_size": 0, "pad_token_id": 1}),
}


def config_format(model_type, source: str = "config") -> ConfigFormat:
    if model_type not in CONFIG_FORMATS:
        raise ValueError(f"{source}: model_type {model_type!r} is not supported (supported: "
                         f"{', '.join(CONFIG_FORMATS)})")
    return CONFIG_FORMATS[model_type]
