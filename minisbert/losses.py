"""Siamese objectives on the embeddings u, v of a sentence pair, one shared network for both.

The regression objective (SBERT section 3): MSE between cos(u, v) and the gold score in [0, 1].
Ranking objectives on the same data: CoSENT (Su 2022) and AnglE (Li & Li 2023).
The classification objective (SBERT section 3, NLI): softmax over (u, v, |u - v|). In-batch
negatives ranking for (anchor, positive) pairs (Henderson et al. 2017). Each `*_loss` function is
the math; each class binds it to a model. Read next: training.py, which minimises them.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def cosine_similarity_loss(u: torch.Tensor, v: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean((cos(u_i, v_i) - labels_i)^2) for u, v (B, D) and labels (B,); a float32 scalar.

    Computed in float32 even inside an autocast region: a bf16 cosine carries only ~3 significant
    digits, too coarse for a target in [0, 1] whose errors late in training are ~1e-2.
    """
    with torch.autocast(device_type=u.device.type, enabled=False):
        cos = F.cosine_similarity(u.float(), v.float(), dim=-1)  # (B,)
        labels = labels.to(device=cos.device, dtype=torch.float32)
        if labels.shape != cos.shape:  # a (B, 1) label would silently broadcast to (B, B)
            raise ValueError(f"labels have shape {tuple(labels.shape)}, expected {tuple(cos.shape)}")
        return F.mse_loss(cos, labels)


def _embed_pair(model: nn.Module, features: list[dict], loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    if len(features) != 2:
        raise ValueError(f"{loss} needs sentence pairs, got {len(features)} texts per example")
    u, v = (model(**f) for f in features)  # siamese: one model, two passes, (B, D) each
    return u, v


class CosineSimilarityLoss(nn.Module):
    """`loss(features, labels)`: features = [tokenized sentences 1, tokenized sentences 2]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features: list[dict], labels: torch.Tensor) -> torch.Tensor:
        u, v = _embed_pair(self.model, features, "CosineSimilarityLoss")
        return cosine_similarity_loss(u, v, labels)


def _float32(x: torch.Tensor):
    """Autocast off: every loss here runs in float32, for the reason cosine_similarity_loss gives."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _pair_labels(labels: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    labels = labels.to(device=scores.device, dtype=torch.float32)
    if labels.shape != scores.shape:
        raise ValueError(f"labels have shape {tuple(labels.shape)}, expected {tuple(scores.shape)}")
    return labels


def ranking_loss(scores: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """log(1 + sum over (i, j) with labels_i > labels_j of exp(scale * (scores_j - scores_i))).

    scores, labels (B,): one similarity and one gold score per pair. A term is large when pair j
    scores above a pair i that gold ranks higher; only the order of the labels matters, not their
    values. The 1 (the exp(0) term) keeps the loss >= 0; logsumexp keeps it finite for any scale.
    """
    diff = scale * (scores[None, :] - scores[:, None])  # (B, B): [i, j] = s * (scores_j - scores_i)
    misordered = labels[:, None] > labels[None, :]  # (B, B): pairs where i must beat j
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff[misordered]]), dim=0)


