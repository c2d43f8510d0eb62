"""The training loop: lr schedule by hand, weight-decay groups, precision, logging, saving."""

import csv
import math
import random
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from minisbert import losses
from minisbert.data import InputExample, SentencesDataset, collate
from minisbert.evaluation import EmbeddingSimilarityEvaluator
from minisbert.precision import mixed_precision
from minisbert.optimization import SparseEmbeddingGradients, linear_warmup_decay, param_groups
from minisbert.training import fit
from fake_model import FakeSentenceTransformer, ScriptedEvaluator

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
    assert (off.dtype, off.scaler) == (torch.float32, None)
    cpu = mixed_precision("cpu", enabled=True)
    assert (cpu.dtype, cpu.scaler) == (torch.bfloat16, None)
    with cpu.autocast():
        assert torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **kwargs: False)
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


def test_metrics_rows_hold_the_mean_loss_since_the_last_row_and_the_lr():
    model = FakeSentenceTransformer()
    loader = DataLoader(toy_pairs(12), batch_size=4)  # 3 steps per epoch
    rows = fit(model, [(loader, ScriptedLoss([1, 2, 3, 4, 5, 6]))], evaluator=ScriptedEvaluator([.1, .2, .3, .4]),
               epochs=2, evaluation_steps=2, optimizer_params={"lr": 1.0}, show_progress_bar=False)
    # evaluation_steps counts from each epoch's start, as in sentence-transformers: evaluations
    # at step 2, at the end of epoch 0 (step 3), at step 5 (the 2nd of epoch 1) and at its end.
    assert [(r["step"], r["epoch"]) for r in rows] == [(2, 0), (3, 0), (5, 1), (6, 1)]
    assert [r["loss"] for r in rows] == [1.5, 3.0, 4.5, 6.0]
    assert [r["lr"] for r in rows] == pytest.approx([5 / 6, 4 / 6, 2 / 6, 1 / 6])  # lr of the last update


@pytest.mark.parametrize("setting, message", [
    ({"epochs": 0}, "epochs=0 must be an int >= 1"), ({"epochs": 1.5}, "epochs=1.5"),
    ({"steps_per_epoch": 0}, "steps_per_epoch=0"), ({"max_steps": 0}, "max_steps=0"),
    ({"warmup_steps": -1}, "warmup_steps=-1 must be an int >= 0"),
    ({"evaluation_steps": -2}, "evaluation_steps=-2"),
    ({"checkpoint_save_total_limit": -1}, "checkpoint_save_total_limit=-1"),
    ({"scheduler": "WarmupCosine"}, "scheduler='WarmupCosine'.*WarmupLinear"),
])
def test_settings_out_of_range_are_refused_before_any_step(setting, message):
    model = FakeSentenceTransformer()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        fit(model, [(DataLoader(toy_pairs(8), batch_size=4), losses.CosineSimilarityLoss(model))],
            show_progress_bar=False, **setting)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_arguments_in_sentence_transformers_order_mean_the_same():
    # fit(train_objectives, evaluator, epochs, steps_per_epoch, scheduler, warmup_steps, ...)
    def run(*args, **kwargs):
        torch.manual_seed(0)
        model = FakeSentenceTransformer()
        loader = DataLoader(toy_pairs(8), batch_size=4)
        return fit(model, [(loader, losses.CosineSimilarityLoss(model))], *args,
                   show_progress_bar=False, **kwargs)
    assert run(None, 2, None, "warmuplinear", 3) == run(epochs=2, warmup_steps=3)


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
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "step,epoch,loss,lr,nonfinite_steps"


@pytest.mark.parametrize("argument", ["output_path", "checkpoint_path"])
@pytest.mark.parametrize("below", ["", "run"])
def test_a_file_where_fit_would_write_a_folder_fails_before_any_step(tmp_path, argument, below):
    (tmp_path / "notes.txt").write_text("mine")
    model = FakeSentenceTransformer()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NotADirectoryError, match=f"{argument}=.*notes.txt.* is a file"):
        fit(model, [(DataLoader(toy_pairs(8), batch_size=4), losses.CosineSimilarityLoss(model))],
            show_progress_bar=False, **{argument: tmp_path / "notes.txt" / below})
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert (tmp_path / "notes.txt").read_text() == "mine"


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


# --- non-finite losses ------------------------------------------------------------------------

