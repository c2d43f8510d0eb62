"""Shared fixtures: the real model, STSb and the reference outputs, and a tiny random model.

The real files come from the MINISBERT_* variables that .ci/run sets. Without them a test marked
`real` is skipped on a developer's machine but fails under CI (CI set to anything but "", "0" or
"false"): a test that silently skips in CI is a test that does not exist.
"""

import json
import os
from pathlib import Path

import pytest
import torch


def _real_path(variable: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
            pytest.fail(f"{variable} is not set; CI must point it at ../shared (see .ci/run)")
        pytest.skip(f"{variable} is not set")
    if not Path(value).exists():
        pytest.fail(f"{variable}={value} does not exist")
    return Path(value).resolve()  # absolute: tests may run scripts from another folder


@pytest.fixture(scope="session")
def test_model_dir() -> Path:
    """A real sentence-transformers model folder (all-MiniLM-L6-v2)."""
    return _real_path("MINISBERT_TEST_MODEL")


@pytest.fixture(scope="session")
def stsb_dir() -> Path:
    """Folder with the original sts-train.csv, sts-dev.csv, sts-test.csv."""
    return _real_path("MINISBERT_STSB_DIR")


@pytest.fixture(scope="session")
def reference_json() -> dict:
    """Stored outputs of the reference implementation (sentence-transformers) for parity tests."""
    return json.loads(_real_path("MINISBERT_REFERENCE").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def real_model(test_model_dir):
    """The shared all-MiniLM-L6-v2, loaded once for the whole session (CPU, fp32)."""
    from minisbert import SentenceTransformer
    return SentenceTransformer(str(test_model_dir), device="cpu")


TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "?", "a", "the", "man",
              "woman", "is", "playing", "guitar", "piano", "dog", "cat", "runs", "eats", "food",
              "##s", "##ing", "play", "music", "car", "fast", "slow", "red", "blue", "big"]


def write_tiny_model_folder(folder: Path, seed: int = 0) -> Path:
    """A random-weight Hugging Face BERT folder (2 layers, hidden 32): config.json, vocab.txt,
    tokenizer_config.json and model.safetensors with Hugging Face weight names."""
    from minisbert import checkpoint, weights
    from minisbert.config import BertConfig
    from minisbert.encoder import BertModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = BertConfig.tiny(vocab_size=len(TINY_VOCAB))
    encoder = BertModel(config)
    (folder / "config.json").write_text(json.dumps({**config.to_dict(),
                                                    "architectures": ["BertModel"]}))
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in TINY_VOCAB))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True,
                                                               "model_max_length": 64}))
    weights.write_safetensors(folder / "model.safetensors",
                              checkpoint.ours_to_hf(encoder.state_dict()))
    return folder


@pytest.fixture
def tiny_model_dir(tmp_path) -> Path:
    return write_tiny_model_folder(tmp_path / "tiny-bert")


@pytest.fixture
def tiny_model(tiny_model_dir):
    from minisbert import SentenceTransformer
    return SentenceTransformer(str(tiny_model_dir), device="cpu")


def assert_config_error(tmp_path: Path, config: dict, change: dict, message: str) -> None:
    """config.json = `config` with `change` (None: key removed) must fail naming the file."""
    from minisbert.config import BertConfig
    for key, value in change.items():
        config.pop(key) if value is None else config.__setitem__(key, value)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message) as info:
        BertConfig.from_json(path)
    assert str(path) in str(info.value)
