"""What AdamW updates, and how: weight-decay groups, the lr schedule, sparse embedding gradients.

The SBERT recipe (section 3, "Training Details") is Adam with lr 2e-5 and a linear warmup over 10%
of the training data; weight decay spares biases and LayerNorms, as BERT's own optimizer does. The
last piece is speed only: embedding tables backpropagate as sparse rows, reach the optimizer dense.
Read next: training.py, the loop that uses them.
"""

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from minisbert import distributed


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


class SparseEmbeddingGradients:
    """Backpropagate into embedding tables as sparse rows, then hand the optimizer a dense gradient
    kept in one buffer per table that is reused from step to step.

    A batch looks up a few hundred of BERT's 30522 word vectors, so the gradient of the table is
    zero elsewhere. PyTorch's dense embedding backward still allocates and zero-fills a whole
    table (47 MB for all-MiniLM-L6-v2) for every lookup, here two per step, one per sentence
    column; on CPU that was 15% of a training step, mostly the page faults of memory fresh from
    the OS. With `sparse=True` the backward yields only the rows looked up; `densify()` adds them
    into the buffer. The optimizer sees the same gradient as before, up to the order of the
    additions (AdamW needs it dense: its moments move every row that was ever looked up). Tables
    already `sparse=True` get the same treatment; on exit each table's gradient is dense and its
    flag as it was. Only on CPU and CUDA, not for fp16 tables on CPU, and not under torchrun, where
    DDP averages the gradients itself: there the tables keep their dense backward.
    """

    def __init__(self, modules: list[nn.Module], device: torch.device):
        on = device.type in ("cpu", "cuda") and distributed.world_size() == 1
        # CPU torch has no fp16 kernel for summing sparse rows; fp16 tables stay dense there.
        tables = {id(m): m for module in modules for m in module.modules()
                  if on and isinstance(m, nn.Embedding) and m.weight.requires_grad
                  and not (device.type == "cpu" and m.weight.dtype == torch.float16)}
        self.tables, self.buffers = list(tables.values()), {}
        self.was_sparse = [table.sparse for table in self.tables]

    def __enter__(self):
        for table in self.tables:
            table.sparse = True
        return self

    def __exit__(self, *exc_info):
        self.densify()  # even after an exception: no sparse gradient is left behind
        for table, was_sparse in zip(self.tables, self.was_sparse):
            table.sparse = was_sparse

    def densify(self) -> None:
        """Replace each table's sparse gradient by the same gradient, dense, in its buffer."""
        for table in self.tables:
            grad = table.weight.grad
            if grad is None or not grad.is_sparse:
                continue
            buffer = self.buffers.get(table)
            if buffer is None:
                buffer = self.buffers[table] = torch.zeros_like(table.weight)
            else:
                buffer.zero_()
            table.weight.grad = buffer.add_(grad)  # repeated rows add up
