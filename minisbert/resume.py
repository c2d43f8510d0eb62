"""Checkpoints of a training run, and resuming from one exactly where the run stopped.

A checkpoint is a folder `checkpoint-<step>` under fit's `checkpoint_path`: the model as
`model.save` writes it (so the folder loads as a model), plus `training_state.pt` holding what a
continuation needs to end with the same weights as an uninterrupted run: the weights of every loss
(the model and any head), the optimizer, lr schedule and GradScaler, the random number generators
and the position in the data. Each checkpoint is built in a temporary folder and renamed into
place, so a crash while saving leaves the previous one whole. `training_state.pt` holds only
tensors, numbers, strings, lists and dicts and is read with `torch.load(weights_only=True)`:
loading a checkpoint never runs code. Read next: training.py, whose loop saves and restores these.
"""

import logging
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .layout import replace_folder

STATE_FILE = "training_state.pt"
FORMAT = 2  # bumped when the layout of training_state.pt changes (2: every RNG at epoch starts)
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
log = logging.getLogger(__name__)


# --- random number generators ------------------------------------------------------------------

def rng_state() -> dict:
    """Python's, numpy's and torch's generators (CPU, and CUDA once used), as plain values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "torch": torch.get_rng_state(), "cuda": []}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])


# --- the position in the data ------------------------------------------------------------------

def _sampling_rng(dataloader) -> dict:
    """The generators a DataLoader may draw its order from: Python's, numpy's and torch's global
    ones (a shuffling DataLoader without a generator seeds its sampler from torch's; a sampler of
    one's own may use `random`), and any torch.Generator it was given."""
    generators = (dataloader.generator, getattr(dataloader.sampler, "generator", None))
    return {**rng_state(), "generators": [g.get_state() if isinstance(g, torch.Generator)
                                          else None for g in generators]}


def _set_sampling_rng(dataloader, state: dict) -> None:
    set_rng_state(state)
    generators = (dataloader.generator, getattr(dataloader.sampler, "generator", None))
    for g, g_state in zip(generators, state["generators"]):
        if isinstance(g, torch.Generator) and g_state is not None:
            g.set_state(g_state)


class Batches:
    """One batch from every objective per step; a dataloader that runs out starts again.

    Resuming mid-epoch must give the batches the interrupted run would have had next, in the same
    shuffled order. A DataLoader draws its whole order from the generators when an iterator starts
    (iter() and the first batch), so we record those generators' states just before starting each
    iterator, and count the batches taken from it since. To resume, each iterator is restarted from
    its recorded state and the batches already used are drawn and dropped; then the generators are
    set to their states at the checkpoint (set_rng_state), which the replay does not disturb.
    This needs no sampler of our own and works for any sampler that draws its order from Python's,
    numpy's or torch's generator or from its own torch.Generator, as DataLoader's built-in ones do.
    """

    def __init__(self, dataloaders: list):
        self.dataloaders = dataloaders
        self.new_epoch()

    def new_epoch(self) -> None:
        """Every dataloader starts over (a fresh shuffle) at its next batch."""
        n = len(self.dataloaders)
        self.iterators, self.starts, self.taken = [None] * n, [None] * n, [0] * n

    def next(self) -> list:
        return [self._next(i) for i in range(len(self.dataloaders))]

    def _next(self, i: int):
        if self.iterators[i] is not None:
            try:
                batch = next(self.iterators[i])
                self.taken[i] += 1
                return batch
            except StopIteration:
                pass
        self.starts[i] = _sampling_rng(self.dataloaders[i])
        self.iterators[i] = iter(self.dataloaders[i])
        self.taken[i] = 1
        return next(self.iterators[i])

    def state_dict(self) -> dict:
        return {"starts": list(self.starts), "taken": list(self.taken)}

    def load_state_dict(self, state: dict) -> None:
        self.new_epoch()
        for i, (start, taken) in enumerate(zip(state["starts"], state["taken"])):
            if start is None:
                continue
            _set_sampling_rng(self.dataloaders[i], start)
            self.starts[i], self.iterators[i] = start, iter(self.dataloaders[i])
            for _ in range(taken):
                next(self.iterators[i])
            self.taken[i] = taken


# --- checkpoint folders ------------------------------------------------------------------------

def checkpoints(folder) -> list[Path]:
    """The complete checkpoint-<step> folders under `folder`, oldest step first."""
    folder = Path(folder)
    found = [p for p in folder.iterdir() if CHECKPOINT_NAME.fullmatch(p.name)
             and (p / STATE_FILE).is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(CHECKPOINT_NAME.fullmatch(p.name).group(1)))


def save_checkpoint(folder, step: int, model, state: dict, total_limit: int | None = None) -> Path:
    """Write checkpoint-<step> (the model, then training_state.pt) beside the others, atomically;
    then keep only the newest `total_limit` (None or 0: all)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"checkpoint-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=folder))
    try:
        model.save(tmp)
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the newest checkpoint
        replace_folder(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    old = [p for p in checkpoints(folder) if p != final]
    for path in old[:max(0, len(old) + 1 - total_limit)] if total_limit else []:
        trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=folder))
        os.replace(path, trash / path.name)  # gone from the list at once, however rmtree ends
        shutil.rmtree(trash)
    return final


def find_checkpoint(resume_from_checkpoint, checkpoint_path) -> Path:
    """A checkpoint folder, or for True the newest complete one under `checkpoint_path`."""
    if resume_from_checkpoint is True:
        if checkpoint_path is None:
            raise ValueError("resume_from_checkpoint=True needs checkpoint_path, where to look")
        found = checkpoints(checkpoint_path)
        if not found:
            raise FileNotFoundError(f"{checkpoint_path}: no checkpoint-<step> folder with "
                                    f"{STATE_FILE} to resume from")
        return found[-1]
    folder = Path(resume_from_checkpoint)
    if not (folder / STATE_FILE).is_file():
        raise FileNotFoundError(f"{folder}: not a training checkpoint (it has no {STATE_FILE})")
    return folder


def training_state(step: int, run: dict, parts: dict) -> dict:
    """What training_state.pt holds: the run's settings, the generators and each part's
    state_dict() (parts: the loss modules, optimizer, scheduler, scaler, data position, ...)."""
    return {"format": FORMAT, "step": step, "run": run, "rng": rng_state(),
            **{name: part.state_dict() for name, part in parts.items() if part is not None}}


def resume_run(resume_from_checkpoint, checkpoint_path, run: dict, parts: dict) -> int:
    """Load a checkpoint into the parts of this run; returns the step it was saved after."""
    folder = find_checkpoint(resume_from_checkpoint, checkpoint_path)
    state = load_training_state(folder, run)
    restore(state, folder / STATE_FILE, parts)
    log.info("resuming from %s after step %d", folder, state["step"])
    return state["step"]


def load_training_state(folder: Path, run: dict) -> dict:
    """Read training_state.pt (weights_only: never code) and check it belongs to this run."""
    file = Path(folder) / STATE_FILE
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:  # UnpicklingError (code asked for), RuntimeError (bad zip), EOFError
        why = type(e).__name__ + (f": {str(e).splitlines()[0]}" if str(e).strip() else "")
        raise ValueError(f"{file}: not a readable training state; it is loaded with "
                         f"weights_only=True, so only plain tensors and numbers ({why})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{file}: not a minisbert training state of format {FORMAT}")
    for key, value in run.items():
        if state["run"].get(key) != value:
            raise ValueError(f"{file}: the checkpoint's run had {key}={state['run'].get(key)!r}, "
                             f"this one has {value!r}; resume with the same data and settings")
    return state


def restore(state: dict, file: Path, parts: dict) -> None:
    """Load each part's state (load_state_dict), then the generators, which must come last."""
    for name, part in parts.items():
        if part is None:
            continue
        if isinstance(part, torch.nn.Module):  # name the odd keys before anything is loaded
            ours, theirs = set(part.state_dict()), set(state[name])
            if ours != theirs:
                odd = sorted(ours ^ theirs)
                raise ValueError(f"{file}: the weights are another model's: {len(ours - theirs)} "
                                 f"missing and {len(theirs - ours)} unexpected key(s), such as "
                                 f"{', '.join(map(repr, odd[:3]))}")
        try:
            part.load_state_dict(state[name])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise ValueError(f"{file}: {name!r} does not fit this run: {str(e)[:300]}") from None
    set_rng_state(state["rng"])