def cosent_loss(u: torch.Tensor, v: torch.Tensor, labels: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT: ranking_loss on cosines, log(1 + sum_{y_i > y_j} exp(s * (cos_j - cos_i))).

    u, v (B, D), labels (B,). Unlike the MSE, it never asks a cosine to equal a label, only that
    more similar pairs get larger cosines, which is all that Spearman's correlation measures.
    """
    with _float32(u):
        cos = F.cosine_similarity(u.float(), v.float(), dim=-1)  # (B,)
        return ranking_loss(cos, _pair_labels(labels, cos), scale)


def angle_difference(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """AnglE's angle difference of each pair in complex space, normalised to [0, 1]: (B,).

    The first half of an embedding is the real part, the second half the imaginary part, so
    u = [a; b] and v = [c; d] become z = a + ib and w = c + id, D/2 complex numbers each. Per
    complex coordinate k, the paper's division in polar form gives the angle difference:
    z_k / w_k = ((a c + b d) + i (b c - a d)) / (c^2 + d^2) = (|z_k| / |w_k|) exp(i dtheta_k),
    and the pair's angle difference is mean_k |dtheta_k| / pi: 0 when every coordinate has the
    same phase, 1/2 on average for random vectors, 1 for opposite ones.

    Variant: this is the angle itself, as the paper defines it. The authors' code (and
    sentence-transformers') ranks by |sum_k (Re + Im) of z_k conj(w_k)| / (|z| |w|) instead,
    = |cos(u, v) + sum_k |z_k| |w_k| sin(dtheta_k) / (|z| |w|)|: the cosine plus a signed sine
    term, not an angle. The two rank pairs differently.
    """
    if u.shape[-1] % 2:
        raise ValueError(f"AnglE splits embeddings into real and imaginary halves; dimension "
                         f"{u.shape[-1]} is odd")
    a, b = u.chunk(2, dim=-1)  # (B, D) -> 2 x (B, D/2)
    c, d = v.chunk(2, dim=-1)
    re, im = a * c + b * d, b * c - a * d  # z * conj(w): the numerator of z / w, same angle
    # A zero coordinate has no angle; feed atan2 a harmless (0, 1) there, as its gradient is 0/0.
    zero = (re == 0) & (im == 0)
    dtheta = torch.atan2(torch.where(zero, 0.0, im), torch.where(zero, 1.0, re))  # (B, D/2)
    return dtheta.abs().mean(dim=-1) / math.pi


def angle_loss(u: torch.Tensor, v: torch.Tensor, labels: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """AnglE: ranking_loss on angle differences, log(1 + sum_{y_i > y_j} exp(s * (dtheta_i - dtheta_j))).

    A more similar pair must have the smaller angle difference (see `angle_difference`). The
    angle keeps a gradient where the cosine saturates: d cos/d theta = -sin(theta) -> 0 as the
    vectors align, while d|dtheta|/dtheta stays 1.
    """
    with _float32(u):
        dtheta = angle_difference(u.float(), v.float())
        return ranking_loss(-dtheta, _pair_labels(labels, dtheta), scale)


def multiple_negatives_ranking_loss(anchors: torch.Tensor, candidates: torch.Tensor,
                                    scale: float = 20.0) -> torch.Tensor:
    """mean_i cross_entropy(softmax_j(scale * cos(anchors_i, candidates_j)), target j = i).

    anchors (B, D); candidates (N, D), N >= B, whose row i is the positive of anchor i. Every
    other row is a negative for anchor i: the other anchors' positives (in-batch negatives) and
    any hard negatives stacked after them.
    """
    with _float32(anchors):
        a = F.normalize(anchors.float(), dim=-1)
        c = F.normalize(candidates.float(), dim=-1)
        scores = scale * a @ c.T  # (B, D) @ (D, N) -> (B, N)
        return F.cross_entropy(scores, torch.arange(len(a), device=a.device))


def softmax_loss(u: torch.Tensor, v: torch.Tensor, labels: torch.Tensor, classifier: nn.Linear) -> torch.Tensor:
    """cross_entropy(classifier([u; v; |u - v|]), labels), the SBERT paper's NLI objective.

    u, v (B, D); classifier maps 3D features to num_labels logits; labels (B,) hold class ids
    0 .. num_labels - 1 (the float labels of a batch are accepted when they are whole numbers).
    """
    with _float32(u):
        u, v = u.float(), v.float()
        logits = classifier(torch.cat([u, v, (u - v).abs()], dim=-1))  # (B, 3D) -> (B, num_labels)
        if labels.is_floating_point() and not torch.equal(labels, labels.round()):
            raise ValueError("SoftmaxLoss needs whole-number class labels, got fractions")
        labels = labels.to(device=logits.device, dtype=torch.long)
        if labels.shape != logits.shape[:1]:
            raise ValueError(f"labels have shape {tuple(labels.shape)}, expected ({len(logits)},)")
        if len(labels) and (labels.min() < 0 or labels.max() >= logits.shape[-1]):
            raise ValueError(f"labels must be class ids 0 .. {logits.shape[-1] - 1}, got "
                             f"{labels.min().item()} .. {labels.max().item()}")
        return F.cross_entropy(logits, labels)


class CoSENTLoss(nn.Module):
    """`loss(features, labels)` for pairs with a gold score (any scale: only the order counts)."""

    def __init__(self, model: nn.Module, scale: float = 20.0):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, features: list[dict], labels: torch.Tensor) -> torch.Tensor:
        return cosent_loss(*_embed_pair(self.model, features, "CoSENTLoss"), labels, self.scale)


class AnglELoss(nn.Module):
    """`loss(features, labels)` for pairs with a gold score; the model's dimension must be even."""

    def __init__(self, model: nn.Module, scale: float = 20.0):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, features: list[dict], labels: torch.Tensor) -> torch.Tensor:
        return angle_loss(*_embed_pair(self.model, features, "AnglELoss"), labels, self.scale)


class MultipleNegativesRankingLoss(nn.Module):
    """`loss(features, labels)`: features = [anchors, positives, optional hard negatives ...];
    labels are ignored (the positive of each anchor is its own row)."""

    def __init__(self, model: nn.Module, scale: float = 20.0):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, features: list[dict], labels: torch.Tensor | None = None) -> torch.Tensor:
        if len(features) < 2:
            raise ValueError(f"MultipleNegativesRankingLoss needs (anchor, positive) pairs, got "
                             f"{len(features)} text per example")
        anchors, *others = (self.model(**f) for f in features)  # (B, D) each
        return multiple_negatives_ranking_loss(anchors, torch.cat(others), self.scale)


class SoftmaxLoss(nn.Module):
    """`loss(features, labels)` for pairs with a class label (NLI: e.g. contradiction 0,
    entailment 1, neutral 2). The classifier is trained along with the model, then discarded."""

    def __init__(self, model: nn.Module, sentence_embedding_dimension: int, num_labels: int):
        super().__init__()
        self.model = model
        device = next(model.parameters()).device  # fit moves it anyway; a bare forward needs it here
        self.classifier = nn.Linear(3 * sentence_embedding_dimension, num_labels, device=device)

    def forward(self, features: list[dict], labels: torch.Tensor) -> torch.Tensor:
        return softmax_loss(*_embed_pair(self.model, features, "SoftmaxLoss"), labels, self.classifier)
