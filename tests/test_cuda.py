"""CUDA: the same embeddings on a GPU as on the CPU, in each precision, and mixed-precision training.

A random-weight model of all-MiniLM-L6-v2's shape (6 layers, hidden 384, 12 heads) stands in for
the real one, so these tests need nothing from ../shared. They are skipped where torch sees no
CUDA device; benchmarks/gpu_check.sh runs them on a GPU machine.
"""

import copy
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from minisbert import InputExample, SentenceTransformer, SentencesDataset, losses
from minisbert.config import BertConfig
from minisbert.encoder import BertModel
from minisbert.models import Normalize, Pooling, Transformer
from minisbert.precision import mixed_precision, supports_bf16, to_device
from minisbert.tokenizer import Tokenizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

WORDS = "a the man woman dog cat car is playing runs eats guitar piano food red big fast slow".split()


@pytest.fixture(scope="module")
def cpu_model(tmp_path_factory) -> SentenceTransformer:
    folder = tmp_path_factory.mktemp("minilm-shaped")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS]
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in vocab))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=384, num_hidden_layers=6,
                        num_attention_heads=12, intermediate_size=1536)
    transformer = Transformer(encoder=BertModel(config), tokenizer=Tokenizer.from_folder(folder, 256))
    return SentenceTransformer(modules=[transformer, Pooling(384, "mean"), Normalize()], device="cpu")


@pytest.fixture(scope="module")
def cuda_model(cpu_model) -> SentenceTransformer:
    return copy.deepcopy(cpu_model).to("cuda")


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 40))) for _ in range(n)]


def cosines(a, b) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_encode_with_device_cuda_moves_the_model_there(cpu_model):
    model, texts = copy.deepcopy(cpu_model), sentences(10)
    on_gpu = model.encode(texts, device="cuda", convert_to_tensor=True)
    assert on_gpu.device.type == "cuda" and model.device.type == "cuda"
    assert np.abs(on_gpu.cpu().numpy() - cpu_model.encode(texts)).max() < 1e-4


def test_cuda_encode_matches_cpu_in_fp32(cpu_model, cuda_model):
    texts = sentences(100)
    on_cpu, on_gpu = cpu_model.encode(texts), cuda_model.encode(texts)
    assert on_gpu.dtype == np.float32
    assert np.abs(on_cpu - on_gpu).max() < 1e-4


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_cuda_low_precision_encode_is_close_to_cpu_fp32(cpu_model, cuda_model, name):
    if name == "bf16" and not supports_bf16("cuda"):
        pytest.skip("this GPU has no native bf16")
    texts = sentences(100, seed=1)
    fast = cuda_model.encode(texts, precision=name)
    assert fast.dtype == np.float32
    assert cosines(cpu_model.encode(texts), fast).min() > 0.99
    assert all(p.dtype == torch.float32 for p in cuda_model.parameters())


def test_cuda_encode_can_return_a_float32_tensor_on_the_gpu(cuda_model):
    out = cuda_model.encode(sentences(5), convert_to_tensor=True, precision="fp16")
    assert out.device.type == "cuda" and out.dtype == torch.float32


def test_to_device_copies_from_pinned_memory_to_the_gpu():
    batch = {"input_ids": torch.arange(12).view(3, 4), "attention_mask": torch.ones(3, 4)}
    moved = to_device(batch, "cuda")
    assert all(moved[k].device.type == "cuda" and torch.equal(moved[k].cpu(), batch[k]) for k in batch)


def test_training_amp_on_cuda_is_bf16_or_fp16_with_a_scaler():
    recipe = mixed_precision("cuda")
    if supports_bf16("cuda"):
        assert recipe.dtype == torch.bfloat16 and recipe.scaler is None
    else:
        assert recipe.dtype == torch.float16 and recipe.scaler is not None


def test_amp_training_on_cuda_updates_fp32_weights(cuda_model):
    model = copy.deepcopy(cuda_model)
    before = model[0].encoder.layers[0].ffn.up.weight.detach().clone()
    texts = sentences(32, seed=2)
    examples = [InputExample(texts=[texts[i], texts[i + 1]], label=0.5) for i in range(0, 32, 2)]
    loader = DataLoader(SentencesDataset(examples), batch_size=8)
    rows = model.fit([(loader, losses.CosineSimilarityLoss(model))], max_steps=2, use_amp=True,
                     show_progress_bar=False)
    after = model[0].encoder.layers[0].ffn.up.weight
    assert np.isfinite(rows[-1]["loss"])
    assert after.dtype == torch.float32 and not torch.equal(before, after.detach())


def two_sgd_steps(model: SentenceTransformer, device: str) -> dict[str, torch.Tensor]:
    """The weights after two plain-SGD steps without dropout on padded batches (1-40 words), so
    the encoder packs the real tokens and the embeddings get sparse gradients."""
    model = copy.deepcopy(model).to(device)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):  # attention's dropout_p
            module.dropout = 0.0
    texts = sentences(32, seed=3)
    examples = [InputExample(texts=[texts[i], texts[i + 1]], label=(i % 5) / 4) for i in range(0, 32, 2)]
    loader = DataLoader(SentencesDataset(examples), batch_size=8)  # no shuffling: same batches
    model.fit([(loader, losses.CosineSimilarityLoss(model))], max_steps=2, show_progress_bar=False,
              optimizer_class=torch.optim.SGD, optimizer_params={"lr": 0.5})
    return {name: p.detach().cpu() for name, p in model.named_parameters()}


def test_training_steps_on_cuda_match_the_cpu_in_fp32(cpu_model):
    # SGD, not AdamW: Adam's update of a weight whose true gradient is ~0 (the key biases) is
    # +-lr whatever the rounding, which would hide what this compares.
    on_cpu, on_gpu = two_sgd_steps(cpu_model, "cpu"), two_sgd_steps(cpu_model, "cuda")
    start = dict(cpu_model.named_parameters())
    moved = [name for name in on_cpu if not torch.equal(on_cpu[name], start[name].detach())]
    assert "0.encoder.embeddings.word.weight" in moved and len(moved) > 50
    for name in on_cpu:
        torch.testing.assert_close(on_gpu[name], on_cpu[name], atol=1e-4, rtol=1e-3)  # moves: ~1e-2
