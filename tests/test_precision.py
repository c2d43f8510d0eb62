"""Precision: names to dtypes, the AMP recipe, weights cast for inference, and encode's fast paths
checked against the plain fp32 path."""

import logging

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from minisbert import SentenceTransformer, precision, sentence_transformer
from minisbert.precision import WeightCache, mixed_precision, resolve_dtype, weights_as

TEXTS = ["a man is playing guitar", "the dog runs", "big red car", "a woman eats food",
         "the cat is playing piano music", "dog", "the man runs fast . the car is slow ."]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("name, dtype", [(None, torch.float32), ("fp32", torch.float32),
                                         ("bf16", torch.bfloat16), ("fp16", torch.float16),
                                         (torch.bfloat16, torch.bfloat16)])
def test_precision_names_resolve_to_dtypes(name, dtype):
    assert resolve_dtype(name) == dtype


def test_an_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        resolve_dtype("int8")


def test_autocast_runs_matrix_products_in_bf16_and_fp32_untouched():
    a = torch.randn(4, 4)
    with precision.autocast("cpu", "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with precision.autocast("cpu", None):
        assert (a @ a).dtype == torch.float32


def test_training_amp_is_bf16_without_scaler_on_cpu():
    recipe = mixed_precision("cpu")
    assert recipe.dtype == torch.bfloat16 and recipe.scaler is None
    assert mixed_precision("cpu", enabled=False).dtype == torch.float32


def test_training_amp_falls_back_to_fp16_with_a_scaler_without_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "supports_bf16", lambda device: False)
    recipe = mixed_precision("cpu")
    assert recipe.dtype == torch.float16 and isinstance(recipe.scaler, torch.amp.GradScaler)


def test_to_device_on_cpu_keeps_the_values():
    batch = {"input_ids": torch.tensor([[2, 9, 3]]), "attention_mask": torch.ones(1, 3)}
    moved = precision.to_device(batch, "cpu")
    assert all(torch.equal(moved[k], batch[k]) for k in batch)


def test_weights_as_casts_inside_and_restores_the_originals_even_on_error():
    layer = nn.Linear(3, 3)
    original = layer.weight.data_ptr()
    with weights_as(layer, torch.bfloat16):
        assert layer.weight.dtype == torch.bfloat16 and layer.bias.dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float32 and layer.weight.data_ptr() == original
    with pytest.raises(RuntimeError, match="boom"):
        with weights_as(layer, torch.bfloat16):
            raise RuntimeError("boom")
    assert layer.weight.dtype == torch.float32 and layer.weight.data_ptr() == original


def test_weight_cache_casts_once_and_again_after_an_optimizer_step():
    layer = nn.Linear(3, 3)
    cache = WeightCache()
    with weights_as(layer, torch.bfloat16, cache):
        first = layer.weight.data_ptr()
    with weights_as(layer, torch.bfloat16, cache):
        assert layer.weight.data_ptr() == first  # reused, not cast again
    layer(torch.randn(2, 3)).sum().backward()
    torch.optim.SGD(layer.parameters(), lr=1.0).step()
    updated = layer.weight.detach().to(torch.bfloat16)
    with weights_as(layer, torch.bfloat16, cache):
        assert torch.equal(layer.weight.detach(), updated)


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_low_precision_encode_is_close_to_fp32_and_returns_float32(tiny_model, name):
    plain = tiny_model.encode(TEXTS)
    fast = tiny_model.encode(TEXTS, precision=name)
    assert fast.dtype == np.float32
    assert cosines(plain, fast).min() > 0.99


def test_model_precision_is_the_default_and_leaves_the_weights_fp32(tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu", precision="bf16")
    assert model.precision == "bf16"
    low = model.encode(TEXTS)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert np.array_equal(model.encode(TEXTS, precision="bf16"), low)
    model.precision = None
    assert model.precision == "fp32"
    assert not np.array_equal(model.encode(TEXTS), low)


def test_bf16_encode_then_training_still_updates_fp32_weights(tiny_model):
    tiny_model.encode(TEXTS, precision="bf16")
    features = tiny_model.tokenize(TEXTS[:2])
    tiny_model.train()
    tiny_model(**features).sum().backward()
    grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)


def test_encode_logs_the_chosen_precision_once(tiny_model, caplog):
    with caplog.at_level(logging.INFO, logger="minisbert.sentence_transformer"):
        tiny_model.encode(TEXTS, precision="bf16")
        tiny_model.encode(TEXTS, precision="bf16")
    assert [r.getMessage() for r in caplog.records].count("encode runs in bf16 on cpu") == 1


def test_batches_are_sorted_by_token_count_and_padded_to_their_longest(tiny_model):
    batches = list(tiny_model._length_sorted_batches(TEXTS, 3, torch.device("cpu")))
    lengths = [f["attention_mask"].sum(1).tolist() for _, f in batches]
    flat = [n for batch in lengths for n in batch]
    assert flat == sorted(flat, reverse=True)
    assert all(f["input_ids"].shape[1] == max(n) for (_, f), n in zip(batches, lengths))
    assert sorted(torch.cat([i for i, _ in batches]).tolist()) == list(range(len(TEXTS)))


def test_encoding_in_several_tokenizer_chunks_gives_the_same_vectors(tiny_model, monkeypatch):
    whole = tiny_model.encode(TEXTS, batch_size=2)
    monkeypatch.setattr(sentence_transformer, "TOKENIZE_CHUNK", 3)
    chunked = tiny_model.encode(TEXTS, batch_size=2)
    assert np.abs(whole - chunked).max() < 1e-6


@pytest.mark.real
def test_bf16_encode_of_the_real_model_is_close_per_sentence(real_model, reference_json):
    plain = real_model.encode(reference_json["sentences"])
    fast = real_model.encode(reference_json["sentences"], precision="bf16")
    assert cosines(plain, fast).min() > 0.99


@pytest.mark.real
def test_bf16_encode_changes_stsb_test_spearman_by_less_than_0_002(real_model, stsb_dir):
    rows = [line.split("\t") for line in
            (stsb_dir / "sts-test.csv").read_text(encoding="utf-8").splitlines()]
    gold = [float(r[4]) for r in rows]
    spearman = {}
    for name in ("fp32", "bf16"):
        u = real_model.encode([r[5] for r in rows], batch_size=64, precision=name)
        v = real_model.encode([r[6] for r in rows], batch_size=64, precision=name)
        spearman[name] = spearmanr((u * v).sum(1), gold).statistic
    assert abs(spearman["bf16"] - spearman["fp32"]) < 0.002


def test_setting_the_precision_again_drops_a_copy_made_stale_by_an_edit_through_data(tiny_model):
    before = tiny_model.encode(TEXTS, precision="bf16")
    torch.manual_seed(0)
    for p in tiny_model.parameters():
        p.data.add_(torch.randn_like(p))  # an edit through .data does not count as a change
    tiny_model.precision = "fp32"
    assert not np.allclose(tiny_model.encode(TEXTS, precision="bf16"), before)