class BreakAt(nn.Module):
    """CosineSimilarityLoss, but at the listed steps (or from step `start` on) the loss is NaN, or
    with `gradient=True` the loss stays finite and its gradient is NaN."""

    def __init__(self, model, steps=(), start=None, gradient=False):
        super().__init__()
        self.loss, self.model = losses.CosineSimilarityLoss(model), model
        self.steps, self.start, self.gradient, self.calls = set(steps), start, gradient, 0

    def forward(self, features, labels):
        self.calls += 1
        loss = self.loss(features, labels)
        if self.calls in self.steps or (self.start is not None and self.calls >= self.start):
            if self.gradient:  # d sqrt(|x|)/dx at 0 is inf * 0 = NaN
                return loss + (self.model.proj.weight * 0).abs().sqrt().sum()
            return loss * float("nan")
        return loss


class WeightsAtEachEvaluation:
    """Scores 0.1, 0.2, ... (each evaluation looks best) and keeps a copy of the weights."""
    primary_metric = "spearman_cosine"

    def __init__(self):
        self.weights = []

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        self.weights.append(model.proj.weight.detach().clone())
        return {"spearman_cosine": 0.1 * len(self.weights)}


@pytest.mark.parametrize("gradient", [False, True], ids=["nan_loss", "nan_gradient"])
def test_a_non_finite_step_changes_no_weight_and_no_lr_and_is_counted(gradient):
    model = FakeSentenceTransformer()
    evaluator = WeightsAtEachEvaluation()
    rows = fit(model, [(DataLoader(toy_pairs(24), batch_size=4), BreakAt(model, [3], gradient=gradient))],
               evaluator=evaluator, evaluation_steps=1, warmup_steps=0,
               optimizer_params={"lr": 1e-2}, show_progress_bar=False)
    assert [r["nonfinite_steps"] for r in rows] == [0, 0, 1, 1, 1, 1]
    assert torch.equal(evaluator.weights[1], evaluator.weights[2])  # no update, no weight decay
    assert not torch.equal(evaluator.weights[2], evaluator.weights[3])  # training went on
    lrs = [r["lr"] for r in rows]
    assert lrs[3] == lrs[2] and lrs == pytest.approx([1e-2 * k / 6 for k in (6, 5, 4, 4, 3, 2)])
    assert all(math.isfinite(r["loss"]) for i, r in enumerate(rows) if i != 2)
    assert math.isnan(rows[2]["loss"])  # the row of step 3 alone had no finite loss
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_steps_in_a_row_stop_training_and_keep_the_best_model_from_before(tmp_path):
    model = FakeSentenceTransformer()
    loader = DataLoader(toy_pairs(40), batch_size=4)
    with pytest.raises(RuntimeError, match=r"stopped at step 6: .* 3 steps in a row \(steps 4-6\)"):
        fit(model, [(loader, BreakAt(model, start=4))], evaluator=WeightsAtEachEvaluation(),
            evaluation_steps=1, output_path=tmp_path / "best", checkpoint_path=tmp_path / "ckpt",
            checkpoint_save_steps=1, max_nonfinite_steps=3, show_progress_bar=False)
    # Each evaluation scored higher, yet only those of steps 1-3 saved a best model or checkpoint.
    assert model.saved.count(tmp_path / "best") == 3
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [f"checkpoint-{i}" for i in (1, 2, 3)]
    saved = torch.load(tmp_path / "best" / "fake_model.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    table = (tmp_path / "best" / "metrics.csv").read_text().splitlines()
    assert [line.rsplit(",", 1)[1] for line in table[1:]] == ["0", "0", "0", "1", "2"]


@pytest.mark.parametrize("given, used", [({"lr": 1e-3}, True), ({"lr": 1e-3, "fused": False}, False)])
def test_adamw_runs_fused_unless_told_otherwise(monkeypatch, given, used):
    seen = []
    original = torch.optim.AdamW.__init__

    def spy(self, params, **kwargs):
        seen.append(kwargs)
        original(self, params, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", spy)
    model = FakeSentenceTransformer()
    fit(model, [(DataLoader(toy_pairs(8), batch_size=4), losses.CosineSimilarityLoss(model))],
        optimizer_params=given, show_progress_bar=False)
    assert seen == [{**given, "fused": used}]


def test_fit_trains_a_freshly_loaded_model_with_dropout_and_evaluates_without(tiny_model):
    # A loaded model starts in eval mode; fit must switch it to training for its steps (dropout
    # on), while the evaluator's encode runs in eval mode.
    assert not tiny_model.training
    modes = []
    tiny_model[0].register_forward_pre_hook(lambda module, args: modes.append(module.training))
    evaluator = EmbeddingSimilarityEvaluator(["the dog"], ["a cat"], [0.5])
    loader = DataLoader(toy_pairs(8), batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # one pair: the correlation is NaN
        fit(tiny_model, [(loader, losses.CosineSimilarityLoss(tiny_model))], evaluator=evaluator,
            evaluation_steps=1, show_progress_bar=False)
    # Each of the 2 steps runs the network twice (u, then v), then the evaluator encodes once.
    assert modes == [True, True, False, True, True, False]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_model_in_half_precision_trains_on_cpu(tiny_model, dtype):
    tiny_model.to(dtype)  # CPU torch cannot add fp16 sparse rows: those tables stay dense
    before = tiny_model[0].encoder.embeddings.word.weight.detach().clone()
    rows = fit(tiny_model, [(DataLoader(toy_pairs(8), batch_size=4),
                             losses.CosineSimilarityLoss(tiny_model))],
               optimizer_params={"lr": 1e-2}, show_progress_bar=False)
    after = tiny_model[0].encoder.embeddings.word.weight
    assert math.isfinite(rows[-1]["loss"]) and after.dtype == dtype
    assert not torch.equal(before, after) and not after.is_sparse and not after.grad.is_sparse


def test_sparse_embedding_gradients_equal_the_dense_ones_in_one_reused_buffer(tiny_model):
    loss = losses.CosineSimilarityLoss(tiny_model).eval()  # no dropout: both passes alike
    word = tiny_model[0].encoder.embeddings.word
    batches = [collate(toy_pairs(4, seed=seed), tiny_model) for seed in (0, 1)]

    def gradients(features, labels) -> dict:
        tiny_model.zero_grad(set_to_none=True)
        loss(features, labels).backward()
        return {name: p.grad.clone() for name, p in tiny_model.named_parameters() if p.grad is not None}

    dense = [gradients(*batch) for batch in batches]
    buffers = []
    with SparseEmbeddingGradients([loss, loss], tiny_model.device) as embedding_gradients:  # one model, twice
        for batch, expected in zip(batches, dense):
            tiny_model.zero_grad(set_to_none=True)
            loss(*batch).backward()
            assert word.weight.grad.is_sparse
            embedding_gradients.densify()
            got = {name: p.grad for name, p in tiny_model.named_parameters() if p.grad is not None}
            assert got.keys() == expected.keys()
            for name in expected:
                torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)
            buffers.append(word.weight.grad.data_ptr())
    assert buffers[0] == buffers[1]  # the second step wrote into the first step's buffer
    assert not any(m.sparse for m in tiny_model.modules() if isinstance(m, nn.Embedding))


class FailAt(nn.Module):
    """A loss that raises at its `at`-th call (the objective before it has backpropagated)."""

    def __init__(self, loss: nn.Module, at: int):
        super().__init__()
        self.loss, self.at, self.calls = loss, at, 0

    def forward(self, features, labels):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.loss(features, labels)


@pytest.mark.parametrize("user_sparse", [False, True])
def test_fit_leaves_the_embedding_tables_as_they_were_with_dense_gradients(tiny_model, user_sparse):
    tables = [m for m in tiny_model.modules() if isinstance(m, nn.Embedding)]
    tables[0].sparse = user_sparse  # a table the user made sparse trains too
    loss = losses.CosineSimilarityLoss(tiny_model)
    objectives = [(DataLoader(toy_pairs(8), batch_size=4), loss),
                  (DataLoader(toy_pairs(8, seed=1), batch_size=4), FailAt(loss, at=2))]
    with pytest.raises(KeyboardInterrupt):  # stopped in step 2, between two backward passes
        fit(tiny_model, objectives, show_progress_bar=False)
    assert [m.sparse for m in tables] == [user_sparse] + [False] * (len(tables) - 1)
    assert all(not p.grad.is_sparse for p in tiny_model.parameters() if p.grad is not None)
    nn.utils.clip_grad_norm_(tiny_model.parameters(), 1.0)  # works on what fit left behind
