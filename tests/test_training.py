"""The training loop: lr schedule by hand, weight-decay groups, precision, logging, saving."""

import csv
import random
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from minisbert import losses
from minisbert.data import InputExample, SentencesDataset, collate
from minisbert.evaluation import EmbeddingSimilarityEvaluator
from minisbert.training import fit, linear_warmup_decay, mixed_precision, param_groups
from fake_model import FakeSentenceTransformer

ANIMALS = "cat dog cow horse sheep goat hen duck".split()
VEHICLES = "car bus train truck bike boat tram van".split()


def toy_pairs(n: int, seed: int = 0) -> list[InputExample]:
    """Learnable task: pairs from the same topic are similar (0.9), across topics not (0.1)."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        first, second = (ANIMALS, ANIMALS) if i % 4 == 0 else (VEHICLES, VEHICLES) if i % 4 == 1 else \
            (ANIMALS, VEHICLES) if i % 4 == 2 else (VEHICLES, ANIMALS)
        texts = [" ".join(rng.sample(words, 3)) for words in (first, second)]
        examples.append(InputExample(texts=texts, label=0.9 if first is second else 0.1))
    return examples


def lrs_of_each_update(warmup_steps: int, total_steps: int) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = linear_warmup_decay(optimizer, warmup_steps, total_steps)
    used = []
    for _ in range(total_steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return used + [optimizer.param_groups[0]["lr"]]  # and after the last update


def test_warmup_schedule_by_hand_first_update_at_lr_zero():
    # s / 2 for s < 2, then (5 - s) / 3
    assert lrs_of_each_update(2, 5) == pytest.approx([0.0, 0.5, 1.0, 2 / 3, 1 / 3, 0.0])


def test_no_warmup_starts_at_the_full_lr_and_decays_linearly_to_zero():
    assert lrs_of_each_update(0, 4) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


@pytest.mark.parametrize("warmup_steps, changes", [(0, True), (10, False)])
def test_first_update_of_fit_moves_weights_only_without_warmup(warmup_steps, changes):
    model = FakeSentenceTransformer()
    before = model.proj.weight.detach().clone()
    loader = DataLoader(toy_pairs(8), batch_size=4)
    fit(model, [(loader, losses.CosineSimilarityLoss(model))], warmup_steps=warmup_steps,
        max_steps=1, show_progress_bar=False)
    assert (not torch.equal(before, model.proj.weight)) == changes


class HandNorm(nn.Module):
    """A LayerNorm written by hand, recognised only by its name."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))


def test_weight_decay_spares_biases_and_layernorms_and_lists_shared_parameters_once():
    model = FakeSentenceTransformer()
    model.attn_norm = HandNorm()
    groups = param_groups([losses.CosineSimilarityLoss(model), losses.CosineSimilarityLoss(model)], 0.01)
    decay, no_decay = ({id(p) for p in g["params"]} for g in groups)
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert decay == {id(model.embed.weight), id(model.proj.weight)}
    assert no_decay == {id(model.norm.weight), id(model.norm.bias), id(model.proj.bias), id(model.attn_norm.weight)}


def test_mixed_precision_is_bf16_on_cpu_fp16_with_a_scaler_on_old_gpus(monkeypatch):
    off = mixed_precision("cpu", enabled=False)
    assert (off.dtype, off.scaler) == (None, None)
    cpu = mixed_precision("cpu", enabled=True)
    assert (cpu.dtype, cpu.scaler) == (torch.bfloat16, None)
    with cpu.autocast():
        assert torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" on a CPU-only machine
        old_gpu = mixed_precision("cuda", enabled=True)
    assert old_gpu.dtype == torch.float16 and isinstance(old_gpu.scaler, torch.amp.GradScaler)


def test_fit_learns_a_toy_task_and_saves_model_and_metrics(tmp_path):
    model = FakeSentenceTransformer()
    train, dev = toy_pairs(64), toy_pairs(16, seed=1)
    loss_fn = losses.CosineSimilarityLoss(model)

    def full_loss():
        with torch.no_grad():
            return loss_fn(*collate(train, model)).item()

    before = full_loss()
    evaluator = EmbeddingSimilarityEvaluator.from_input_examples(dev, name="dev")
    spearman_before = evaluator(model)["spearman_cosine"]
    rows = fit(model, [(DataLoader(SentencesDataset(train, model), shuffle=True, batch_size=8), loss_fn)],
               evaluator=evaluator, epochs=4, warmup_steps=4, optimizer_params={"lr": 1e-2},
               output_path=tmp_path, show_progress_bar=False, seed=0)
    assert full_loss() < 0.3 * before
    # Binary gold scores cap Spearman near 0.87; an untrained model is near 0.
    assert spearman_before < 0.2 and rows[-1]["spearman_cosine"] > 0.5
    assert (tmp_path / "fake_model.pt").is_file()
    assert (tmp_path / "eval" / "similarity_evaluation_dev_results.csv").is_file()
    with open(tmp_path / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:5] == ["step", "epoch", "loss", "lr", "pearson_cosine"]
    assert [int(r["step"]) for r in table] == [8, 16, 24, 32]  # one row per epoch end
    assert float(table[-1]["loss"]) < float(table[0]["loss"])


