"""The main job end to end: the seed snippet, the STSb recipe and the two training scripts."""

import json
import runpy
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from minisbert import SentenceTransformer, losses
from minisbert.data import collate, load_stsb
from minisbert.recipe import train_on_stsb
from fixtures.weights import materialize

ROOT = Path(__file__).resolve().parent.parent


def test_seed_snippet_from_the_sbert_docs_runs_on_a_real_minisbert_model(tiny_model_dir):
    # SBERT's documented example, with only the import line and the model name changed.
    from minisbert import SentenceTransformer, SentencesDataset, InputExample, losses
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    before = model.encode(["My first sentence"])
    train_examples = [InputExample(texts=["My first sentence", "My second sentence"], label=0.8),
                      InputExample(texts=["Another pair", "Unrelated sentence"], label=0.3)]
    train_dataset = SentencesDataset(train_examples, model)
    train_dataloader = DataLoader(train_dataset, shuffle=True, batch_size=16)
    train_loss = losses.CosineSimilarityLoss(model)
    model.fit(train_objectives=[(train_dataloader, train_loss)], epochs=1, warmup_steps=0,
              show_progress_bar=False)
    assert not (model.encode(["My first sentence"]) == before).all()


def held_out_loss(model, examples) -> float:
    features, labels = collate(examples, model)
    with torch.no_grad():
        return losses.CosineSimilarityLoss(model)(features, labels).item()


@pytest.mark.real
def test_30_steps_on_real_stsb_lower_the_loss_and_write_the_outputs(test_model_dir, stsb_dir,
                                                                     tmp_path):
    model = SentenceTransformer(str(test_model_dir), device="cpu")
    probe = load_stsb("train", stsb_dir)[:256]  # a fixed sample of the training pairs
    model.eval()
    before = held_out_loss(model, probe)
    args = Namespace(model=str(test_model_dir), data=str(stsb_dir), epochs=1, batch_size=16,
                     lr=2e-5, warmup_ratio=0.1, seed=0, max_steps=30, evaluation_steps=15,
                     output=str(tmp_path / "run"))
    results = train_on_stsb(model, args, script="test")
    model.eval()
    assert held_out_loss(model, probe) < before
    out = tmp_path / "run"
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,loss,lr,") and "spearman_cosine" in rows[0]
    assert [r.split(",")[0] for r in rows[1:]] == ["15", "30"]
    assert (out / "modules.json").is_file() and (out / "final" / "modules.json").is_file()
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["steps"] == 30 and saved["model"] == str(test_model_dir)
    assert 0.8 < saved["test"]["spearman_cosine"] < 1 and "pearson_cosine" in saved["test"]
    assert saved["train_seconds"] > 0


@pytest.mark.real
@pytest.mark.parametrize("script", ["train_scratch.py", "train_continue.py"])
def test_script_runs_end_to_end_on_real_files(script, test_model_dir, stsb_dir, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / script), "--model", str(test_model_dir),
               "--data", str(stsb_dir), "--max-steps", "3", "--output", str(out), "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test Spearman (cosine)" in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"dev", "test", "model", "epochs", "train_seconds"}
    reloaded = SentenceTransformer(str(out / "final"), device="cpu")
    assert reloaded.encode("a sentence").shape == (384,)


def write_small_stsb(folder: Path) -> Path:
    """A hand-written STSb folder of 12 pairs per split, in the authors' layout."""
    words = ["a man is playing guitar", "the dog runs fast", "a woman eats food",
             "the cat is slow", "big red car", "music is playing"]
    folder.mkdir()
    lines = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{(i % 6) * 0.9:.1f}\t{words[i % 6]}\t"
             f"{words[(i * 5) % 6]}\n" for i in range(12)]
    for split in ("train", "dev", "test"):
        (folder / f"sts-{split}.csv").write_text("".join(lines), encoding="utf-8")
    return folder


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "mpnet"])
def test_train_continue_runs_on_each_family_and_saves_a_model_that_loads_back(family, tmp_path,
                                                                              monkeypatch):
    fixture = materialize(family, tmp_path / family)  # the fixture with its weights written
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "train_continue.py", "--model", str(fixture), "--data", str(write_small_stsb(tmp_path / "s")),
        "--max-steps", "20", "--batch-size", "4", "--epochs", "10", "--lr", "1e-3",
        "--output", str(out), "--device", "cpu"])
    script = runpy.run_path(str(ROOT / "train_continue.py"), run_name="__main__")
    trained = script["model"]  # the script's model after its 20 steps
    assert json.loads((out / "results.json").read_text())["steps"] == 20
    assert json.loads((out / "final" / "config.json").read_text())["model_type"] == family
    texts = ["a man is playing guitar", "the cat"]
    original = SentenceTransformer(str(fixture), device="cpu")
    assert not np.allclose(trained.encode(texts), original.encode(texts))  # it did train
    reloaded = SentenceTransformer(str(out / "final"), device="cpu")
    assert np.array_equal(reloaded.encode(texts), trained.encode(texts))
