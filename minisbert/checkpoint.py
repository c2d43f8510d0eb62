"""The Hugging Face name table: their parameter names onto ours, and a module filled from them.

Hugging Face BERT calls a parameter `encoder.layer.3.attention.self.query.weight`; we call it
`layers.3.attn.query.weight`. One table per model family (BERT and RoBERTa share one; DistilBERT
and MPNet have their own) renames every key, and `load_into` copies the renamed weights into a
module, checking that every parameter is filled once with the right shape. weights.py reads the
files; read encoder.py next to see the module these names belong to.
"""

import re
from dataclasses import dataclass

import torch

from .weights import CheckpointError


# --- Hugging Face names <-> ours ---------------------------------------------------------------

# (Hugging Face module, our module); "{i}" is the layer index. The final ".weight" / ".bias" of
# a parameter name is carried over unchanged, so each row covers both.
BERT_TABLE = [
    ("embeddings.word_embeddings", "embeddings.word"),
    ("embeddings.position_embeddings", "embeddings.position"),
    ("embeddings.token_type_embeddings", "embeddings.token_type"),
    ("embeddings.LayerNorm", "embeddings.norm"),
    ("encoder.layer.{i}.attention.self.query", "layers.{i}.attn.query"),
    ("encoder.layer.{i}.attention.self.key", "layers.{i}.attn.key"),
    ("encoder.layer.{i}.attention.self.value", "layers.{i}.attn.value"),
    ("encoder.layer.{i}.attention.output.dense", "layers.{i}.attn.out"),
    ("encoder.layer.{i}.attention.output.LayerNorm", "layers.{i}.attn_norm"),
    ("encoder.layer.{i}.intermediate.dense", "layers.{i}.ffn.up"),
    ("encoder.layer.{i}.output.dense", "layers.{i}.ffn.down"),
    ("encoder.layer.{i}.output.LayerNorm", "layers.{i}.ffn_norm"),
    ("pooler.dense", "pooler"),
]


# DistilBERT: the same layer under other names, and no token types or pooler.
DISTILBERT_TABLE = [
    ("embeddings.word_embeddings", "embeddings.word"),
    ("embeddings.position_embeddings", "embeddings.position"),
    ("embeddings.LayerNorm", "embeddings.norm"),
    ("transformer.layer.{i}.attention.q_lin", "layers.{i}.attn.query"),
    ("transformer.layer.{i}.attention.k_lin", "layers.{i}.attn.key"),
    ("transformer.layer.{i}.attention.v_lin", "layers.{i}.attn.value"),
    ("transformer.layer.{i}.attention.out_lin", "layers.{i}.attn.out"),
    ("transformer.layer.{i}.sa_layer_norm", "layers.{i}.attn_norm"),
    ("transformer.layer.{i}.ffn.lin1", "layers.{i}.ffn.up"),
    ("transformer.layer.{i}.ffn.lin2", "layers.{i}.ffn.down"),
    ("transformer.layer.{i}.output_layer_norm", "layers.{i}.ffn_norm"),
]

# MPNet: no token types, q/k/v/o projections, and the relative position bias all layers share.
MPNET_TABLE = [
    ("embeddings.word_embeddings", "embeddings.word"),
    ("embeddings.position_embeddings", "embeddings.position"),
    ("embeddings.LayerNorm", "embeddings.norm"),
    ("encoder.layer.{i}.attention.attn.q", "layers.{i}.attn.query"),
    ("encoder.layer.{i}.attention.attn.k", "layers.{i}.attn.key"),
    ("encoder.layer.{i}.attention.attn.v", "layers.{i}.attn.value"),
    ("encoder.layer.{i}.attention.attn.o", "layers.{i}.attn.out"),
    ("encoder.layer.{i}.attention.LayerNorm", "layers.{i}.attn_norm"),
    ("encoder.layer.{i}.intermediate.dense", "layers.{i}.ffn.up"),
    ("encoder.layer.{i}.output.dense", "layers.{i}.ffn.down"),
    ("encoder.layer.{i}.output.LayerNorm", "layers.{i}.ffn_norm"),
    ("encoder.relative_attention_bias", "relative_bias"),
    ("pooler.dense", "pooler"),
]


@dataclass(frozen=True)
class Family:
    """How one model family names its weights in Hugging Face checkpoints."""
    table: list[tuple[str, str]]  # (hf module pattern, our module pattern)
    prefixes: tuple[str, ...]     # stripped from hf keys when present (`bert.` in BertForX files)
    ignored: tuple[str, ...]      # hf keys starting with one of these (after stripping) are dropped


