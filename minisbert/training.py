"""The training loop: AdamW, linear warmup then linear decay, gradient clipping, evaluation.

`fit(model, train_objectives=[(dataloader, loss)], ...)` keeps sentence-transformers' classic
signature. The STSb recipe it serves is SBERT section 3 "Training Details" (batch 16, Adam with lr
2e-5, linear warmup over 10% of the training data) applied to the regression objective as in
section 4.2. Each evaluation appends a row to metrics.csv; the best model by the evaluator's
primary metric is saved. A step with a non-finite loss is skipped, and checkpoints (resume.py) let
a killed run continue. Read next: evaluation.py, which produces that metric.
"""

import csv
import logging
import math
import numbers
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from minisbert import distributed
from minisbert.config import is_int
from minisbert.data import collate
from minisbert.optimization import SparseEmbeddingGradients, linear_warmup_decay, param_groups
from minisbert.precision import Precision, mixed_precision, to_device
from minisbert.resume import Batches, resume_run, save_checkpoint, training_state

log = logging.getLogger(__name__)


def _forward_backward(loss_modules: list, batches: list, device, precision: Precision) -> float | None:
    """Forward in (mixed) precision, backward per objective: the gradients add up. Returns the
    summed loss, or None as soon as one loss is not finite (its gradients are then worthless)."""
    total = 0.0
    for loss_fn, (features, labels) in zip(loss_modules, batches):
        features = [to_device(f, device) for f in features]  # pinned, non-blocking to a GPU
        with precision.autocast():
            loss = loss_fn(features, labels.to(device))
        (precision.scaler.scale(loss) if precision.scaler else loss).backward()
        value = loss.item()
        if not math.isfinite(value):
            return None
        total += value
    return total


def _update(optimizer, scheduler, params: list, max_grad_norm: float | None, scaler) -> bool:
    """Clip the global gradient norm, apply the update and advance the lr schedule. Returns False,
    changing nothing, when the gradients are not finite (without a GradScaler, whose own
    response to an overflow, a skipped update and a lower scale, is routine in fp16)."""
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
    norm = nn.utils.clip_grad_norm_(params, max_grad_norm or math.inf)  # inf: measure only
    if scaler is None:
        if not torch.isfinite(norm):
            return False
        optimizer.step()
        scheduler.step()
        return True
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    if scaler.get_scale() >= scale:  # a lowered scale means inf/NaN gradients: no update was made
        scheduler.step()
    return True


