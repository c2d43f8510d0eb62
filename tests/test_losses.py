"""The siamese losses, each against values computed by hand or by a plain-Python loop.

Regression: MSE(cos(u, v), label). Ranking: CoSENT on cosines, AnglE on angle differences in
complex space. In-batch negatives: cross-entropy over scaled cosines. NLI: softmax over
(u, v, |u - v|). All in float32, all through one shared model, all trainable by fit.
"""

import cmath
import math
import random

import pytest
import torch
from torch.utils.data import DataLoader

from minisbert.data import InputExample, collate
from minisbert.losses import (AnglELoss, CoSENTLoss, CosineSimilarityLoss, MultipleNegativesRankingLoss,
                              SoftmaxLoss, angle_difference, angle_loss, cosent_loss,
                              cosine_similarity_loss, multiple_negatives_ranking_loss, softmax_loss)
from minisbert.optimization import param_groups
from minisbert.training import fit
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


# ---------------------------------------------------------------- plain-Python references

def py_cos(x: list[float], y: list[float]) -> float:
    return sum(a * b for a, b in zip(x, y)) / math.sqrt(sum(a * a for a in x) * sum(b * b for b in y))


def py_angle_difference(x: list[float], y: list[float]) -> float:
    """Mean |phase(z_k / w_k)| / pi, first half real parts, second half imaginary parts."""
    half = len(x) // 2
    z = [complex(x[k], x[half + k]) for k in range(half)]
    w = [complex(y[k], y[half + k]) for k in range(half)]
    return sum(abs(cmath.phase(zk / wk)) for zk, wk in zip(z, w)) / half / math.pi


def py_ranking_loss(scores: list[float], labels: list[float], scale: float) -> float:
    total = 1.0
    for i in range(len(scores)):
        for j in range(len(scores)):
            if labels[i] > labels[j]:
                total += math.exp(scale * (scores[j] - scores[i]))
    return math.log(total)


def random_pairs(B: int = 5, D: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g), torch.randn(B, D, generator=g), torch.rand(B, generator=g)


# ---------------------------------------------------------------- CoSENT

def test_cosent_by_hand_sums_one_term_per_misordered_pair():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # cosines 1, 0, 1/sqrt(2)
    labels = torch.tensor([0.2, 0.8, 0.5])
    # pairs (i, j) with y_i > y_j: (1, 0), (1, 2), (2, 0); each adds exp(s * (cos_j - cos_i))
    c = 1 / math.sqrt(2)
    expected = math.log(1 + math.exp(1 - 0) + math.exp(c - 0) + math.exp(1 - c))
    assert cosent_loss(u, v, labels, scale=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_cosent_matches_a_plain_python_loop():
    u, v, labels = random_pairs()
    cos = [py_cos(a, b) for a, b in zip(u.tolist(), v.tolist())]
    expected = py_ranking_loss(cos, labels.tolist(), 20.0)
    assert cosent_loss(u, v, labels).item() == pytest.approx(expected, rel=1e-5)


def test_cosent_is_near_zero_when_every_pair_is_ranked_right_and_sees_only_the_label_order():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # cosines 1 and 0
    assert cosent_loss(u, v, torch.tensor([0.9, 0.1])).item() == pytest.approx(0.0, abs=1e-8)  # log(1 + e^-20)
    u, v, labels = random_pairs()
    assert cosent_loss(u, v, 5 * labels + 3).item() == pytest.approx(cosent_loss(u, v, labels).item())


def test_cosent_with_equal_labels_has_nothing_to_rank():
    u, v, _ = random_pairs()
    assert cosent_loss(u, v, torch.full((5,), 0.5)).item() == 0.0  # log(1 + empty sum)


# ---------------------------------------------------------------- AnglE

def test_angle_difference_by_hand():
    # One complex coordinate: z = 1 (phase 0) against w = i, 1 + i, -1 (phases pi/2, pi/4, pi).
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    assert angle_difference(u, v).tolist() == pytest.approx([0.5, 0.25, 1.0])
    # Two coordinates: z = (1, i), w = (1, 1 + i): phase differences 0 and pi/4, mean pi/8.
    z, w = torch.tensor([[1.0, 0.0, 0.0, 1.0]]), torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    assert angle_difference(z, w).item() == pytest.approx(0.125)


def test_angle_difference_matches_complex_division_and_ignores_each_coordinates_length():
    u, v, _ = random_pairs(D=8)
    expected = [py_angle_difference(a, b) for a, b in zip(u.tolist(), v.tolist())]
    assert angle_difference(u, v).tolist() == pytest.approx(expected, rel=1e-5)
    scale = torch.rand(1, 4) + 0.1  # stretch each complex coordinate of v by its own factor
    assert angle_difference(u, v * scale.repeat(1, 2)).tolist() == pytest.approx(expected, rel=1e-5)


def test_angle_loss_by_hand_and_against_a_plain_python_loop():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[0.0, 1.0], [1.0, 1.0]])  # angle differences 0.5 and 0.25
    # y_0 > y_1, but pair 0 has the larger angle difference: one term exp(s * (0.5 - 0.25)).
    assert angle_loss(u, v, torch.tensor([0.9, 0.1]), scale=2.0).item() == \
        pytest.approx(math.log(1 + math.exp(2.0 * 0.25)))
    u, v, labels = random_pairs(D=8)
    negated = [-py_angle_difference(a, b) for a, b in zip(u.tolist(), v.tolist())]
    expected = py_ranking_loss(negated, labels.tolist(), 20.0)
    assert angle_loss(u, v, labels).item() == pytest.approx(expected, rel=1e-5)


