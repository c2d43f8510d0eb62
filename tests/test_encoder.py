"""The BERT encoder: attention math, the padding mask, and the config file."""

import json

import pytest
import torch
import torch.nn.functional as F

from minisbert.config import BertConfig
from minisbert.encoder import BertModel, RealTokens, reference_attention

from conftest import assert_config_error


def test_reference_attention_matches_scaled_dot_product_attention_with_padding():
    torch.manual_seed(0)
    B, nh, T, hs = 3, 4, 7, 8
    q, k, v = (torch.randn(B, nh, T, hs) for _ in range(3))
    lengths = torch.tensor([7, 4, 1])
    mask = (torch.arange(T)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, T)
    fast = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(reference_attention(q, k, v, mask), fast, atol=1e-6, rtol=1e-5)


def test_reference_attention_gives_padded_keys_zero_weight():
    q = torch.randn(1, 1, 3, 4)
    k = torch.randn(1, 1, 3, 4)
    v = torch.zeros(1, 1, 3, 4)
    v[..., 2, :] = 1e6  # the padded key's value: any weight on it would show
    mask = torch.tensor([True, True, False])[None, None, None, :]
    assert reference_attention(q, k, v, mask).abs().max() == 0


def test_padding_does_not_change_the_real_tokens():
    torch.manual_seed(0)
    model = BertModel(BertConfig.tiny()).eval()
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    alone = model(ids, torch.ones_like(ids))
    padded_ids = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 4])
    padded = model(padded_ids, mask)
    torch.testing.assert_close(padded[:, :5], alone, atol=1e-6, rtol=1e-5)


def padded_batch(sentences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(map(len, sentences))
    ids = torch.tensor([s + [0] * (T - len(s)) for s in sentences])
    return ids, torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in sentences])


# Much padding (15 of 21 positions real): packed to the real tokens. Little padding (39 of 40):
# every position computed. Both must give each sentence what it gets alone.
MUCH_PADDING = [[2, 10, 11, 12, 3], [2, 13, 3], [2, 14, 15, 16, 17, 18, 3]]
LITTLE_PADDING = [[2] + [10 + i] * 8 + [3] for i in range(3)] + [[2] + [20] * 7 + [3]]


@pytest.mark.parametrize("sentences, packed", [(MUCH_PADDING, True), (LITTLE_PADDING, False)])
def test_a_padded_batch_gives_each_sentence_the_vectors_it_gets_alone(sentences, packed):
    torch.manual_seed(0)
    model = BertModel(BertConfig.tiny()).eval()
    ids, mask = padded_batch(sentences)
    assert (RealTokens(mask).index is not None) == packed
    out = model(ids, mask)
    for row, sentence in zip(out, sentences):
        alone = model(*padded_batch([sentence]))[0]
        torch.testing.assert_close(row[: len(sentence)], alone, atol=1e-6, rtol=1e-5)
        assert not row[len(sentence):].any()  # zeros at the padding, packed or not


@pytest.mark.parametrize("batch_size", [2, 12])  # packed, unpacked
def test_a_row_without_real_tokens_gives_zeros_whatever_the_rest_of_the_batch(batch_size):
    model = BertModel(BertConfig.tiny()).eval()
    ids = torch.full((batch_size, 6), 5)
    mask = torch.ones_like(ids)
    mask[1] = 0
    assert not model(ids, mask)[1].any()


@pytest.mark.parametrize("sentences", [MUCH_PADDING, LITTLE_PADDING])
def test_gradients_of_a_padded_batch_are_the_sum_of_each_sentence_alone(sentences):
    torch.manual_seed(0)
    model = BertModel(BertConfig.tiny()).eval()
    target = torch.randn(model.config.hidden_size)

    def gradients(batches) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        for ids, mask in batches:  # the loss only sees real tokens, like every pooling
            (model(ids, mask)[mask.bool()] @ target).sum().backward()
        return [p.grad for p in model.parameters() if p.grad is not None]

    together = gradients([padded_batch(sentences)])
    alone = gradients([padded_batch([s]) for s in sentences])
    assert len(together) == len(alone) > 0
    for a, b in zip(together, alone):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_parameter_count_matches_the_bert_formula():
    c = BertConfig.tiny()
    C, I, L = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    embeddings = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * C + 2 * C
    layer = 4 * (C * C + C) + 2 * C + (C * I + I) + (I * C + C) + 2 * C
    pooler = C * C + C
    n = sum(p.numel() for p in BertModel(c).parameters())
    assert n == embeddings + L * layer + pooler


def test_dropout_is_off_in_eval_mode_and_on_in_train_mode():
    torch.manual_seed(0)
    model = BertModel(BertConfig.tiny())
    ids = torch.tensor([[2, 10, 11, 3]])
    mask = torch.ones_like(ids)
    model.eval()
    assert torch.equal(model(ids, mask), model(ids, mask))
    model.train()
    assert not torch.equal(model(ids, mask), model(ids, mask))


def test_config_from_json_keeps_known_keys_and_ignores_others(tmp_path):
    path = tmp_path / "config.json"
    d = {**BertConfig.tiny().to_dict(), "architectures": ["BertModel"], "use_cache": True,
         "position_embedding_type": "absolute"}
    path.write_text(json.dumps(d))
    assert BertConfig.from_json(path) == BertConfig.tiny()


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": None}, "missing required key"),
    ({"num_hidden_layers": "six"}, "'num_hidden_layers' should be int"),
    ({"layer_norm_eps": [1e-12]}, "'layer_norm_eps' should be float"),
    ({"num_attention_heads": 5}, "not divisible"),
    ({"hidden_act": "swish"}, "not supported"),
    ({"pad_token_id": 100}, "'pad_token_id' 100 is not a row of the 100-row word table"),
    ({"position_embedding_type": "relative_key"}, "'position_embedding_type'.*'relative_key'"),
])
def test_config_errors_name_the_file_and_key(tmp_path, change, message):
    assert_config_error(tmp_path, BertConfig.tiny().to_dict(), change, message)


def test_config_that_is_not_json_is_a_clear_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        BertConfig.from_json(path)
