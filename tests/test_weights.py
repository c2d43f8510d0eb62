"""Tests for weights.py: the safetensors format by hand, safe .bin loading, model folders."""

import json
import os
import struct
import tracemalloc

import numpy as np
import pytest
import torch

from minisbert import weights
from minisbert.weights import (
    CheckpointError, read_safetensors, read_torch_bin, read_weights, write_safetensors,
)


def raw_file(path, header, data=b"", n=None):
    """A safetensors file built by hand: header is a dict (dumped as JSON) or raw bytes."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if n is None else n) + raw + data)
    return path


# --- safetensors format ------------------------------------------------------------------------

def test_safetensors_round_trip_keeps_every_dtype_shape_and_value(tmp_path):
    tensors = {code.lower(): (torch.randn(3, 5) * 50).to(dtype)
               for code, dtype in weights.DTYPES.items()}
    tensors["bool"] = torch.tensor([[True, False, True]])
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 4, dtype=torch.bfloat16)
    write_safetensors(tmp_path / "m.safetensors", tensors, metadata={"format": "pt"})
    back = read_safetensors(tmp_path / "m.safetensors")
    assert back.keys() == tensors.keys()
    for key, tensor in tensors.items():
        assert back[key].dtype == tensor.dtype and back[key].shape == tensor.shape, key
        assert torch.equal(back[key], tensor), key


def test_written_header_follows_the_format(tmp_path):
    tensors = {"b": torch.ones(3, dtype=torch.float16), "a": torch.ones(2, 2), "c": torch.tensor(7)}
    write_safetensors(tmp_path / "m.safetensors", tensors, metadata={"format": "pt"})
    raw = (tmp_path / "m.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    text = raw[8:8 + n].decode()
    assert n % 8 == 0 and text.rstrip(" ").endswith("}")  # JSON, then only space padding
    header = json.loads(text)
    assert header.pop("__metadata__") == {"format": "pt"}
    assert header["a"] == {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    assert header["b"] == {"dtype": "F16", "shape": [3], "data_offsets": [16, 22]}
    assert header["c"] == {"dtype": "I64", "shape": [], "data_offsets": [22, 30]}
    assert len(raw) == 8 + n + 30


def test_written_bytes_match_the_spec_computed_by_hand(tmp_path):
    tensors = {"y": torch.tensor([[1, -2, 3]], dtype=torch.int16), "x": torch.tensor([1.5, -2.0])}
    write_safetensors(tmp_path / "m.safetensors", tensors)
    raw = (tmp_path / "m.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert raw[8 + n:] == struct.pack("<2f", 1.5, -2.0) + struct.pack("<3h", 1, -2, 3)


def test_reads_a_file_built_by_hand_with_struct(tmp_path):
    data = struct.pack("<3d", 0.25, 1e300, -3.0) + np.array([[1, 2], [3, 4]], "<u1").tobytes()
    header = {"__metadata__": {"note": "hand-made"},
              "d": {"dtype": "F64", "shape": [3], "data_offsets": [0, 24]},
              "u": {"dtype": "U8", "shape": [2, 2], "data_offsets": [24, 28]}}
    back = read_safetensors(raw_file(tmp_path / "h.safetensors", header, data))
    assert back["d"].tolist() == [0.25, 1e300, -3.0]
    assert back["u"].tolist() == [[1, 2], [3, 4]] and back["u"].dtype == torch.uint8


def test_read_tensors_own_their_memory_and_are_contiguous(tmp_path):
    write_safetensors(tmp_path / "m.safetensors", {"a": torch.zeros(3), "b": torch.zeros(2, 2)})
    back = read_safetensors(tmp_path / "m.safetensors")
    back["a"] += 1  # writable, and no other tensor sees it
    assert back["b"].sum() == 0
    for t in back.values():
        assert t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()


def test_write_copies_views_and_shared_storage_separately(tmp_path):
    base = torch.arange(12, dtype=torch.float32).view(3, 4)
    tensors = {"t": base.t(), "row": base[1], "base": base}
    write_safetensors(tmp_path / "m.safetensors", tensors)
    back = read_safetensors(tmp_path / "m.safetensors")
    for key, tensor in tensors.items():
        assert torch.equal(back[key], tensor), key
    header_len = struct.unpack("<Q", (tmp_path / "m.safetensors").read_bytes()[:8])[0]
    assert (tmp_path / "m.safetensors").stat().st_size == 8 + header_len + 4 * (12 + 4 + 12)


def test_failed_write_leaves_the_previous_file_and_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"old": torch.ones(2)})
    before = path.read_bytes()
    calls = []

    def fail_on_second_tensor(tensor):
        calls.append(tensor)
        if len(calls) == 2:
            raise OSError("disk full")
        return bytes(tensor.numel() * tensor.element_size())

    monkeypatch.setattr(weights, "_tensor_bytes", fail_on_second_tensor)
    with pytest.raises(OSError, match="disk full"):
        write_safetensors(path, {"a": torch.zeros(4), "b": torch.zeros(4)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_write_rejects_unsupported_dtype_and_non_string_metadata(tmp_path):
    with pytest.raises(CheckpointError, match="'z'"):
        write_safetensors(tmp_path / "m.safetensors", {"z": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(CheckpointError, match="metadata"):
        write_safetensors(tmp_path / "m.safetensors", {}, metadata={"epoch": 3})
    assert os.listdir(tmp_path) == []


# --- corrupt safetensors files -----------------------------------------------------------------

GOOD = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


def entry(**change):
    return {"w": {**GOOD["w"], **change}}


CORRUPT = {  # name: (header, data, forced header length, key the message must name)
    "not_json": (b"{not json", b"", None, None),
    "not_utf8": (b"\xff\xfe", b"", None, None),
    "not_an_object": ([1, 2], b"", None, None),
    "metadata_not_strings": ({"__metadata__": {"a": 1}, **GOOD}, bytes(8), None, None),
    "entry_not_an_object": ({"w": [0, 8]}, bytes(8), None, "w"),
    "missing_field": ({"w": {"dtype": "F32", "shape": [2]}}, bytes(8), None, "w"),
    "shape_ill_typed": (entry(shape="2"), bytes(8), None, "w"),
    "shape_negative": (entry(shape=[-2]), bytes(8), None, "w"),
    "shape_bool": (entry(shape=[True, True]), bytes(8), None, "w"),
    "offsets_ill_typed": (entry(data_offsets=[0]), bytes(8), None, "w"),
    "unknown_dtype": (entry(dtype="Q4"), bytes(8), None, "w"),
    "offsets_out_of_range": (entry(data_offsets=[0, 800]), bytes(8), None, "w"),
    "offsets_reversed": (entry(data_offsets=[8, 0]), bytes(8), None, "w"),
    "byte_count_mismatch": (entry(shape=[3]), bytes(8), None, "w"),
    "overlapping_offsets": ({**GOOD, "v": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
                            bytes(8), None, "v"),
    "gap_between_tensors": ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
                            bytes(8), None, "w"),
    "bytes_after_last_tensor": (GOOD, bytes(12), None, None),
    "truncated_data": (GOOD, bytes(5), None, "w"),
    "bool_not_0_or_1": (entry(dtype="BOOL", shape=[8]), bytes([0, 1, 2, 0, 0, 0, 0, 0]), None, "w"),
    "header_length_past_end": (GOOD, bytes(8), 10_000, None),
    "header_length_2_pow_63": (GOOD, bytes(8), 2**63, None),
    "deeply_nested_header": (b"[" * 100_000 + b"]" * 100_000, b"", None, None),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_safetensors_raise_checkpoint_error_naming_file_and_key(tmp_path, case):
    header, data, n, key = CORRUPT[case]
    path = raw_file(tmp_path / "bad.safetensors", header, data, n)
    with pytest.raises(CheckpointError) as err:
        read_safetensors(path)
    assert "bad.safetensors" in str(err.value)
    if key:
        assert repr(key) in str(err.value)


def test_duplicate_tensor_name_in_header_is_an_error(tmp_path):
    raw = b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "w": {"dtype": "U8", ' \
          b'"shape": [1], "data_offsets": [0, 1]}}'
    with pytest.raises(CheckpointError, match="'w' twice"):
        read_safetensors(raw_file(tmp_path / "dup.safetensors", raw, b"\x00"))


def test_file_shorter_than_the_length_prefix_is_an_error(tmp_path):
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="short.safetensors"):
        read_safetensors(tmp_path / "short.safetensors")


def test_huge_header_length_is_refused_before_allocating(tmp_path):
    path = raw_file(tmp_path / "huge.safetensors", GOOD, bytes(8), n=2**63)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="huge.safetensors"):
            read_safetensors(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_header_longer_than_the_cap_is_refused_even_when_the_file_is_long_enough(
        tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "MAX_HEADER_BYTES", 1000)
    path = raw_file(tmp_path / "long.safetensors", b"{}" + b" " * 1998)
    with pytest.raises(CheckpointError, match="long.safetensors.*limit"):
        read_safetensors(path)


def test_truncated_file_written_by_us_is_an_error(tmp_path):
    path = tmp_path / "cut.safetensors"
    write_safetensors(path, {"a": torch.ones(10), "b": torch.ones(10)})
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CheckpointError, match="'b'.*truncated"):
        read_safetensors(path)


# --- .bin files and folders --------------------------------------------------------------------

class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling this calls open(marker, "w"): code run from a data file
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.ones(2), "x": Evil(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*only plain tensor files"):
        read_weights(tmp_path)
    assert not marker.exists()
    # The payload is live: the unrestricted loader, which we never use, would have run it.
    torch.load(tmp_path / "pytorch_model.bin", weights_only=False)
    assert marker.exists()


def test_bin_that_is_not_a_dict_of_tensors_is_an_error(tmp_path):
    torch.save([torch.ones(2)], tmp_path / "list.bin")
    torch.save({"w": 3}, tmp_path / "int.bin")
    for name in ("list.bin", "int.bin"):
        with pytest.raises(CheckpointError, match=name):
            read_torch_bin(tmp_path / name)


def test_read_weights_prefers_safetensors_over_bin(tmp_path):
    write_safetensors(tmp_path / "model.safetensors", {"w": torch.ones(2)})
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    state, file = read_weights(tmp_path)
    assert file == tmp_path / "model.safetensors" and state["w"].tolist() == [1.0, 1.0]


def test_read_weights_names_folder_and_both_files_when_none_exists(tmp_path):
    with pytest.raises(CheckpointError) as err:
        read_weights(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "model.safetensors" in message
    assert "pytorch_model.bin" in message