def test_angle_loss_refuses_odd_dimensions_and_survives_a_zero_coordinate():
    with pytest.raises(ValueError, match="odd"):
        angle_difference(torch.ones(2, 3), torch.ones(2, 3))
    u = torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 2.0, 3.0, 4.0]], requires_grad=True)  # u[0]: z_0 = 0
    v = torch.tensor([[1.0, 1.0, 1.0, 0.0], [2.0, 1.0, 0.0, 1.0]])
    angle_loss(u, v, torch.tensor([0.2, 0.9])).backward()
    assert torch.isfinite(u.grad).all()


# ---------------------------------------------------------------- MultipleNegativesRankingLoss

def test_multiple_negatives_ranking_loss_by_hand():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positives = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    c = 1 / math.sqrt(2)  # cos matrix [[1, c], [0, c]]; the diagonal holds the positives
    row0 = -math.log(math.exp(1) / (math.exp(1) + math.exp(c)))
    row1 = -math.log(math.exp(c) / (math.exp(0) + math.exp(c)))
    loss = multiple_negatives_ranking_loss(anchors, positives, scale=1.0)
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_multiple_negatives_ranking_loss_with_a_hard_negative_matches_a_loop():
    g = torch.Generator().manual_seed(1)
    anchors = torch.randn(3, 4, generator=g)
    candidates = torch.randn(6, 4, generator=g)  # 3 positives, then 3 hard negatives
    expected = 0.0
    for i, a in enumerate(anchors.tolist()):
        logits = [20.0 * py_cos(a, c) for c in candidates.tolist()]
        expected += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    assert multiple_negatives_ranking_loss(anchors, candidates).item() == pytest.approx(expected / 3, rel=1e-5)


# ---------------------------------------------------------------- SoftmaxLoss

def test_softmax_loss_by_hand_classifies_u_v_and_their_distance():
    classifier = torch.nn.Linear(3, 2)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))  # logit 0 = u, 1 = |u - v|
        classifier.bias.zero_()
    u, v = torch.tensor([[2.0]]), torch.tensor([[-1.0]])  # features (2, -1, 3): logits (2, 3)
    expected = math.log(1 + math.exp(-1))  # -log(e^3 / (e^2 + e^3))
    assert softmax_loss(u, v, torch.tensor([1.0]), classifier).item() == pytest.approx(expected)
    assert softmax_loss(u, v, torch.tensor([0]), classifier).item() == pytest.approx(math.log(1 + math.exp(1)))


def test_softmax_loss_refuses_fractional_or_out_of_range_labels():
    classifier = torch.nn.Linear(6, 3)
    u = v = torch.ones(2, 2)
    with pytest.raises(ValueError, match="whole-number"):
        softmax_loss(u, v, torch.tensor([0.0, 0.5]), classifier)
    with pytest.raises(ValueError, match=r"class ids 0 \.\. 2"):
        softmax_loss(u, v, torch.tensor([0.0, 3.0]), classifier)


# ---------------------------------------------------------------- all of them

LOSS_FUNCTIONS = {
    "cosent": lambda u, v, y: cosent_loss(u, v, y),
    "angle": lambda u, v, y: angle_loss(u, v, y),
    "mnrl": lambda u, v, y: multiple_negatives_ranking_loss(u, v),
    "softmax": lambda u, v, y: softmax_loss(u, v, (y * 3).floor(), torch.nn.Linear(3 * u.shape[1], 3)),
}


