"""Weight files: the two formats pretrained models ship in, read and written by hand.

safetensors is a JSON header plus raw little-endian bytes; it is parsed here field by field, and
every malformation is an error that names the file and the tensor. PyTorch `.bin` pickles are loaded
with `weights_only=True` only, so a weight file can never run code. Names inside the files are
Hugging Face's; checkpoint.py, read next, maps them onto ours.
"""

import json
import math
import os
import secrets
import struct
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
