"""Weight files and the Hugging Face name table.

Reads and writes the two formats pretrained models ship in: safetensors (a JSON header plus raw
little-endian bytes, parsed here by hand and checked field by field) and PyTorch `.bin` pickles
(loaded with `weights_only=True` only). Then renames Hugging Face BERT parameters (`encoder.layer.3.
attention.self.query.weight`) to ours (`layers.3.attn.query.weight`) through one table per model
family (BERT and RoBERTa share one; DistilBERT and MPNet have their own) and copies them into a
module, checking that every parameter is filled once with the right shape.
Read encoder.py next to see the module these names belong to.
"""

import json
import math
import os
import re
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A weight file that cannot be read, or whose names or shapes do not fit the model."""


# --- safetensors: [8-byte little-endian u64 N][N bytes of JSON header][raw tensor bytes] -------

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_CODES = {dtype: code for code, dtype in DTYPES.items()}
# Real headers are a few hundred bytes per tensor; the cap stops a forged length from making us
# allocate gigabytes before we have seen a single byte of JSON.
MAX_HEADER_BYTES = 100 * 2**20


def _is_count(x) -> bool:
    # bool is an int subclass in Python; a shape of [true] is malformed, not [1].
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _entry_tensor(path, key, entry, data):
    """Check one header entry against the data region and build its tensor."""
    where = f"{path}: tensor {key!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{where}: entry must be an object with dtype, shape, data_offsets")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if code not in DTYPES:
        raise CheckpointError(f"{where}: unknown dtype {code!r} (known: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(map(_is_count, shape)):
        raise CheckpointError(f"{where}: shape must be a list of non-negative ints, got {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise CheckpointError(f"{where}: data_offsets must be [begin, end], got {offsets!r}")
    begin, end = offsets
    if not begin <= end <= len(data):
        raise CheckpointError(f"{where}: data_offsets {offsets} are not a range within the "
                              f"{len(data)}-byte data region (is the file truncated?)")
    dtype = DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise CheckpointError(f"{where}: {end - begin} bytes but {code} {shape} needs {expected}")
    if expected == 0:
        return torch.empty(shape, dtype=dtype)
    # A fresh bytearray per tensor: the tensor owns (and can write to) its memory, is aligned for
    # its dtype, and does not keep the whole file alive. frombuffer reads host byte order, which is
    # little-endian on every platform PyTorch ships for.
    tensor = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype).reshape(shape)
    if dtype == torch.bool and tensor.view(torch.uint8).max() > 1:
        raise CheckpointError(f"{where}: BOOL bytes must be 0 or 1")
    return tensor


def _parse_header(path, raw):
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise CheckpointError(f"{path}: header names tensor {dup!r} twice")
        return dict(pairs)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # deep [[[[..]]]]
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header must be a JSON object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings")
    return header


def read_safetensors(path) -> dict[str, torch.Tensor]:
    """Read a .safetensors file into {name: tensor}; any malformation raises CheckpointError."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise CheckpointError(f"{path}: {size} bytes is too short for a safetensors file")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: header length {n} exceeds the file ({size} bytes) "
                                  f"or the {MAX_HEADER_BYTES}-byte limit")
        header = _parse_header(path, f.read(n))
        data = memoryview(f.read())
    tensors = {key: _entry_tensor(path, key, entry, data) for key, entry in header.items()}
    # The spec asks for the tensors to tile the data region exactly: no overlap, no gap, no tail.
    cursor = 0
    for key in sorted(header, key=lambda k: tuple(header[k]["data_offsets"])):
        begin, end = header[key]["data_offsets"]
        if begin != cursor:
            raise CheckpointError(f"{path}: tensor {key!r} starts at byte {begin} but the data "
                                  f"before it ends at byte {cursor} "
                                  f"({'overlap' if begin < cursor else 'gap'})")
        cursor = end
    if cursor != len(data):
        raise CheckpointError(f"{path}: {len(data) - cursor} bytes after the last tensor")
    return tensors


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    # view(uint8) reinterprets any dtype (bf16 included, which numpy lacks) as its raw bytes.
    return tensor.reshape(-1).view(torch.uint8).numpy().tobytes()


def write_safetensors(path, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None):
    """Write {name: tensor} as safetensors, atomically: `path` is either the old or the new file."""
    path = Path(path)
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str)
                                        for k, v in metadata.items()):
        raise CheckpointError(f"{path}: metadata must map strings to strings")
    header, ordered, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = dict(metadata)
    for key in sorted(tensors):
        # Only a tensor's own elements are written, in row-major order, so views and tensors that
        # share storage each get their own copy in the file.
        tensor = tensors[key].detach().cpu().contiguous()
        if key == "__metadata__" or tensor.dtype not in _CODES:
            raise CheckpointError(f"{path}: tensor {key!r} has a reserved name or unsupported "
                                  f"dtype {tensor.dtype}")
        nbytes = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": _CODES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + nbytes]}
        ordered.append(tensor)
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # padding keeps the data region 8-byte aligned
    # The temp file sits in the same folder so os.replace is an atomic rename. open(.., "xb")
    # rather than mkstemp, so the saved file gets the usual umask permissions, not 0600.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    f = open(tmp, "xb")
    try:
        with f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for tensor in ordered:
                f.write(_tensor_bytes(tensor))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- PyTorch .bin files and model folders ------------------------------------------------------

def read_torch_bin(path) -> dict[str, torch.Tensor]:
    """Load a pytorch_model.bin of plain tensors; a pickle that asks for code is refused."""
    path = Path(path)
    try:
        # weights_only=True unpickles tensors and containers only, so a hostile file cannot run
        # code. There is deliberately no fallback to the unrestricted loader.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:  # a missing or unreadable file is not a format problem
        raise
    except Exception as e:  # UnpicklingError, RuntimeError (bad zip), EOFError (truncated), ...
        raise CheckpointError(f"{path}: not loadable with weights_only=True; only plain tensor "
                              f"files are accepted ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: expected a dict of name -> tensor, only plain tensor "
                              "files are accepted")
    return dict(state)


def read_weights(folder) -> tuple[dict[str, torch.Tensor], Path]:
    """Read the weights of a Hugging Face model folder; returns (state, the file it came from)."""
    folder = Path(folder)
    safetensors, torch_bin = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors.is_file():
        return read_safetensors(safetensors), safetensors
    if torch_bin.is_file():
        return read_torch_bin(torch_bin), torch_bin
    raise CheckpointError(f"{folder}: found neither {safetensors.name} nor {torch_bin.name}")


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
