"""Four families, one encoder: BERT, RoBERTa, DistilBERT and MPNet against Hugging Face's own code.

tests/fixtures/<family>/ is a tiny random-weight model saved by transformers' classes, wrapped as
a sentence-transformers folder; its expected.json is what transformers made of a padded batch of
four sentences (made by tests/fixtures/make_fixtures.py, a dev-only tool). Git keeps no weight
file: the weights follow from their names (tests/fixtures/weights.py), and model.safetensors is
written into a temporary copy of each folder. These tests need neither transformers nor the network.
"""

import atexit
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minisbert import SentenceTransformer, checkpoint, weights
from minisbert.config import BertConfig
from minisbert.encoder import (
    BertModel, offset_position_ids, reference_attention, relative_position_bucket,
    sinusoidal_table,
)
from minisbert.models import Transformer
from minisbert.tokenizer import Tokenizer

from conftest import assert_config_error
from fixtures.weights import materialize

FAMILIES = ["bert", "roberta", "distilbert", "mpnet"]
# Complete fixture folders, model.safetensors included, in a temporary folder for this run.
FIXTURES = Path(tempfile.mkdtemp(prefix="minisbert-fixtures-"))
atexit.register(shutil.rmtree, FIXTURES, ignore_errors=True)
for _family in FAMILIES:
    materialize(_family, FIXTURES / _family)
# What each family's folder holds besides tokenizer.json, and the names its config.json uses.
VOCAB_FILES = {"bert": ["vocab.txt"], "roberta": ["vocab.json", "merges.txt"],
               "distilbert": ["vocab.txt"], "mpnet": ["vocab.txt"]}


def expected(family) -> dict:
    return json.loads((FIXTURES / family / "expected.json").read_text())


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def transformer(family):
    return Transformer(FIXTURES / family).eval()


def hidden_states(transformer, sentences):
    with torch.no_grad():
        batch = transformer.tokenize(sentences)
        return transformer(**batch), batch["attention_mask"].bool()


# --- parity with transformers ------------------------------------------------------------------

def test_token_ids_from_tokenizer_json_equal_transformers(transformer, family):
    batch = transformer.tokenize(expected(family)["sentences"])
    assert batch["input_ids"].tolist() == expected(family)["input_ids"]
    assert batch["attention_mask"].tolist() == expected(family)["attention_mask"]


def test_token_ids_from_the_vocabulary_files_equal_transformers(family, tmp_path):
    for f in (FIXTURES / family).iterdir():
        if f.is_file() and f.name != "tokenizer.json":
            shutil.copy(f, tmp_path)
    model_type = json.loads((tmp_path / "config.json").read_text())["model_type"]
    tok = Tokenizer.from_folder(tmp_path, 64, model_type)
    assert tok(expected(family)["sentences"])["input_ids"].tolist() == expected(family)["input_ids"]


def test_last_hidden_state_matches_transformers_on_real_tokens(transformer, family):
    h, real = hidden_states(transformer, expected(family)["sentences"])
    reference = torch.tensor(expected(family)["last_hidden_state"])
    assert h.shape == reference.shape
    torch.testing.assert_close(h[real], reference[real], atol=1e-5, rtol=0)


def test_sentence_embeddings_match_sentence_transformers(family):
    model = SentenceTransformer(str(FIXTURES / family), device="cpu")
    embeddings = model.encode(expected(family)["sentences"])
    np.testing.assert_allclose(embeddings, expected(family)["embeddings"], atol=1e-5, rtol=0)


def test_padding_does_not_change_the_other_sentences(transformer, family):
    sentences = expected(family)["sentences"]
    batch, real = hidden_states(transformer, sentences)
    for i, sentence in enumerate(sentences):
        alone, _ = hidden_states(transformer, [sentence])
        torch.testing.assert_close(batch[i][real[i]], alone[0], atol=1e-6, rtol=1e-5)


# --- saving in the family's own format ---------------------------------------------------------

@pytest.fixture(scope="module")
def saved(family, tmp_path_factory):
    folder = tmp_path_factory.mktemp(family) / "saved"
    SentenceTransformer(str(FIXTURES / family), device="cpu").save(folder)
    return folder


def test_saved_and_reloaded_model_gives_identical_embeddings(family, saved):
    sentences = expected(family)["sentences"]
    before = SentenceTransformer(str(FIXTURES / family), device="cpu").encode(sentences)
    after = SentenceTransformer(str(saved), device="cpu").encode(sentences)
    assert np.array_equal(before, after)


def test_saved_config_json_is_the_original_in_the_family_keys(family, saved):
    original = json.loads((FIXTURES / family / "config.json").read_text())
    assert json.loads((saved / "config.json").read_text()) == original


