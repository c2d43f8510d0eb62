"""Explain a similarity score: cos(u, v) split exactly into one term per token pair.

With mean pooling (SBERT section 3) u = (1/n) sum_i h_i over the n real tokens of sentence a,
[CLS] and [SEP] included as the pooling includes them, and v = (1/m) sum_j g_j for sentence b:

    cos(u, v) = u . v / (|u| |v|) = sum_ij (h_i . g_j) / (n m |u| |v|)

so token pair (i, j) contributes (h_i . g_j) / (n m |u| |v|), and the n x m terms add up to the
cosine exactly. A trailing Normalize rescales u and v but leaves their cosine alone. CLS or max
pooling have no such split. Read next: tests/test_explain.py.

    python -m minisbert.explain "A man plays guitar." "Someone is playing an instrument." --top 5
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import plots
from .models import Normalize, Pooling
from .recipe import at_least
from .sentence_transformer import SentenceTransformer

# Pooling modes whose vector is a positive multiple of the token average, so the split holds:
# mean_sqrt_len_tokens is the sum over sqrt(n), i.e. sqrt(n) times the mean.
SPLITTABLE_POOLING = ("mean", "mean_sqrt_len_tokens")


@dataclass
class Explanation:
    """contributions[i, j]: the share of token i of a and token j of b in `cosine` (they sum to it)."""

    tokens_a: list[str]
    tokens_b: list[str]
    contributions: np.ndarray  # (n, m) float64
    cosine: float

    def top_pairs(self, k: int = 5, largest: bool = True) -> list[tuple[float, str, str]]:
        """The k pairs that add most (largest=True, positive terms only) or subtract most
        (largest=False, negative terms only), as (contribution, token of a, token of b)."""
        flat = self.contributions.ravel()
        order = np.argsort(-flat if largest else flat, kind="stable")[:k]
        m = len(self.tokens_b)
        return [(float(flat[i]), self.tokens_a[i // m], self.tokens_b[i % m]) for i in order
                if (flat[i] > 0 if largest else flat[i] < 0)]


def check_explainable(model) -> None:
    """ValueError unless the model is Transformer, mean pooling, then only Normalize modules."""
    modules = list(model)
    pooling = modules[1] if len(modules) > 1 else None
    mode = getattr(pooling, "pooling_mode", None)
    if not isinstance(pooling, Pooling) or mode not in SPLITTABLE_POOLING:
        raise ValueError(f"explain needs mean pooling: only an average of token vectors splits the "
                         f"cosine into token pairs, and this model pools with {mode!r}")
    others = [type(m).__name__ for m in modules[2:] if not isinstance(m, Normalize)]
    if others:
        raise ValueError(f"explain knows Transformer, Pooling and Normalize; this model also has {others}")


def token_vectors(model, text: str) -> tuple[list[str], torch.Tensor]:
    """The real tokens of `text` as the model's pooling sees them, and their vectors (n, C) float64."""
    features = model.tokenize([text])
    real = features["attention_mask"][0].bool()  # (T,)
    ids = features["input_ids"][0][real]
    vocab = model[0].tokenizer.tokenizer  # the `tokenizers` object: id -> token string
    tokens = [vocab.id_to_token(int(i)) for i in ids]
    with torch.inference_mode():
        h = model[0](**{k: t.to(model.device) for k, t in features.items()})[0]  # (T, C)
    return tokens, h[real.to(h.device)].double().cpu()


def explain(model, a: str, b: str) -> Explanation:
    """Split cos(encode(a), encode(b)) into contributions of token pairs (see the module docstring).
    Runs the encoder in float32 in eval mode, whatever the model's encode precision."""
    for name, text in (("a", a), ("b", b)):
        if not isinstance(text, str):
            raise TypeError(f"explain: {name} is {type(text).__name__}, not str")
    check_explainable(model)
    with model.inference():  # no dropout: the vectors must be the ones encode() pools
        tokens_a, h = token_vectors(model, a)  # (n, C)
        tokens_b, g = token_vectors(model, b)  # (m, C)
    u, v = h.mean(0), g.mean(0)  # (C,): the mean-pooled sentence vectors
    norms = u.norm() * v.norm()
    contributions = (h @ g.T) / (len(h) * len(g) * norms)  # (n, C) @ (C, m) -> (n, m)
    return Explanation(tokens_a, tokens_b, contributions.numpy(), float(u @ v / norms))


def report(e: Explanation, top: int = 5) -> str:
    """The cosine, both token lists and the pairs that add and subtract most, as text."""
    n, m = e.contributions.shape
    lines = [f"cosine {e.cosine:.4f} = the sum of {n} x {m} token-pair contributions",
             "a: " + " ".join(e.tokens_a), "b: " + " ".join(e.tokens_b)]
    for title, largest in (("adds most", True), ("subtracts most", False)):
        pairs = e.top_pairs(top, largest)
        width = max((len(t) for _, t, _ in pairs), default=0)
        lines.append(f"{title}:" + ("" if pairs else " (no such pair)"))
        lines += [f"  {value:+.4f}  {ta:<{width}}  ~  {tb}" for value, ta, tb in pairs]
    return "\n".join(lines)


def draw_heatmap(e: Explanation, png) -> None:
    """The contribution matrix as a heatmap, red adding and blue subtracting, to a PNG file."""
    n, m = e.contributions.shape
    fig = plots.figure(figsize=(max(4.0, 0.45 * m + 2.5), max(3.0, 0.4 * n + 1.5)))
    ax = fig.subplots()
    limit = float(np.abs(e.contributions).max()) or 1.0  # symmetric, so 0 is white
    image = ax.imshow(e.contributions, cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_xticks(range(m), e.tokens_b, rotation=60, ha="right")
    ax.set_yticks(range(n), e.tokens_a)
    ax.set_title(f"cosine {e.cosine:.4f} = sum of the cells")
    ax.set(xlabel="sentence b", ylabel="sentence a")
    fig.colorbar(image, ax=ax, label="contribution")
    fig.savefig(png, dpi=150, bbox_inches="tight")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m minisbert.explain",
                                description="Split the cosine similarity of two sentences into "
                                            "the contributions of their token pairs.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("a", help="first sentence")
    p.add_argument("b", help="second sentence")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="local folder or hub name")
    p.add_argument("--top", type=at_least(1), default=5, help="pairs to list each way")
    p.add_argument("--png", default=None, help="also draw the matrix as a heatmap (needs matplotlib)")
    p.add_argument("--device", default=None, help="cpu, cuda, ...; None: cuda if any")
    args = p.parse_args(argv)
    if args.png:  # checked before loading the model, not after
        try:
            plots.require_matplotlib()
        except ImportError as err:
            p.error(f"--png: {err}")
        if Path(args.png).suffix.lower() != ".png":
            p.error(f"--png: {args.png!r} must end in .png")
        if not Path(args.png).parent.is_dir():
            p.error(f"--png: no folder {Path(args.png).parent}")
    e = explain(SentenceTransformer(args.model, device=args.device), args.a, args.b)
    print(report(e, args.top))
    if args.png:
        draw_heatmap(e, args.png)
        print(f"heatmap: {args.png}")


if __name__ == "__main__":
    main()
