"""Data-parallel training: two CPU processes under torchrun (gloo) against one process.

DDP averages the gradients over the processes, so both ranks make the same update; with the
same examples per step, that update is the one a single process makes on a batch twice as big.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from minisbert import SentenceTransformer, distributed, losses
from minisbert.data import SentencesDataset, load_stsb
from minisbert.training import fit
from conftest import write_tiny_model_folder

WORDS = "a the man woman dog cat is playing guitar piano runs eats food music car red blue big".split()
WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


def write_stsb(folder: Path, n: int = 32) -> Path:
    """A hand-made STSb folder in the authors' layout, sentences from the tiny model's vocabulary."""
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for split in ("train", "dev", "test"):
        lines = []
        for i in range(n):
            a, b = (" ".join(WORDS[j] for j in torch.randint(len(WORDS), (5,), generator=g))
                    for _ in range(2))
            lines.append(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{5 * (i % 6) / 5:.1f}\t{a}\t{b}\n")
        (folder / f"sts-{split}.csv").write_text("".join(lines), encoding="utf-8")
    return folder


def tiny_model_without_dropout(folder: Path) -> Path:
    """Dropout draws differ between runs; without it one and two processes can agree exactly."""
    write_tiny_model_folder(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_end_with_the_same_weights_as_one_with_twice_the_batch(tmp_path):
    model_dir, data = tiny_model_without_dropout(tmp_path / "tiny"), write_stsb(tmp_path / "stsb")
    options = ["--model", str(model_dir), "--data", str(data), "--batch-size", "4", "--epochs", "2",
               "--lr", "1e-3", "--warmup-ratio", "0", "--seed", "3", "--device", "cpu",
               "--output", str(tmp_path / "run" / "out"), "--checkpoint-steps", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
                          "--nproc_per_node=2", "--master_addr=127.0.0.1",
                          f"--master_port={free_port()}", str(WORKER), *options],
                         capture_output=True, text=True, env=env, timeout=120)
    assert job.returncode == 0, job.stderr[-3000:]
    # Rank 0 alone reports, with the effective batch, and writes the one model folder.
    assert job.stdout.count("Training on 32 pairs") == 1
    assert "batch 4 per process x 2 processes = 8" in job.stdout
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["out", "rank0.pt", "rank1.pt"]
    out = tmp_path / "run" / "out"
    assert (out / "model.safetensors").is_file() and (out / "final" / "model.safetensors").is_file()
    assert json.loads((out / "results.json").read_text())["processes"] == 2
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + 2  # a header and one row per epoch, not one per rank
    # Its checkpoints hold two processes' run, so one process cannot pass for its continuation.
    alone = subprocess.run([sys.executable, str(WORKER), *options, "--resume", "latest"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert alone.returncode != 0 and "the checkpoint's run had processes=2" in alone.stderr

    rank0, rank1 = (torch.load(tmp_path / "run" / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)

    # One process over the same examples per step: the DistributedSampler's order for a world of
    # one is the whole permutation that two ranks deal between them, two at a time.
    torch.set_num_threads(1)
    model = SentenceTransformer(str(model_dir), device="cpu")
    dataset = SentencesDataset(load_stsb("train", data), model)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3)
    loader = DataLoader(dataset, sampler=sampler, batch_size=8)
    fit(model, [(loader, losses.CosineSimilarityLoss(model))], epochs=2,
        optimizer_params={"lr": 1e-3}, seed=3, show_progress_bar=False)
    alone = model.state_dict()
    assert rank0.keys() == alone.keys()
    for k in alone:
        torch.testing.assert_close(rank0[k], alone[k], atol=1e-5, rtol=0, msg=k)


def test_without_torchrun_the_helpers_change_nothing(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    loss = losses.CosineSimilarityLoss(torch.nn.Linear(2, 2))
    assert distributed.setup("cpu") == (0, 1, torch.device("cpu"))
    assert distributed.wrap(loss) is loss and distributed.sampler([1, 2], seed=0) is None
    assert distributed.is_main() and distributed.world_size() == 1
    assert distributed.average(0.5) == 0.5 and distributed.average(None) is None
    distributed.barrier()


def test_under_torchrun_resuming_is_refused_with_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    model = SentenceTransformer(str(write_tiny_model_folder(tmp_path / "tiny")), device="cpu")
    loader = DataLoader(SentencesDataset(load_stsb("train", write_stsb(tmp_path / "stsb", 4)), model))
    with pytest.raises(ValueError, match="does not resume"):
        fit(model, [(loader, losses.CosineSimilarityLoss(model))], resume_from_checkpoint=True,
            checkpoint_path=tmp_path, show_progress_bar=False)