@pytest.mark.parametrize("name", LOSS_FUNCTIONS)
def test_each_loss_is_float32_under_bf16_autocast_and_matches_the_fp32_value(name):
    u, v, labels = random_pairs(D=16)
    u, v = u.bfloat16(), v.bfloat16()
    torch.manual_seed(0)  # the softmax classifier's initial weights
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = LOSS_FUNCTIONS[name](u, v, labels)
    torch.manual_seed(0)
    reference = LOSS_FUNCTIONS[name](u.float(), v.float(), labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)


def make_loss(name: str, model):
    return {"cosent": lambda: CoSENTLoss(model), "angle": lambda: AnglELoss(model),
            "mnrl": lambda: MultipleNegativesRankingLoss(model),
            "softmax": lambda: SoftmaxLoss(model, 8, num_labels=3)}[name]()


@pytest.mark.parametrize("name", ["cosent", "angle", "mnrl", "softmax"])
def test_each_loss_module_sends_gradients_through_both_sides_of_the_shared_model(name):
    model = FakeSentenceTransformer()
    left = model.tokenize(["alpha beta", "gamma delta"])
    right = model.tokenize(["epsilon zeta", "eta theta"])
    make_loss(name, model)([left, right], torch.tensor([0.0, 2.0])).backward()
    grad = model.embed.weight.grad
    for ids in (left["input_ids"].flatten(), right["input_ids"].flatten()):
        assert grad[ids].abs().sum(dim=1).min() > 0  # every word of both sides moved


@pytest.mark.parametrize("cls", [CoSENTLoss, AnglELoss, MultipleNegativesRankingLoss])
def test_ranking_loss_modules_have_no_parameters_of_their_own(cls):
    model = FakeSentenceTransformer()
    assert list(cls(model).parameters()) == list(model.parameters())


def test_pair_loss_modules_refuse_single_texts():
    model = FakeSentenceTransformer()
    for name in ("cosent", "angle", "mnrl", "softmax"):
        loss = make_loss(name, model)
        with pytest.raises(ValueError, match="pairs"):
            loss([model.tokenize(["a"])], torch.tensor([1.0]))


# ---------------------------------------------------------------- trained by fit

ANIMALS = "cat dog cow horse sheep goat hen duck".split()
VEHICLES = "car bus train truck bike boat tram van".split()


def nli_like(n: int, seed: int = 0) -> list[InputExample]:
    """Label 0: both animals, 1: both vehicles, 2: one of each, a task the classifier must learn."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        label = i % 3
        first, second = [(ANIMALS, ANIMALS), (VEHICLES, VEHICLES), (ANIMALS, VEHICLES)][label]
        examples.append(InputExample(texts=[" ".join(rng.sample(first, 2)), " ".join(rng.sample(second, 2))],
                                     label=label))
    return examples


def test_fit_trains_the_softmax_classifier_with_the_model():
    model = FakeSentenceTransformer()
    loss_fn = SoftmaxLoss(model, sentence_embedding_dimension=8, num_labels=3)
    decay, no_decay = ({id(p) for p in g["params"]} for g in param_groups([loss_fn], 0.01))
    assert id(loss_fn.classifier.weight) in decay and id(loss_fn.classifier.bias) in no_decay
    train = nli_like(24)

    def full_loss():
        with torch.no_grad():
            return loss_fn(*collate(train, model)).item()

    before_loss, before_weight = full_loss(), loss_fn.classifier.weight.detach().clone()
    fit(model, [(DataLoader(train, shuffle=True, batch_size=8), loss_fn)], epochs=4,
        optimizer_params={"lr": 3e-2}, show_progress_bar=False, seed=0)
    assert not torch.equal(before_weight, loss_fn.classifier.weight)
    assert full_loss() < 0.8 * before_loss


def test_fit_trains_with_in_batch_negatives():
    # Each anchor word must find its partner word among the batch's other positives.
    rng = random.Random(0)
    partners = rng.sample(VEHICLES, len(VEHICLES))
    train = [InputExample(texts=[a, p]) for a, p in zip(ANIMALS, partners)]
    model = FakeSentenceTransformer()
    loss_fn = MultipleNegativesRankingLoss(model)

    def full_loss():
        with torch.no_grad():
            return loss_fn(*collate(train, model)).item()

    before = full_loss()
    rows = fit(model, [(DataLoader(train, shuffle=True, batch_size=8), loss_fn)], epochs=20,
               optimizer_params={"lr": 1e-2}, show_progress_bar=False, seed=0)
    assert len(rows) == 20 and all(math.isfinite(r["loss"]) for r in rows)
    assert full_loss() < 0.5 * before
