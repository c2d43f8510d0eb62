"""Explaining a score: with mean pooling, cos(u, v) is exactly a sum over token pairs."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minisbert import SentenceTransformer, models
from minisbert.explain import Explanation, explain, main, report

ROOT = Path(__file__).resolve().parent.parent
A, B = "a man is playing guitar.", "the woman is playing piano!"


def encode_cosine(model, a: str, b: str) -> float:
    u, v = model.encode([a, b]).astype(np.float64)
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def test_contributions_add_up_to_the_cosine_of_the_encoded_sentences(tiny_model):
    e = explain(tiny_model, A, B)
    assert e.contributions.sum() == pytest.approx(encode_cosine(tiny_model, A, B), abs=1e-5)
    assert e.cosine == pytest.approx(e.contributions.sum(), abs=1e-12)


def test_special_tokens_are_in_the_sum_because_mean_pooling_averages_them_too(tiny_model):
    e = explain(tiny_model, A, B)
    assert e.tokens_a == ["[CLS]", "a", "man", "is", "playing", "guitar", ".", "[SEP]"]
    assert e.tokens_b[0] == "[CLS]" and e.tokens_b[-1] == "[SEP]"
    assert e.contributions.shape == (len(e.tokens_a), len(e.tokens_b))
    words_only = e.contributions[1:-1, 1:-1].sum()  # what a sum over words alone would claim
    assert abs(words_only - e.cosine) > 1e-3


def test_model_explain_is_the_explain_function(tiny_model):
    e = tiny_model.explain(A, B)
    assert isinstance(e, Explanation)
    np.testing.assert_array_equal(e.contributions, explain(tiny_model, A, B).contributions)


def test_a_trailing_normalize_changes_nothing(tiny_model):
    normalized = SentenceTransformer(modules=[tiny_model[0], tiny_model[1], models.Normalize()], device="cpu")
    np.testing.assert_allclose(explain(normalized, A, B).contributions,
                               explain(tiny_model, A, B).contributions, atol=1e-12)


def test_mean_sqrt_len_pooling_has_the_same_direction_as_mean_so_it_splits_too(tiny_model):
    pooling = models.Pooling(32, "mean_sqrt_len_tokens")
    sqrt_len = SentenceTransformer(modules=[tiny_model[0], pooling], device="cpu")
    assert explain(sqrt_len, A, B).contributions.sum() == pytest.approx(encode_cosine(sqrt_len, A, B), abs=1e-5)


@pytest.mark.parametrize("mode", ["cls", "max"])
def test_pooling_other_than_mean_is_refused(tiny_model, mode):
    other = SentenceTransformer(modules=[tiny_model[0], models.Pooling(32, mode)], device="cpu")
    with pytest.raises(ValueError, match=f"explain needs mean pooling.*'{mode}'"):
        explain(other, A, B)


def test_explain_leaves_the_train_mode_as_it_was(tiny_model):
    tiny_model.train()
    explain(tiny_model, A, B)
    assert tiny_model.training


def test_top_pairs_lists_the_largest_positive_and_the_most_negative_terms():
    e = Explanation(["x", "y"], ["p", "q"], np.array([[0.5, -0.2], [0.1, -0.4]]), 0.0)
    assert e.top_pairs(2) == [(0.5, "x", "p"), (0.1, "y", "p")]
    assert e.top_pairs(5, largest=False) == [(-0.4, "y", "q"), (-0.2, "x", "q")]
    text = report(e, top=1)
    assert "+0.5000  x  ~  p" in text and "-0.4000  y  ~  q" in text


def test_cli_prints_the_cosine_and_the_pairs(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "model")
    command = [sys.executable, "-m", "minisbert.explain", A, B, "--model", str(tmp_path / "model"),
               "--top", "3", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    e = explain(tiny_model, A, B)
    assert done.stdout.startswith(f"cosine {e.cosine:.4f} = the sum of 8 x 8 token-pair contributions")
    assert "adds most:" in done.stdout and "subtracts most:" in done.stdout
    value, ta, tb = e.top_pairs(1)[0]
    assert f"{value:+.4f}  {ta}" in done.stdout


def test_png_without_matplotlib_is_a_clear_error_before_any_model_loads(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` fail
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(SystemExit):
        main([A, B, "--model", "/no/such/model", "--png", "out.png"])
    assert "pip install" in capsys.readouterr().err


@pytest.mark.parametrize("option, message", [
    (["--top", "0"], "--top: must be at least 1"),
    (["--png", "heatmap"], "--png: 'heatmap' must end in .png"),
    (["--png", "no/such/folder/m.png"], "--png: no folder no/such/folder"),
])
def test_bad_options_are_usage_errors_before_any_model_loads(capsys, option, message):
    pytest.importorskip("matplotlib", reason="--png needs matplotlib (pip install -e '.[plot]')")
    with pytest.raises(SystemExit):
        main([A, B, "--model", "/no/such/model", *option])
    assert message in capsys.readouterr().err


def test_png_draws_the_matrix(tiny_model, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="--png needs matplotlib (pip install -e '.[plot]')")
    tiny_model.save(tmp_path / "model")
    main([A, B, "--model", str(tmp_path / "model"), "--device", "cpu", "--png", str(tmp_path / "m.png")])
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"heatmap: {tmp_path / 'm.png'}" in capsys.readouterr().out


@pytest.mark.real
def test_real_model_contributions_add_up_to_its_cosine(real_model):
    a, b = "A man plays guitar.", "Someone is playing an instrument."
    e = real_model.explain(a, b)  # all-MiniLM-L6-v2 ends with Normalize
    assert e.contributions.sum() == pytest.approx(encode_cosine(real_model, a, b), abs=1e-5)
    assert "guitar" in e.tokens_a and "instrument" in e.tokens_b
    assert {(ta, tb) for _, ta, tb in e.top_pairs(3)} & {("guitar", "instrument"), ("plays", "playing")}
