"""The siamese regression loss: MSE(cos(u, v), label), in float32, through one shared model."""

import math

import pytest
import torch

from minisbert.losses import CosineSimilarityLoss, cosine_similarity_loss
from fake_model import FakeSentenceTransformer


def test_loss_is_zero_when_the_cosine_equals_the_label():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    v = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    labels = torch.tensor([1.0, 0.0, 1 / math.sqrt(2)])
    assert cosine_similarity_loss(u, v, labels).item() == pytest.approx(0.0, abs=1e-12)


def test_loss_is_the_mean_squared_error_of_the_cosines_by_hand():
    u = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    v = torch.tensor([[0.0, 1.0], [3.0, 4.0]])  # cosines 0 and 1
    labels = torch.tensor([0.5, 0.8])
    assert cosine_similarity_loss(u, v, labels).item() == pytest.approx((0.5**2 + 0.2**2) / 2)


def test_loss_is_float32_under_bf16_autocast_and_matches_the_fp32_value():
    torch.manual_seed(0)
    u, v = torch.randn(4, 16).bfloat16(), torch.randn(4, 16).bfloat16()
    labels = torch.rand(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = cosine_similarity_loss(u, v, labels)
    assert loss.dtype == torch.float32
    expected = ((torch.nn.functional.cosine_similarity(u.double(), v.double()) - labels.double()) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_labels_of_another_shape_are_refused_rather_than_broadcast():
    u = v = torch.ones(3, 2)
    with pytest.raises(ValueError, match=r"labels have shape \(3, 1\), expected \(3,\)"):
        cosine_similarity_loss(u, v, torch.ones(3, 1))


def test_both_sentences_go_through_the_same_model_and_both_paths_get_gradients():
    model = FakeSentenceTransformer()
    loss_fn = CosineSimilarityLoss(model)
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    left, right = model.tokenize(["alpha beta"]), model.tokenize(["gamma delta"])
    loss = loss_fn([left, right], torch.tensor([1.0]))
    loss.backward()
    assert calls == [(1, 8), (1, 8)]  # one model, called once per side
    grad = model.embed.weight.grad
    for ids in (left["input_ids"][0], right["input_ids"][0]):  # rows only sentence 1 / 2 uses
        assert grad[ids].abs().sum() > 0
    assert list(loss_fn.parameters()) == list(model.parameters())  # no parameters of its own


def test_loss_module_refuses_anything_but_pairs():
    model = FakeSentenceTransformer()
    with pytest.raises(ValueError, match="sentence pairs"):
        CosineSimilarityLoss(model)([model.tokenize(["a"])], torch.tensor([1.0]))
