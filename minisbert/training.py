"""The training loop: AdamW, linear warmup then linear decay, gradient clipping, evaluation.

`fit(model, train_objectives=[(dataloader, loss)], ...)` keeps sentence-transformers' classic
signature. The STSb recipe it serves is SBERT section 3 "Training Details" (batch 16, Adam with lr
2e-5, linear warmup over 10% of the training data) applied to the regression objective as in
section 4.2. Each evaluation appends a row to metrics.csv; the best model by the evaluator's
primary metric is saved. Read next: evaluation.py, which produces that metric.
"""

import contextlib
import csv
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from minisbert.data import collate


@dataclass
class Precision:
    """How the forward pass runs: autocast `dtype` (None: plain float32) and the fp16 GradScaler."""

    device_type: str
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def mixed_precision(device: torch.device | str, enabled: bool) -> Precision:
    """The one place that picks the mixed-precision recipe for a device.

    bf16 where the hardware has it (CPU, CUDA since Ampere): it keeps fp32's exponent range, so
    gradients need no scaling. Otherwise fp16, whose narrow range flushes small gradients to zero
    unless a GradScaler multiplies the loss first. Losses compute themselves in fp32 either way.
    """
    device = torch.device(device)
    if not enabled:
        return Precision(device.type)
    if device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return Precision(device.type, torch.bfloat16)
    return Precision(device.type, torch.float16, torch.amp.GradScaler(device.type))