class _NonFinite:
    """Counts the steps skipped for a non-finite loss or gradient norm; such a step changes no
    weight and does not advance the lr schedule. `limit` skipped steps in a row stop training."""

    def __init__(self, limit: int | None):
        self.limit, self.total, self.streak = limit, 0, 0

    def count(self, finite: bool, step: int) -> None:
        if finite:
            self.streak = 0
            return
        self.total, self.streak = self.total + 1, self.streak + 1
        log.warning("step %d: loss or gradients not finite; step skipped (%d in a row, %d in all)",
                    step, self.streak, self.total)
        if self.limit and self.streak >= self.limit:
            raise RuntimeError(
                f"training stopped at step {step}: the loss or gradients were not finite for "
                f"{self.streak} steps in a row (steps {step - self.streak + 1}-{step}). Those steps "
                "changed no weights; the best model and checkpoints saved so far come from before "
                "them. Try a lower learning rate, or check the data and the loss.")

    def state_dict(self) -> dict:
        return {"total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.streak = state["total"], 0


class _Progress:
    """What fit records at each evaluation point: the mean training loss since the last row,
    the lr, the evaluator's scores and the count of skipped steps (a row of metrics.csv), and the
    best model so far. `trusted` is False while the latest steps had non-finite losses: a model
    in that state is never saved as the best."""

    def __init__(self, model, evaluator, output_path, save_best_model: bool, callback):
        self.model, self.evaluator, self.callback = model, evaluator, callback
        self.output_path = Path(output_path) if output_path is not None else None
        self.save_best = save_best_model and self.output_path is not None
        self.rows, self.best, self.trusted = [], None, True
        self._loss_sum, self._loss_steps = 0.0, 0

    def add_loss(self, value: float) -> None:
        self._loss_sum, self._loss_steps = self._loss_sum + value, self._loss_steps + 1

    def record(self, step: int, epoch: int, epoch_step: int, lr: float, skipped: int) -> None:
        loss = self._loss_sum / self._loss_steps if self._loss_steps else math.nan  # all skipped
        row = {"step": step, "epoch": epoch, "loss": loss, "lr": lr}
        self._loss_sum, self._loss_steps = 0.0, 0
        if self.evaluator is not None:
            row.update(self._evaluate(epoch, epoch_step))
        row["nonfinite_steps"] = skipped
        self.rows.append(row)
        if self.output_path is not None:
            self._write(self.rows[-1:], new_file=len(self.rows) == 1)  # a new run, a new file

    def _evaluate(self, epoch: int, epoch_step: int) -> dict:
        eval_path = self.output_path / "eval" if self.output_path is not None else None
        result = self.evaluator(self.model, output_path=eval_path, epoch=epoch, steps=epoch_step)
        if isinstance(result, dict):
            score = result[getattr(self.evaluator, "primary_metric", "spearman_cosine")]
        else:  # evaluators written for older sentence-transformers return one float
            score, result = float(result), {"score": float(result)}
        if self.callback is not None:
            self.callback(score, epoch, epoch_step)
        key = -math.inf if math.isnan(score) else score  # a NaN score never beats a real one
        if self.trusted and (self.best is None or key > self.best):
            self.best = key
            if self.save_best:
                self.model.save(self.output_path)
        # Plain floats (not numpy's), so that a checkpoint of the rows loads with weights_only.
        return {k: float(v) if isinstance(v, numbers.Real) else v for k, v in result.items()}

    def _write(self, rows: list[dict], new_file: bool) -> None:
        self.output_path.mkdir(parents=True, exist_ok=True)
        with open(self.output_path / "metrics.csv", "w" if new_file else "a", newline="",
                  encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new_file:
                writer.writeheader()
            writer.writerows(rows)

    def state_dict(self) -> dict:
        return {"rows": self.rows, "best": self.best, "loss_sum": self._loss_sum,
                "loss_steps": self._loss_steps}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint; metrics.csv goes back to the rows it had then."""
        self.rows, self.best = list(state["rows"]), state["best"]
        self._loss_sum, self._loss_steps = state["loss_sum"], state["loss_steps"]
        if self.output_path is not None and self.rows:
            self._write(self.rows, new_file=True)


def _check_folder(argument: str, path) -> None:
    """NotADirectoryError if `path` is a file or lies under one; nothing is created."""
    if path is None:
        return
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"fit: {argument}={str(path)!r} cannot be a folder: "
                                 f"{existing} is a file")


def _check_counts(**counts) -> None:
    """Each setting an int >= its minimum (None allowed where listed as such)."""
    for name, (value, minimum) in counts.items():
        if value is None and name in ("steps_per_epoch", "max_steps", "checkpoint_save_total_limit"):
            continue
        if not is_int(value) or value < minimum:
            raise ValueError(f"fit: {name}={value!r} must be an int >= {minimum}")


def fit(model, train_objectives, evaluator=None, epochs: int = 1, steps_per_epoch: int | None = None,
        scheduler: str = "WarmupLinear", warmup_steps: int = 0, optimizer_class=torch.optim.AdamW, optimizer_params: dict | None = None,
        weight_decay: float = 0.01, evaluation_steps: int = 0, output_path=None, save_best_model: bool = True,
        max_grad_norm: float | None = 1.0, use_amp: bool = False, callback=None, show_progress_bar: bool = True,
        max_steps: int | None = None, seed: int | None = None, checkpoint_path=None,
        checkpoint_save_steps: int = 500, checkpoint_save_total_limit: int | None = 0,
        resume_from_checkpoint=None, max_nonfinite_steps: int | None = 5) -> list[dict]:
    """Train `model` on [(dataloader, loss), ...]; returns the metrics rows (as in metrics.csv).

    Each step takes one batch from every objective in turn and backpropagates each loss; their
    gradients add up into one clipped AdamW update (sentence-transformers instead updates once per
    objective, with one optimizer each; for a single objective the two agree). An epoch is the
    shortest dataloader's length (or `steps_per_epoch`); `max_steps` cuts training short. The lr
    follows `linear_warmup_decay` over all steps, from optimizer_params["lr"] (default 2e-5):
    sentence-transformers' "WarmupLinear", the one `scheduler` there is here.
    Evaluation runs every `evaluation_steps` steps of an epoch (0: never) and at its end; with an
    evaluator and `save_best_model`, `model.save(output_path)` keeps the best primary score,
    otherwise the final model is saved there. `callback(score, epoch, steps)` follows each
    evaluation. `use_amp` runs forward passes under autocast (see `mixed_precision`).

    With `checkpoint_path`, every `checkpoint_save_steps` steps a checkpoint-<step> folder is
    saved there (see resume.py), keeping the newest `checkpoint_save_total_limit` (0: all).
    `resume_from_checkpoint` (a checkpoint folder, or True for the newest under checkpoint_path)
    continues a run with the same arguments so that it ends as if never interrupted. A step whose
    loss or gradients are not finite is skipped and counted (the rows' `nonfinite_steps`);
    `max_nonfinite_steps` skipped in a row (None: no limit) raise a RuntimeError.

    Under torchrun (see distributed.py) each process trains on its share of the data and the
    gradients are averaged; rank 0 alone evaluates, calls `callback`, writes metrics.csv, the
    model and checkpoints (the other ranks' rows have the loss and lr only). Resuming needs one
    process. Give a single objective whose dataloader has a DistributedSampler.
    """
    main = distributed.is_main()
    _check_counts(epochs=(epochs, 1), steps_per_epoch=(steps_per_epoch, 1), max_steps=(max_steps, 1),
                  warmup_steps=(warmup_steps, 0), evaluation_steps=(evaluation_steps, 0),
                  checkpoint_save_steps=(checkpoint_save_steps, 0),
                  checkpoint_save_total_limit=(checkpoint_save_total_limit, 0))
    if str(scheduler).lower() != "warmuplinear":
        raise ValueError(f"fit: scheduler={scheduler!r}; minisbert has one schedule, WarmupLinear "
                         f"(linear warmup, then linear decay to 0)")
    for name, folder in (("output_path", output_path), ("checkpoint_path", checkpoint_path)):
        _check_folder(name, folder)  # now, not after an epoch of training
    if distributed.world_size() > 1 and (resume_from_checkpoint or len(train_objectives) != 1):
        raise ValueError("under torchrun, fit trains one objective and does not resume from a "
                         "checkpoint (its state is one process's); resume with a single process")
    # 1. Data: batches are tokenized by the model being trained, as in the classic API.
    if seed is not None:
        # Also seeds the shuffling samplers, which draw from torch's RNG; each rank its own dropout.
        torch.manual_seed(seed + distributed.rank())
    for dataloader, _ in train_objectives:
        dataloader.collate_fn = partial(collate, model=model)
    steps_per_epoch = steps_per_epoch or min(len(dataloader) for dataloader, _ in train_objectives)
    if steps_per_epoch == 0:
        raise ValueError("a training dataloader is empty")
    total_steps = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    batches = Batches([dataloader for dataloader, _ in train_objectives])

    # 2. Optimizer over the parameters of every loss (its model's and any head's), schedule, precision.
    device = model.device
    loss_modules = [loss.to(device) for _, loss in train_objectives]
    options = dict(optimizer_params or {"lr": 2e-5})
    if optimizer_class is torch.optim.AdamW and device.type in ("cpu", "cuda"):
        # One fused kernel for the whole update instead of a loop over tensors: the same math,
        # measured 1.17x more training steps/s in fp32 and 1.29x with AMP on CPU (benchmarks/).
        options.setdefault("fused", True)
    optimizer = optimizer_class(param_groups(loss_modules, weight_decay), **options)
    scheduler = linear_warmup_decay(optimizer, warmup_steps, total_steps)
    precision = mixed_precision(device, use_amp)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    trained = [distributed.wrap(loss) for loss in loss_modules]  # under torchrun: DDP, else as is
    progress = _Progress(model, evaluator if main else None, output_path if main else None,
                         save_best_model, callback if main else None)
    nonfinite = _NonFinite(max_nonfinite_steps)

    # 3. What a checkpoint holds, and where a resumed run continues (step 0 for a new one).
    # A resumed run must have the same settings: its optimizer state comes from the checkpoint,
    # so a changed lr or loss would be silently ignored or mixed in. (The seed may differ: the
    # random generators' states are restored too.)
    run = {"processes": distributed.world_size(),  # first: it changes steps_per_epoch too
           "epochs": epochs, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
           "objectives": len(train_objectives), "amp": str(precision.dtype),
           "losses": [type(loss).__name__ for loss in loss_modules],
           "optimizer": optimizer_class.__name__, "lr": options.get("lr"),
           "warmup_steps": warmup_steps, "weight_decay": weight_decay,
           "max_grad_norm": max_grad_norm}
    parts = {"modules": nn.ModuleList(loss_modules), "optimizer": optimizer, "scheduler": scheduler,
             "scaler": precision.scaler, "progress": progress, "nonfinite": nonfinite, "data": batches}
    step = resume_run(resume_from_checkpoint, checkpoint_path, run, parts) if resume_from_checkpoint else 0

    bar = tqdm(total=total_steps, initial=step, desc="Training", disable=not (show_progress_bar and main))
    with bar, SparseEmbeddingGradients(loss_modules, device) as embedding_gradients:
        while step < total_steps:
            epoch, epoch_step = divmod(step, steps_per_epoch)
            epoch_steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
            # 4. Forward and backward (every loss module in train mode: the evaluator's encode()
            #    may have left eval mode on), then one update with the lr scheduled for this step;
            #    a non-finite loss or gradient skips the update.
            for loss_module in loss_modules:
                loss_module.train()
            if epoch_step == 0:
                distributed.set_epoch([dataloader for dataloader, _ in train_objectives], epoch)
            optimizer.zero_grad(set_to_none=True)
            step_loss = _forward_backward(trained, batches.next(), device, precision)
            embedding_gradients.densify()
            step_loss = distributed.average(step_loss)  # all ranks log, and skip steps, alike
            lr = scheduler.get_last_lr()[0]
            finite = step_loss is not None and _update(optimizer, scheduler, params, max_grad_norm,
                                                       precision.scaler)
            step, epoch_step = step + 1, epoch_step + 1
            if not finite:
                optimizer.zero_grad(set_to_none=True)
            nonfinite.count(finite, step)  # raises after max_nonfinite_steps in a row
            progress.trusted = finite
            if finite:
                progress.add_loss(step_loss)
                bar.set_postfix(loss=f"{step_loss:.4f}")
            bar.update(1)

            # 5. Evaluate (and maybe save the best) every evaluation_steps and at each epoch end.
            if evaluation_steps > 0 and epoch_step % evaluation_steps == 0:  # from the epoch start
                progress.record(step, epoch, epoch_step, lr, nonfinite.total)
            elif epoch_step == epoch_steps:
                progress.record(step, epoch, -1, lr, nonfinite.total)
            if epoch_step == epoch_steps:
                batches.new_epoch()
            # 6. Checkpoint, but never a state whose latest loss was not finite.
            if checkpoint_path is not None and checkpoint_save_steps > 0 and finite \
                    and step % checkpoint_save_steps == 0:
                if main:
                    save_checkpoint(checkpoint_path, step, model, training_state(step, run, parts),
                                    checkpoint_save_total_limit)
                distributed.barrier()

    # 7. Without a best model to keep, the final one is the result.
    if main and output_path is not None and (evaluator is None or not save_best_model):
        model.save(output_path)
    distributed.barrier()  # no rank returns before rank 0's folder is whole
    return progress.rows
