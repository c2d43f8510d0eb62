"""Real downloads end to end, against a stand-in hub on 127.0.0.1 (tests/hubserver.py):
a saved model fetched by name loads with identical outputs, and STSb fetched by URL equals the
local files."""

import gzip
import threading

import numpy as np
import pytest

from minisbert import SentenceTransformer
from minisbert.data import load_stsb, read_sts
from hubserver import copy_repo, serve_folder


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("MINISBERT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT", "MINISBERT_STSB_URL"):
        monkeypatch.delenv(name, raising=False)
    before = {t for t in threading.enumerate() if not t.daemon}
    yield
    assert {t for t in threading.enumerate() if not t.daemon} == before


def test_model_by_hub_name_loads_with_identical_outputs_then_works_with_the_server_gone(
        tiny_model, tmp_path, monkeypatch):
    texts = ["a man is playing guitar", "the dog runs fast"]
    tiny_model.save(tmp_path / "saved")
    copy_repo(tmp_path / "hub", "someone/tiny-sbert", tmp_path / "saved")
    with serve_folder(tmp_path / "hub") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        downloaded = SentenceTransformer("someone/tiny-sbert", device="cpu")
        assert server.requests  # it really went over HTTP
    assert np.array_equal(downloaded.encode(texts), tiny_model.encode(texts))
    again = SentenceTransformer("someone/tiny-sbert", device="cpu")  # the server is stopped now
    assert np.array_equal(again.encode(texts), tiny_model.encode(texts))


@pytest.mark.real
def test_stsb_downloaded_by_url_equals_the_local_files(stsb_dir, tmp_path, monkeypatch):
    header = "split\tgenre\tdataset\tyear\tsid\tscore\tsentence1\tsentence2\n"
    lines = [header]
    for split in ("train", "dev", "test"):
        for row in (stsb_dir / f"sts-{split}.csv").read_text(encoding="utf-8").splitlines():
            genre, dataset, year, sid, score, s1, s2 = row.split("\t")[:7]
            lines.append("\t".join([split, genre, dataset, year, sid, score, s1, s2]) + "\n")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "stsbenchmark.tsv.gz").write_bytes(gzip.compress("".join(lines).encode()))
    with serve_folder(tmp_path / "www") as server:
        monkeypatch.setenv("MINISBERT_STSB_URL", f"{server.url}/stsbenchmark.tsv.gz")
        downloaded = {split: load_stsb(split) for split in ("train", "dev", "test")}
        n = len(server.requests)
        load_stsb("dev")
        assert len(server.requests) == n  # the second time it comes from the cache
    for split, examples in downloaded.items():
        local = read_sts(stsb_dir, split)
        assert [(e.texts, e.label) for e in examples] == [(e.texts, e.label) for e in local]
