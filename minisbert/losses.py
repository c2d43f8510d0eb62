"""The siamese regression objective: MSE between cos(u, v) and the gold similarity.

Both sentences of a pair go through the same network (shared weights), giving embeddings u and v;
the loss is the mean squared error between their cosine similarity and the gold score scaled to
[0, 1] (SBERT section 3, "Regression Objective Function"). `cosine_similarity_loss` is the math,
`CosineSimilarityLoss` binds it to a model. Read next: training.py, which minimises it.
"""

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


class CosineSimilarityLoss(nn.Module):
    """`loss(features, labels)`: features = [tokenized sentences 1, tokenized sentences 2]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features: list[dict], labels: torch.Tensor) -> torch.Tensor:
        if len(features) != 2:
            raise ValueError(f"CosineSimilarityLoss needs sentence pairs, got {len(features)} texts per example")
        u, v = (self.model(**f) for f in features)  # siamese: one model, two passes, (B, D) each
        return cosine_similarity_loss(u, v, labels)
