"""Device and precision in one place: which number format each pass runs in, and moving batches.

bf16 keeps fp32's 8-bit exponent with a 7-bit mantissa; fp16 has a 10-bit mantissa but a 5-bit
exponent, so small gradients underflow unless the loss is scaled first (Micikevicius et al. 2018,
"Mixed precision training", section 3.2). Inference casts the weights once (`weights_as`);
training keeps fp32 master weights and runs the forward pass under autocast (`mixed_precision`).
Read next: sentence_transformer.py (encode's `precision=`), training.py (`use_amp`).
"""

import contextlib
from dataclasses import dataclass

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NAMES = {dtype: name for name, dtype in PRECISIONS.items()}


def resolve_dtype(precision) -> torch.dtype:
    """"fp32" / "bf16" / "fp16" (or the torch dtype itself) -> torch dtype; None means fp32."""
    if precision is None:
        return torch.float32
    if isinstance(precision, torch.dtype) and precision in NAMES:
        return precision
    if isinstance(precision, str) and precision in PRECISIONS:
        return PRECISIONS[precision]
    raise ValueError(f"precision={precision!r}; choose one of {', '.join(PRECISIONS)} or None")


def precision_name(precision) -> str:
    """The short name ("fp32", "bf16", "fp16") of anything resolve_dtype accepts."""
    return NAMES[resolve_dtype(precision)]


def supports_bf16(device) -> bool:
    """Whether bf16 runs natively: every CPU build of torch has bf16 kernels (fast with AVX512-BF16
    or AMX), CUDA GPUs from Ampere on; emulated bf16 on older GPUs is slower than fp16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu"


def autocast(device, precision=None):
    """A context running matrix products in `precision` on `device`; plain fp32 for fp32/None."""
    dtype = resolve_dtype(precision)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@dataclass
class Precision:
    """The mixed-precision recipe of a training run: autocast `dtype` (float32: none) and, for
    fp16 only, the GradScaler that multiplies the loss so small gradients survive."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    scaler: torch.amp.GradScaler | None = None

    def autocast(self):
        return autocast(self.device, self.dtype)


def mixed_precision(device, enabled: bool = True) -> Precision:
    """The AMP choice for training: bf16 autocast where bf16 is native (CPU, Ampere and newer
    GPUs), which needs no loss scaling; else fp16 autocast with a GradScaler."""
    device = torch.device(device)
    if not enabled:
        return Precision(device)
    if supports_bf16(device):
        return Precision(device, torch.bfloat16)
    return Precision(device, torch.float16, torch.amp.GradScaler(device.type))


def to_device(features: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """Move a batch of tensors to `device`. To a GPU they go from page-locked (pinned) memory
    without blocking, so the copy overlaps with the work already queued on the GPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return {k: v.to(device) for k, v in features.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in features.items()}


class WeightCache:
    """Low-precision copies of a list of tensors, made once and reused until a tensor changes
    (an optimizer step or load_state_dict bumps its version; .to(device) gives it new storage)."""

    def __init__(self):
        self.key, self.copies = None, []

    def get(self, tensors: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
        key = (dtype, tuple((t.device, t.data_ptr(), t._version) for t in tensors))
        if key != self.key:
            self.copies = []  # free the old copies before making new ones
            with torch.no_grad():
                self.copies = [t.detach().to(dtype) for t in tensors]
            self.key = key
        return self.copies


@contextlib.contextmanager
def weights_as(module: torch.nn.Module, dtype: torch.dtype, cache: WeightCache | None = None):
    """Run the body with the module's floating-point parameters and buffers in `dtype`, then put
    the originals back. For inference this beats autocast, which under inference_mode casts every
    weight again in every batch, and which keeps LayerNorm and GELU in fp32 at the cost of casting
    activations back and forth. Not for training (updates of bf16 weights round away), and the
    module must not be used by another thread meanwhile."""
    tensors = [t for t in (*module.parameters(), *module.buffers())
               if t.is_floating_point() and t.dtype != dtype]
    if not tensors:
        yield module
        return
    originals = [t.data for t in tensors]
    copies = cache.get(tensors, dtype) if cache is not None else \
        [t.detach().to(dtype) for t in tensors]
    try:
        for t, copy in zip(tensors, copies):
            t.data = copy
        yield module
    finally:
        for t, original in zip(tensors, originals):
            t.data = original
