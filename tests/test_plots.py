"""Training curves: metrics.csv as fit writes it, read back and drawn (matplotlib is optional)."""

import math
import sys

import pytest
from torch.utils.data import DataLoader

from minisbert import losses
from minisbert.data import InputExample
from minisbert.evaluation import EmbeddingSimilarityEvaluator
from minisbert.plots import plot_training_curves, read_metrics
from minisbert.training import fit
from fake_model import FakeSentenceTransformer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_metrics(folder, evaluator: bool = True):
    """Two epochs of fit on the fake model, so metrics.csv has exactly fit's columns."""
    model = FakeSentenceTransformer()
    pairs = [InputExample(texts=["cat dog", "dog cat"], label=0.9),
             InputExample(texts=["cat", "bus"], label=0.1),
             InputExample(texts=["bus car", "car van"], label=0.8),
             InputExample(texts=["hen", "tram"], label=0.2)]
    dev = EmbeddingSimilarityEvaluator.from_input_examples(pairs, name="dev") if evaluator else None
    fit(model, [(DataLoader(pairs, batch_size=2), losses.CosineSimilarityLoss(model))], evaluator=dev,
        epochs=2, output_path=folder, show_progress_bar=False)
    return folder / "metrics.csv"


def test_read_metrics_gives_step_loss_and_dev_spearman_per_row(tmp_path):
    metrics = read_metrics(write_metrics(tmp_path))
    assert set(metrics) == {"step", "loss", "spearman_cosine"}
    assert metrics["step"] == [2.0, 4.0]  # one row per epoch end
    assert all(math.isfinite(x) for x in metrics["loss"])


def test_read_metrics_without_an_evaluator_and_with_a_nan_score(tmp_path):
    assert set(read_metrics(write_metrics(tmp_path, evaluator=False))) == {"step", "loss"}
    (tmp_path / "nan.csv").write_text("step,epoch,loss,lr,spearman_cosine\n5,0,0.3,1e-05,\n")
    assert math.isnan(read_metrics(tmp_path / "nan.csv")["spearman_cosine"][0])


def test_read_metrics_of_a_file_re_saved_with_a_byte_order_mark(tmp_path):
    path = write_metrics(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as spreadsheets save UTF-8
    assert read_metrics(path) == read_metrics(write_metrics(tmp_path / "again"))


def test_read_metrics_refuses_a_file_that_is_not_fits(tmp_path):
    (tmp_path / "empty.csv").write_text("step,epoch,loss,lr\n")
    with pytest.raises(ValueError, match="no rows"):
        read_metrics(tmp_path / "empty.csv")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="step and loss"):
        read_metrics(tmp_path / "other.csv")


@pytest.mark.parametrize("evaluator", [True, False])
def test_curves_are_drawn_to_a_png(tmp_path, evaluator):
    pytest.importorskip("matplotlib", reason="drawing needs matplotlib (pip install -e '.[plot]')")
    png = plot_training_curves(write_metrics(tmp_path, evaluator), tmp_path / "plots" / "curves.png")
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_without_matplotlib_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    metrics = write_metrics(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` fail
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"minisbert\[plot\]"):
        plot_training_curves(metrics, tmp_path / "curves.png")
