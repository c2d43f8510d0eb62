"""The STS evaluator: correlations equal scipy's on known vectors, NaN (not a crash) when undefined."""

import csv
import math

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from minisbert.data import InputExample
from minisbert.evaluation import EmbeddingSimilarityEvaluator, pair_similarities
from fake_model import FakeSentenceTransformer, FixedEncoder

VECTORS = {"a": [1.0, 0.0], "b": [0.8, 0.6], "c": [0.0, 2.0], "d": [-1.0, 1.0], "e": [3.0, 1.0]}
PAIRS = [("a", "b"), ("a", "c"), ("b", "d"), ("c", "e"), ("a", "e"), ("b", "c")]
GOLD = [0.9, 0.1, 0.3, 0.4, 0.8, 0.6]


def evaluator(**kwargs):
    return EmbeddingSimilarityEvaluator([p[0] for p in PAIRS], [p[1] for p in PAIRS], GOLD, **kwargs)


def test_pair_similarities_by_hand():
    sims = pair_similarities(np.array([[3.0, 4.0]]), np.array([[0.0, 5.0]]))
    assert sims["cosine"][0] == pytest.approx(0.8)
    assert sims["dot"][0] == pytest.approx(20.0)
    assert sims["euclidean"][0] == pytest.approx(-math.sqrt(10))  # negated distance
    assert sims["manhattan"][0] == pytest.approx(-4.0)


def test_metrics_equal_scipy_on_known_vectors():
    metrics = evaluator()(FixedEncoder(VECTORS))
    a = np.array([VECTORS[p[0]] for p in PAIRS])
    b = np.array([VECTORS[p[1]] for p in PAIRS])
    predicted = {
        "cosine": (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)),
        "euclidean": -np.linalg.norm(a - b, axis=1),
        "manhattan": -np.abs(a - b).sum(1),
        "dot": (a * b).sum(1),
    }
    expected = {}
    for name, p in predicted.items():
        expected[f"pearson_{name}"] = pearsonr(p, GOLD).statistic
        expected[f"spearman_{name}"] = spearmanr(p, GOLD).statistic
    assert metrics == pytest.approx(expected)
    assert list(metrics) == [f"{c}_{s}" for s in ("cosine", "euclidean", "manhattan", "dot")
                             for c in ("pearson", "spearman")]
    assert EmbeddingSimilarityEvaluator.primary_metric == "spearman_cosine"


def test_each_unique_sentence_is_encoded_once():
    model = FixedEncoder(VECTORS)
    evaluator()(model)
    assert len(model.calls) == 1 and sorted(model.calls[0]) == ["a", "b", "c", "d", "e"]


def test_constant_predictions_give_nan_and_a_warning_not_an_exception():
    model = FixedEncoder({s: [1.0, 1.0] for s in VECTORS})
    with pytest.warns(RuntimeWarning, match="constant"):
        metrics = evaluator()(model)
    assert all(math.isnan(value) for value in metrics.values())


def test_from_input_examples_reads_texts_and_labels():
    examples = [InputExample(texts=[s1, s2], label=g) for (s1, s2), g in zip(PAIRS, GOLD)]
    built = EmbeddingSimilarityEvaluator.from_input_examples(examples, name="sts-dev", batch_size=4)
    assert (built.sentences1, built.sentences2, built.scores) == ([p[0] for p in PAIRS], [p[1] for p in PAIRS], GOLD)
    assert (built.name, built.batch_size) == ("sts-dev", 4)


def test_output_path_appends_one_csv_row_per_call(tmp_path):
    ev = evaluator(name="sts-dev")
    ev(FixedEncoder(VECTORS), output_path=tmp_path, epoch=0, steps=5)
    ev(FixedEncoder(VECTORS), output_path=tmp_path, epoch=1, steps=-1)
    with open(tmp_path / "similarity_evaluation_sts-dev_results.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:4] == ["epoch", "steps", "pearson_cosine", "spearman_cosine"]
    assert [r[:2] for r in rows[1:]] == [["0", "5"], ["1", "-1"]]


def test_works_with_a_model_that_encodes_text():
    metrics = evaluator()(FakeSentenceTransformer())
    assert set(metrics) >= {"spearman_cosine", "pearson_dot"}
    assert all(-1.0 <= value <= 1.0 for value in metrics.values())


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="equally many"):
        EmbeddingSimilarityEvaluator(["a"], ["b", "c"], [1.0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_a_gold_score_that_is_not_a_finite_number_is_refused_by_position(bad):
    with pytest.raises(ValueError, match=f"score 1 is {bad!r}"):
        EmbeddingSimilarityEvaluator(["a", "b", "c"], ["d", "e", "f"], [0.5, bad, 0.1])


@pytest.mark.parametrize("scores", [np.array([0.5, 0.25], "f4"), torch.tensor([0.5, 0.25]),
                                    ["0.5", "0.25"]])
def test_scores_may_be_anything_float_takes(scores):
    evaluator = EmbeddingSimilarityEvaluator(["a", "b"], ["c", "d"], scores)
    assert evaluator.scores == [0.5, 0.25] and all(type(s) is float for s in evaluator.scores)
