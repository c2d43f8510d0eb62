"""The SBERT modules: pooling by hand, the pooling config file, Normalize, Transformer limits."""

import json

import numpy as np
import pytest
import torch

from minisbert.models import Normalize, Pooling, Transformer

# Two sentences, three and one real tokens; the padded rows hold huge values that would show.
H = torch.tensor([[[1., 2.], [3., -4.], [5., 0.]],
                  [[-1., 7.], [1e6, 1e6], [1e6, -1e6]]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize("mode, expected", [
    ("mean", [[3., -2 / 3], [-1., 7.]]),
    ("max", [[5., 2.], [-1., 7.]]),
    ("cls", [[1., 2.], [-1., 7.]]),
    ("mean_sqrt_len_tokens", [[9 / 3 ** 0.5, -2 / 3 ** 0.5], [-1., 7.]]),
])
def test_pooling_by_hand_ignores_padding(mode, expected):
    out = Pooling(2, mode)(H, MASK)
    torch.testing.assert_close(out, torch.tensor(expected))


def test_max_pooling_ignores_padding_even_when_all_real_values_are_negative():
    h = torch.tensor([[[-5.], [0.]]])  # the padded 0 would beat -5 if it were not masked
    assert Pooling(1, "max")(h, torch.tensor([[1, 0]])).item() == -5.


@pytest.mark.parametrize("mode", ["mean", "max", "mean_sqrt_len_tokens"])
def test_a_row_without_real_tokens_pools_to_zeros_not_nan(mode):
    # Tokenizers always add [CLS] and [SEP], but a hand-made mask may be all zeros; the result
    # must stay finite through Normalize rather than turn into NaN.
    out = Normalize()(Pooling(2, mode)(H, torch.tensor([[1, 1, 1], [0, 0, 0]])))
    assert out[1].tolist() == [0., 0.] and out[0].isfinite().all()


def test_unknown_pooling_mode_is_refused():
    with pytest.raises(ValueError, match="pooling_mode='sum'"):
        Pooling(2, "sum")


@pytest.mark.parametrize("dim", [0, -3, "384", 2.0, True])
def test_pooling_width_must_be_a_positive_int(dim):
    with pytest.raises(ValueError, match=f"word_embedding_dimension={dim!r}"):
        Pooling(dim)
    assert Pooling(np.int64(384)).get_sentence_embedding_dimension() == 384


@pytest.mark.parametrize("config, message", [
    ({"embedding_dimension": 8, "pooling_mode": 3}, "pooling_mode must be a mode name"),
    ({"word_embedding_dimension": 8, "pooling_mode_mean_tokens": "false"},
     "'pooling_mode_mean_tokens' must be true or false, got 'false'"),
])
def test_pooling_config_with_mistyped_values_names_the_file_and_key(tmp_path, config, message):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message) as info:
        Pooling.load(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)


@pytest.mark.parametrize("mode", ["mean", "max", "cls", "mean_sqrt_len_tokens"])
def test_pooling_config_round_trips_with_sentence_transformers_keys(tmp_path, mode):
    Pooling(384, mode).save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["word_embedding_dimension"] == 384
    assert sum(v is True for k, v in config.items() if k.startswith("pooling_mode_")) == 1
    assert Pooling.load(tmp_path).pooling_mode == mode


@pytest.mark.parametrize("mode", ["mean", "max", "cls", "mean_sqrt_len_tokens"])
def test_pooling_config_of_sentence_transformers_6_loads(tmp_path, mode):
    (tmp_path / "config.json").write_text(json.dumps({
        "embedding_dimension": 384, "pooling_mode": mode, "include_prompt": True}))
    pooling = Pooling.load(tmp_path)
    assert (pooling.pooling_mode, pooling.word_embedding_dimension) == (mode, 384)


def test_pooling_config_with_an_unsupported_mode_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "embedding_dimension": 8, "pooling_mode": "lasttoken"}))
    with pytest.raises(ValueError, match="lasttoken"):
        Pooling.load(tmp_path)


def test_pooling_config_with_two_modes_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 8, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match="exactly one supported pooling mode"):
        Pooling.load(tmp_path)


def test_normalize_gives_unit_vectors():
    x = torch.tensor([[3., 4.], [0., -2.]])
    torch.testing.assert_close(Normalize()(x), torch.tensor([[0.6, 0.8], [0., -1.]]))


def test_max_seq_length_above_the_position_table_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="max_position_embeddings \\(64\\)"):
        Transformer(tiny_model_dir, max_seq_length=65)


@pytest.mark.parametrize("n", [0, 1, -5])
def test_max_seq_length_below_two_is_refused_not_replaced_by_the_default(tiny_model_dir, n):
    with pytest.raises(ValueError, match=f"max_seq_length={n}"):
        Transformer(tiny_model_dir, max_seq_length=n)


def test_max_seq_length_defaults_to_the_tokenizer_limit(tiny_model_dir):
    assert Transformer(tiny_model_dir).max_seq_length == 64
    assert Transformer(tiny_model_dir, max_seq_length=10).max_seq_length == 10
    n = Transformer(tiny_model_dir, max_seq_length=np.int64(10)).max_seq_length
    assert n == 10 and type(n) is int