class ScriptedLoss(nn.Module):
    """Returns the given values in turn (plus 0 * a parameter, so that there is a gradient)."""

    def __init__(self, values):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.values = iter(values)

    def forward(self, features, labels):
        return self.w.sum() * 0 + next(self.values)


class ScriptedEvaluator:
    primary_metric = "spearman_cosine"

    def __init__(self, scores):
        self.scores = iter(scores)

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        return {"spearman_cosine": next(self.scores)}


def test_metrics_rows_hold_the_mean_loss_since_the_last_row_and_the_lr():
    model = FakeSentenceTransformer()
    loader = DataLoader(toy_pairs(12), batch_size=4)  # 3 steps per epoch
    rows = fit(model, [(loader, ScriptedLoss([1, 2, 3, 4, 5, 6]))], evaluator=ScriptedEvaluator([.1, .2, .3, .4]),
               epochs=2, evaluation_steps=2, optimizer_params={"lr": 1.0}, show_progress_bar=False)
    # Evaluations at step 2, at the end of epoch 0 (step 3), at 4, and at 6 (both: only once).
    assert [(r["step"], r["epoch"]) for r in rows] == [(2, 0), (3, 0), (4, 1), (6, 1)]
    assert [r["loss"] for r in rows] == [1.5, 3.0, 4.0, 5.5]
    assert [r["lr"] for r in rows] == pytest.approx([5 / 6, 4 / 6, 3 / 6, 1 / 6])  # lr of the last update


def test_best_model_is_saved_only_when_the_primary_score_improves(tmp_path):
    model = FakeSentenceTransformer()
    seen = []
    fit(model, [(DataLoader(toy_pairs(12), batch_size=4), losses.CosineSimilarityLoss(model))],
        evaluator=ScriptedEvaluator([0.5, 0.7, float("nan"), 0.6]), epochs=4, steps_per_epoch=1,
        output_path=tmp_path, callback=lambda *args: seen.append(args), show_progress_bar=False)
    assert len(model.saved) == 2  # after 0.5 and 0.7; NaN and 0.6 do not beat 0.7
    assert seen[:2] == [(0.5, 0, -1), (0.7, 1, -1)]


def test_without_an_evaluator_the_final_model_is_saved(tmp_path):
    model = FakeSentenceTransformer()
    rows = fit(model, [(DataLoader(toy_pairs(8), batch_size=4), losses.CosineSimilarityLoss(model))],
               epochs=2, output_path=tmp_path, show_progress_bar=False)
    assert model.saved == [tmp_path] and [r["step"] for r in rows] == [2, 4]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "step,epoch,loss,lr"


def test_several_objectives_take_turns_and_an_epoch_is_the_shortest_dataloader():
    model = FakeSentenceTransformer()
    calls = []

    class Counting(losses.CosineSimilarityLoss):
        def forward(self, features, labels):
            calls.append(self.tag)
            return super().forward(features, labels)

    first, second = Counting(model), Counting(model)
    first.tag, second.tag = "first", "second"
    rows = fit(model, [(DataLoader(toy_pairs(16), batch_size=4), first),  # 4 batches
                       (DataLoader(toy_pairs(8), batch_size=4), second)],  # 2 batches
               epochs=1, show_progress_bar=False)
    assert calls == ["first", "second", "first", "second"] and rows[-1]["step"] == 2


def test_max_steps_stops_training_early():
    model = FakeSentenceTransformer()
    rows = fit(model, [(DataLoader(toy_pairs(40), batch_size=4), losses.CosineSimilarityLoss(model))],
               epochs=3, max_steps=5, show_progress_bar=False)
    assert [r["step"] for r in rows] == [5]


def test_bf16_autocast_on_cpu_trains_with_a_finite_float32_loss():
    model = FakeSentenceTransformer()
    rows = fit(model, [(DataLoader(toy_pairs(8), batch_size=4), losses.CosineSimilarityLoss(model))],
               use_amp=True, show_progress_bar=False)
    assert torch.isfinite(torch.tensor(rows[-1]["loss"]))
    assert model.proj.weight.dtype == torch.float32  # autocast leaves the stored weights alone


def test_seed_snippet_from_the_sbert_docs_runs():
    model = FakeSentenceTransformer()
    train_examples = [InputExample(texts=["My first sentence", "My second sentence"], label=0.8),
                      InputExample(texts=["Another pair", "Unrelated sentence"], label=0.3)]
    train_dataset = SentencesDataset(train_examples, model)
    train_dataloader = DataLoader(train_dataset, shuffle=True, batch_size=16)
    train_loss = losses.CosineSimilarityLoss(model)
    model.fit(train_objectives=[(train_dataloader, train_loss)], epochs=1, warmup_steps=100)


def test_a_dataloader_over_a_plain_list_of_examples_works_too():
    model = FakeSentenceTransformer()
    rows = fit(model, [(DataLoader(toy_pairs(8), shuffle=True, batch_size=4), losses.CosineSimilarityLoss(model))],
               show_progress_bar=False)
    assert rows[-1]["step"] == 2