# The keys of config.json's model_type. Ignored: buffers we rebuild (position_ids 0..P-1, RoBERTa's
# all-zero token_type_ids) and the pretraining heads (cls., lm_head., DistilBERT's vocab_*).
FAMILIES = {
    "bert": Family(BERT_TABLE, prefixes=("bert.",), ignored=("embeddings.position_ids", "cls.")),
    "roberta": Family(BERT_TABLE, prefixes=("roberta.",),
                      ignored=("embeddings.position_ids", "embeddings.token_type_ids", "lm_head.")),
    "distilbert": Family(DISTILBERT_TABLE, prefixes=("distilbert.",),
                         ignored=("embeddings.position_ids", "vocab_transform.",
                                  "vocab_layer_norm.", "vocab_projector.")),
    "mpnet": Family(MPNET_TABLE, prefixes=("mpnet.",),
                    ignored=("embeddings.position_ids", "lm_head.")),
}
_LEGACY = {"gamma": "weight", "beta": "bias"}  # LayerNorm names in TF-converted checkpoints


def _family(name: str) -> Family:
    if name not in FAMILIES:
        raise CheckpointError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def _rename(module: str, table, reverse: bool):
    """Map a module path through the table (hf -> ours, or ours -> hf); None when no row fits."""
    for hf, ours in table:
        source, target = (ours, hf) if reverse else (hf, ours)
        pattern = re.escape(source).replace(r"\{i\}", r"(?P<i>\d+)")
        match = re.fullmatch(pattern, module)
        if match:
            return target.format(**{k: int(v) for k, v in match.groupdict().items()})
    return None


def hf_to_ours(state: dict, file="<state>", family: str = "bert") -> dict:
    """Rename a Hugging Face state dict to our names, dropping the keys we deliberately ignore."""
    fam, out = _family(family), {}
    for key, tensor in state.items():
        name = next((key[len(p):] for p in fam.prefixes if key.startswith(p)), key)
        if name.startswith(fam.ignored):
            continue
        module, _, leaf = name.rpartition(".")
        leaf = _LEGACY.get(leaf, leaf)
        ours = _rename(module, fam.table, reverse=False) if leaf in ("weight", "bias") else None
        if ours is None:
            raise CheckpointError(f"{file}: key {key!r} is not in the {family} name table")
        ours = f"{ours}.{leaf}"
        if ours in out:
            raise CheckpointError(f"{file}: key {key!r} gives {ours!r}, which another key gave too")
        out[ours] = tensor
    return out


def ours_to_hf(state: dict, family: str = "bert") -> dict:
    """Rename our state dict to Hugging Face names, without prefix (what we save)."""
    fam, out = _family(family), {}
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        hf = _rename(module, fam.table, reverse=True)
        if hf is None:
            raise CheckpointError(f"key {key!r} has no Hugging Face name in the {family} table")
        out[f"{hf}.{leaf}"] = tensor
    return out


# --- Filling a module --------------------------------------------------------------------------

def _listed(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")


def load_into(module: torch.nn.Module, state: dict, file="<state>",
              optional: tuple[str, ...] = ("pooler.",)) -> set[str]:
    """Copy our-named `state` into every parameter and buffer of `module`, checking everything.

    Keys under an `optional` prefix may all be absent (a checkpoint without pooler): those module
    entries keep their current values and their names are returned. If any key of that group is
    present, the whole group is required. Nothing is copied unless every check passes, so a failed
    load leaves the module as it was. Values are cast to the module's dtype (fp16 file -> fp32).
    """
    targets = module.state_dict(keep_vars=True)
    unexpected = state.keys() - targets.keys()
    absent = tuple(p for p in optional if not any(k.startswith(p) for k in state))
    skipped = {k for k in targets if k.startswith(absent)}
    missing = targets.keys() - state.keys() - skipped
    if missing:
        raise CheckpointError(f"{file}: missing {len(missing)} key(s): {_listed(missing)}")
    if unexpected:
        raise CheckpointError(f"{file}: {len(unexpected)} unexpected key(s): "
                              f"{_listed(unexpected)}")
    for key in targets.keys() - skipped:
        source, target = state[key], targets[key]
        if source.shape != target.shape:
            raise CheckpointError(f"{file}: key {key!r} has shape {tuple(source.shape)} in the "
                                  f"file but {tuple(target.shape)} in the model")
        if source.is_floating_point() != target.is_floating_point():
            raise CheckpointError(f"{file}: key {key!r} is {source.dtype} in the file but "
                                  f"{target.dtype} in the model")
    with torch.no_grad():
        for key in targets.keys() - skipped:
            targets[key].copy_(state[key])  # copy_ casts dtype and moves across devices
    return skipped