def param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on weights, none on biases and LayerNorm parameters.

    Pulling a LayerNorm gain or a bias towards 0 is no useful prior (BERT's recipe exempts them).
    LayerNorms are found by type, or by this project's naming (`norm`, `attn_norm`, ...) in case
    one is hand-written. A parameter reachable from several modules (one model inside several
    losses) is listed once.
    """
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for module_name, sub in module.named_modules():
            is_norm = isinstance(sub, nn.LayerNorm) or module_name.rsplit(".", 1)[-1].endswith("norm")
            for name, p in sub.named_parameters(recurse=False):
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    (no_decay if is_norm or name == "bias" else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def linear_warmup_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """lr multiplier for the update at optimizer step s (0-based):

        s / warmup_steps                                    for s < warmup_steps
        (total_steps - s) / (total_steps - warmup_steps)   otherwise, reaching 0 at s = total_steps

    So with warmup the first update uses lr 0 and the peak lr comes at s = warmup_steps; with
    warmup_steps = 0 the first update uses the full lr. This is the convention of Hugging Face's
    linear schedule. Call `scheduler.step()` once after each `optimizer.step()`.
    """
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return LambdaLR(optimizer, factor)


def _round_robin(train_objectives: list, steps: int):
    """For each of `steps` steps, yield [(loss, features, labels)]: one batch per objective.

    A dataloader that runs out early restarts (when steps_per_epoch exceeds its length).
    """
    iterators = [iter(dataloader) for dataloader, _ in train_objectives]
    for _ in range(steps):
        batches = []
        for i, (dataloader, loss) in enumerate(train_objectives):
            try:
                batch = next(iterators[i])
            except StopIteration:
                iterators[i] = iter(dataloader)
                batch = next(iterators[i])
            batches.append((loss, *batch))
        yield batches


def _update(optimizer, scheduler, params: list, max_grad_norm: float | None, scaler) -> None:
    """Clip the global gradient norm, apply the update and advance the lr schedule."""
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
    if max_grad_norm:
        nn.utils.clip_grad_norm_(params, max_grad_norm)
    if scaler is None:
        optimizer.step()
        scheduler.step()
        return
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    if scaler.get_scale() >= scale:  # a lowered scale means inf/NaN gradients: no update was made
        scheduler.step()


class _Progress:
    """What fit records at each evaluation point: the mean training loss since the last row,
    the lr, the evaluator's scores (a row of metrics.csv), and the best model so far."""

    def __init__(self, model, evaluator, output_path, save_best_model: bool, callback):
        self.model, self.evaluator, self.callback = model, evaluator, callback
        self.output_path = Path(output_path) if output_path is not None else None
        self.save_best = save_best_model and self.output_path is not None
        self.rows, self.best, self.last_step = [], None, None
        self._loss_sum, self._loss_steps = 0.0, 0

    def add_loss(self, value: float) -> None:
        self._loss_sum, self._loss_steps = self._loss_sum + value, self._loss_steps + 1

    def record(self, step: int, epoch: int, epoch_step: int, lr: float) -> None:
        row = {"step": step, "epoch": epoch, "loss": self._loss_sum / max(1, self._loss_steps), "lr": lr}
        self._loss_sum, self._loss_steps, self.last_step = 0.0, 0, step
        if self.evaluator is not None:
            row.update(self._evaluate(epoch, epoch_step))
        self.rows.append(row)
        if self.output_path is not None:
            self._write(row)

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
        if self.best is None or key > self.best:
            self.best = key
            if self.save_best:
                self.model.save(self.output_path)
        return result

    def _write(self, row: dict) -> None:
        self.output_path.mkdir(parents=True, exist_ok=True)
        first = len(self.rows) == 1  # a new run starts a new file
        with open(self.output_path / "metrics.csv", "w" if first else "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if first:
                writer.writeheader()
            writer.writerow(row)


def fit(model, train_objectives, evaluator=None, epochs: int = 1, steps_per_epoch: int | None = None,
        warmup_steps: int = 0, optimizer_class=torch.optim.AdamW, optimizer_params: dict | None = None,
        weight_decay: float = 0.01, evaluation_steps: int = 0, output_path=None, save_best_model: bool = True,
        max_grad_norm: float | None = 1.0, use_amp: bool = False, callback=None, show_progress_bar: bool = True,
        max_steps: int | None = None, seed: int | None = None) -> list[dict]:
    """Train `model` on [(dataloader, loss), ...]; returns the metrics rows (as in metrics.csv).

    Each step takes one batch from every objective in turn and backpropagates each loss; their
    gradients add up into one clipped AdamW update (sentence-transformers instead updates once per
    objective, with one optimizer each; for a single objective the two agree). An epoch is the
    shortest dataloader's length (or `steps_per_epoch`); `max_steps` cuts training short. The lr
    follows `linear_warmup_decay` over all steps, from optimizer_params["lr"] (default 2e-5).
    Evaluation runs every `evaluation_steps` steps (0: never) and at each epoch end; with an
    evaluator and `save_best_model`, `model.save(output_path)` keeps the best primary score,
    otherwise the final model is saved there. `callback(score, epoch, steps)` follows each
    evaluation. `use_amp` runs forward passes under autocast (see `mixed_precision`).
    """
    # 1. Data: batches are tokenized by the model being trained, as in the classic API.
    if seed is not None:
        torch.manual_seed(seed)  # also seeds the shuffling samplers, which draw from torch's RNG
    for dataloader, _ in train_objectives:
        dataloader.collate_fn = partial(collate, model=model)
    steps_per_epoch = steps_per_epoch or min(len(dataloader) for dataloader, _ in train_objectives)
    if steps_per_epoch == 0:
        raise ValueError("a training dataloader is empty")
    total_steps = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)

    # 2. Optimizer over the parameters of every loss (its model's and any head's), schedule, precision.
    device = model.device
    loss_modules = [loss.to(device) for _, loss in train_objectives]
    optimizer = optimizer_class(param_groups(loss_modules, weight_decay), **(optimizer_params or {"lr": 2e-5}))
    scheduler = linear_warmup_decay(optimizer, warmup_steps, total_steps)
    precision = mixed_precision(device, use_amp)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    progress = _Progress(model, evaluator, output_path, save_best_model, callback)
    bar = tqdm(total=total_steps, desc="Training", disable=not show_progress_bar)

    step = 0
    for epoch in range(epochs):
        steps_now = min(steps_per_epoch, total_steps - step)
        for epoch_step, batches in enumerate(_round_robin(train_objectives, steps_now), start=1):
            # 3. Forward in (mixed) precision, backward per objective: gradients accumulate.
            for loss_module in loss_modules:
                loss_module.train()  # the evaluator's encode() may have left eval mode on
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for loss_fn, features, labels in batches:
                features = [{k: t.to(device) for k, t in f.items()} for f in features]
                with precision.autocast():
                    loss = loss_fn(features, labels.to(device))
                (precision.scaler.scale(loss) if precision.scaler else loss).backward()
                step_loss += loss.item()

            # 4. One update with the lr this step was scheduled for.
            lr = scheduler.get_last_lr()[0]
            _update(optimizer, scheduler, params, max_grad_norm, precision.scaler)
            step += 1
            progress.add_loss(step_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")

            # 5. Evaluate (and maybe save) every evaluation_steps ...
            if evaluation_steps > 0 and step % evaluation_steps == 0:
                progress.record(step, epoch, epoch_step, lr)
        # ... and at the end of each epoch, unless that step was just evaluated.
        if progress.last_step != step:
            progress.record(step, epoch, -1, lr)
        if step >= total_steps:
            break
    bar.close()

    # 6. Without a best model to keep, the final one is the result.
    if output_path is not None and (evaluator is None or not save_best_model):
        model.save(output_path)
    return progress.rows
