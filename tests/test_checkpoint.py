"""Tests for checkpoint.py: the Hugging Face name table and filling a module from it."""

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from minisbert.checkpoint import hf_to_ours, load_into, ours_to_hf
from minisbert.weights import CheckpointError, read_weights, write_safetensors


V, P, C, I, L = 100, 16, 32, 64, 2  # vocab, positions, hidden, intermediate, layers


class TinyBert(nn.Module):
    """Stand-in whose state_dict has exactly the encoder's names from the team contract."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embeddings = nn.ModuleDict(dict(word=nn.Embedding(V, C), position=nn.Embedding(P, C),
                                             token_type=nn.Embedding(2, C), norm=nn.LayerNorm(C)))
        self.layers = nn.ModuleList(nn.ModuleDict(dict(
            attn=nn.ModuleDict({n: nn.Linear(C, C) for n in ("query", "key", "value", "out")}),
            attn_norm=nn.LayerNorm(C),
            ffn=nn.ModuleDict(dict(up=nn.Linear(C, I), down=nn.Linear(I, C))),
            ffn_norm=nn.LayerNorm(C),
        )) for _ in range(L))
        self.pooler = nn.Linear(C, C)
        for p in self.parameters():  # LayerNorm starts at 1/0; random values make mix-ups visible
            nn.init.normal_(p)


# Written out by hand from Hugging Face's BertModel, independently of the table under test.
HF_LAYER = [f"attention.self.{n}" for n in ("query", "key", "value")] + [
    "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
    "output.dense", "output.LayerNorm"]
HF_NAMES = sorted(
    [f"embeddings.{n}.weight" for n in ("word_embeddings", "position_embeddings",
                                        "token_type_embeddings", "LayerNorm")]
    + ["embeddings.LayerNorm.bias", "pooler.dense.weight", "pooler.dense.bias"]
    + [f"encoder.layer.{i}.{m}.{leaf}" for i in range(L) for m in HF_LAYER
       for leaf in ("weight", "bias")])


def hf_state(model):
    return {k: v.detach().clone() for k, v in ours_to_hf(model.state_dict()).items()}


def assert_same_weights(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# --- name table and loading --------------------------------------------------------------------

def test_ours_to_hf_gives_the_hugging_face_bert_names():
    assert sorted(ours_to_hf(TinyBert().state_dict())) == HF_NAMES


def test_hf_to_ours_and_ours_to_hf_are_inverse():
    ours = TinyBert().state_dict()
    assert hf_to_ours(ours_to_hf(ours)) == ours
    hf = ours_to_hf(ours)
    assert ours_to_hf(hf_to_ours(hf)) == hf


def variant(model, tmp_path, name):
    """Save `model` the way one kind of real checkpoint does; return the folder."""
    hf = hf_state(model)
    if "prefix" in name:  # BertForPreTraining and friends nest the encoder under `bert.`
        hf = {f"bert.{k}": v for k, v in hf.items()}
    if "gamma_beta" in name:  # checkpoints converted from the original TensorFlow code
        hf = {k.replace("LayerNorm.weight", "LayerNorm.gamma")
               .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in hf.items()}
    if "extras" in name:  # a buffer and a pretraining head that we ignore
        hf["bert.embeddings.position_ids" if "prefix" in name else "embeddings.position_ids"] = \
            torch.arange(P)[None]
        hf["cls.predictions.bias"] = torch.zeros(V)
        hf["cls.predictions.transform.dense.weight"] = torch.zeros(C, C)
    if name.endswith("bin"):
        torch.save(hf, tmp_path / "pytorch_model.bin")
    else:
        write_safetensors(tmp_path / "model.safetensors", hf, metadata={"format": "pt"})
    return tmp_path


@pytest.mark.parametrize("name", ["plain", "prefix", "gamma_beta", "extras", "extras_prefix",
                                  "prefix_gamma_beta_extras", "plain_bin", "prefix_bin",
                                  "prefix_gamma_beta_extras_bin"])
def test_checkpoint_name_variants_load_the_same_weights(tmp_path, name):
    source, target = TinyBert(seed=1), TinyBert(seed=2)
    state, file = read_weights(variant(source, tmp_path, name))
    assert load_into(target, hf_to_ours(state, file), file) == set()
    assert_same_weights(source, target)


def test_checkpoint_without_pooler_loads_the_rest_and_reports_the_pooler(tmp_path):
    source, target = TinyBert(seed=1), TinyBert(seed=2)
    pooler_before = target.pooler.weight.detach().clone()
    state = {k: v for k, v in hf_state(source).items() if not k.startswith("pooler.")}
    skipped = load_into(target, hf_to_ours(state))
    assert skipped == {"pooler.weight", "pooler.bias"}
    assert torch.equal(target.pooler.weight, pooler_before)
    assert torch.equal(target.layers[1].ffn.down.weight, source.layers[1].ffn.down.weight)


def test_fp16_and_bf16_checkpoints_load_into_an_fp32_model(tmp_path):
    source = TinyBert(seed=1)
    for dtype in (torch.float16, torch.bfloat16):
        target = TinyBert(seed=2)
        half = {k: v.to(dtype) for k, v in source.state_dict().items()}
        load_into(target, half)
        assert target.embeddings.word.weight.dtype == torch.float32
        assert torch.equal(target.embeddings.word.weight, half["embeddings.word.weight"].float())


def test_missing_key_error_names_key_and_file():
    state = TinyBert().state_dict()
    del state["layers.1.attn.key.bias"]
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*layers\.1\.attn\.key\.bias"):
        load_into(TinyBert(), state, Path("m/model.safetensors"))


def test_half_a_pooler_is_a_missing_key():
    state = TinyBert().state_dict()
    del state["pooler.bias"]
    with pytest.raises(CheckpointError, match="pooler.bias"):
        load_into(TinyBert(), state, "f.bin")


def test_unexpected_key_error_names_key_and_file():
    state = {**TinyBert().state_dict(), "layers.2.attn.key.bias": torch.zeros(C)}
    with pytest.raises(CheckpointError, match=r"f\.bin.*unexpected.*layers\.2\.attn\.key\.bias"):
        load_into(TinyBert(), state, "f.bin")


def test_unknown_hugging_face_key_error_names_key_and_file():
    state = {**hf_state(TinyBert()), "bert.encoder.layer.0.rotary.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"f\.bin.*'bert\.encoder\.layer\.0\.rotary\.weight'"):
        hf_to_ours(state, "f.bin")


def test_same_weight_under_two_names_is_an_error():
    state = hf_state(TinyBert())
    state["bert.pooler.dense.bias"] = state["pooler.dense.bias"]
    with pytest.raises(CheckpointError, match="pooler.bias"):
        hf_to_ours(state, "f.bin")


def test_wrong_shape_error_names_key_both_shapes_and_file_and_changes_nothing():
    target = TinyBert(seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    state = TinyBert(seed=1).state_dict()
    state["layers.0.ffn.up.weight"] = torch.zeros(I + 1, C)
    with pytest.raises(CheckpointError) as err:
        load_into(target, state, "f.safetensors")
    message = str(err.value)
    for part in ("f.safetensors", "layers.0.ffn.up.weight", "(65, 32)", "(64, 32)"):
        assert part in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


@pytest.mark.real
def test_real_checkpoint_maps_onto_our_names():
    folder = os.environ.get("MINISBERT_TEST_MODEL")
    if not folder:
        pytest.skip("MINISBERT_TEST_MODEL is not set")
    state, file = read_weights(folder)
    config = json.loads((Path(folder) / "config.json").read_text())
    ours = hf_to_ours(state, file)
    n, c = config["num_hidden_layers"], config["hidden_size"]
    assert len(ours) == 5 + 16 * n + 2
    assert ours["embeddings.word.weight"].shape == (config["vocab_size"], c)
    assert ours[f"layers.{n - 1}.ffn.up.weight"].shape == (config["intermediate_size"], c)