def test_saved_weights_have_exactly_the_names_and_values_transformers_wrote(family, saved):
    theirs = weights.read_safetensors(FIXTURES / family / "model.safetensors")
    ours = weights.read_safetensors(saved / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_saved_tokenizer_has_the_family_files_and_class(family, saved):
    for name in ["tokenizer.json", *VOCAB_FILES[family]]:
        assert (saved / name).is_file(), name
    config = json.loads((saved / "tokenizer_config.json").read_text())
    original = json.loads((FIXTURES / family / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == original["tokenizer_class"]


@pytest.mark.parametrize("model_type, keys, absent", [
    ("bert", ["hidden_size", "type_vocab_size"], ["offset_positions", "sinusoidal_pos_embds"]),
    ("roberta", ["hidden_size", "type_vocab_size", "pad_token_id"], ["offset_positions"]),
    ("distilbert", ["dim", "n_layers", "n_heads", "hidden_dim", "activation", "dropout",
                    "attention_dropout", "sinusoidal_pos_embds"],
     ["hidden_size", "num_hidden_layers", "type_vocab_size", "layer_norm_eps"]),
    ("mpnet", ["hidden_size", "relative_attention_num_buckets"],
     ["type_vocab_size", "offset_positions"]),
])
def test_a_fresh_model_saves_its_family_config_keys(model_type, keys, absent, tmp_path):
    source = FIXTURES / model_type
    config = BertConfig.from_json(source / "config.json")
    tokenizer = Tokenizer.from_folder(source, 64, model_type)
    Transformer(encoder=BertModel(config), tokenizer=tokenizer).save(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == model_type
    assert all(k in written for k in keys) and not any(k in written for k in absent)
    assert BertConfig.from_json(tmp_path / "config.json") == config
    state = weights.read_safetensors(tmp_path / "model.safetensors")
    assert state.keys() == weights.read_safetensors(source / "model.safetensors").keys()


# --- loading: names, prefixes, config errors ---------------------------------------------------

@pytest.mark.parametrize("model_type, prefix, head", [
    ("bert", "bert.", "cls.predictions.bias"), ("roberta", "roberta.", "lm_head.bias"),
    ("distilbert", "distilbert.", "vocab_projector.bias"), ("mpnet", "mpnet.", "lm_head.bias"),
])
def test_task_checkpoints_with_a_prefix_and_a_head_load_the_same_weights(model_type, prefix, head):
    state = weights.read_safetensors(FIXTURES / model_type / "model.safetensors")
    plain = checkpoint.hf_to_ours(state, family=model_type)
    prefixed = {prefix + k: v for k, v in state.items()}
    prefixed[head] = torch.zeros(3)
    prefixed[prefix + "embeddings.position_ids"] = torch.arange(3)
    assert checkpoint.hf_to_ours(prefixed, family=model_type).keys() == plain.keys()


def test_unknown_model_type_is_an_error_naming_the_file_and_the_supported_ones(tmp_path):
    shutil.copytree(FIXTURES / "bert", tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="'gpt2' is not supported") as info:
        Transformer(tmp_path / "m")
    assert str(path) in str(info.value)
    assert all(f in str(info.value) for f in FAMILIES)


@pytest.mark.parametrize("change, message", [
    ({"dim": None}, "missing required key.*dim"),
    ({"n_layers": "two"}, "'n_layers' should be int"),
    ({"activation": "swish"}, "activation 'swish' is not supported"),
    ({"sinusoidal_pos_embds": "yes"}, "'sinusoidal_pos_embds' should be bool"),
])
def test_distilbert_config_errors_name_the_file_and_its_own_key(tmp_path, change, message):
    config = json.loads((FIXTURES / "distilbert" / "config.json").read_text())
    assert_config_error(tmp_path, config, change, message)


def test_max_seq_length_leaves_room_for_the_position_offset():
    with pytest.raises(ValueError, match="between 2 and 64.*max_position_embeddings \\(66\\)"):
        Transformer(FIXTURES / "roberta", max_seq_length=65)
    assert Transformer(FIXTURES / "roberta").max_seq_length == 64


# --- the pieces that differ, by hand -----------------------------------------------------------

def test_offset_position_ids_count_real_tokens_from_after_the_padding_index():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert offset_position_ids(mask, pad_token_id=1).tolist() == [[2, 3, 4, 1, 1],
                                                                  [2, 3, 4, 5, 6]]


@pytest.mark.parametrize("key_minus_query, bucket", [
    (0, 0), (-1, 1), (-7, 7), (1, 17), (7, 23),  # short offsets: one bucket each, per direction
    (-8, 8), (-127, 15), (-128, 15), (-1000, 15), (1000, 31),  # long: log-spaced, then capped
    (-20, 8 + int(math.log(20 / 8) / math.log(16) * 8)),
])
def test_relative_position_bucket_by_hand(key_minus_query, bucket):
    assert relative_position_bucket(torch.tensor(key_minus_query)).item() == bucket


def test_reference_attention_with_a_bias_matches_sdpa_with_a_float_mask():
    torch.manual_seed(0)
    B, nh, T, hs = 2, 4, 6, 8
    q, k, v = (torch.randn(B, nh, T, hs) for _ in range(3))
    bias = torch.randn(1, nh, T, T)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3]).bool()[:, None, None, :]  # (B, 1, 1, T)
    fast = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.where(mask, bias, -math.inf))
    torch.testing.assert_close(reference_attention(q, k, v, mask, bias), fast, atol=1e-6,
                               rtol=1e-5)


def test_sinusoidal_table_by_hand():
    table = sinusoidal_table(50, 8)
    assert table[0].tolist() == [0, 1] * 4
    p = 7
    assert table[p, 0] == pytest.approx(math.sin(p))
    assert table[p, 1] == pytest.approx(math.cos(p))
    assert table[p, 6] == pytest.approx(math.sin(p / 10000 ** (6 / 8)))
    assert table[p, 7] == pytest.approx(math.cos(p / 10000 ** (6 / 8)))


def test_distilbert_and_mpnet_have_no_token_types_and_only_mpnet_a_relative_bias():
    names = {t: set(BertModel(BertConfig.from_json(FIXTURES / t / "config.json")).state_dict())
             for t in FAMILIES}
    assert "embeddings.token_type.weight" in names["bert"] & names["roberta"]
    assert not any("token_type" in n for n in names["distilbert"] | names["mpnet"])
    assert [t for t in FAMILIES if "relative_bias.weight" in names[t]] == ["mpnet"]
    assert [t for t in FAMILIES if "pooler.weight" not in names[t]] == ["distilbert"]
