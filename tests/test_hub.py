"""hub.py against a fake hub on 127.0.0.1 (tests/hubserver.py): what a download fetches, what the
cache keeps, what happens offline, and what is refused before any request is made."""
import hashlib
import json
import threading
import urllib.request

import pytest

from minisbert import hub as hub_module
from minisbert.hub import HubError, cached_url, download, resolve
from hubserver import serve_folder, write_repo

REPO = "test-org/tiny-model"
MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]
FILES = {
    "modules.json": json.dumps(MODULES).encode(),
    "config.json": json.dumps({"model_type": "bert", "hidden_size": 32}).encode(),
    "sentence_bert_config.json": b'{"max_seq_length": 16, "do_lower_case": false}',
    "1_Pooling/config.json": b'{"word_embedding_dimension": 32, "pooling_mode_mean_tokens": true}',
    "tokenizer.json": b'{"version": "1.0", "model": {"type": "WordPiece"}}',
    "vocab.txt": b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n",
    "model.safetensors": bytes(range(256)) * 16,  # 4 KB standing in for weights
}


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    """Every test: an empty cache of its own, online, no token, no proxy for 127.0.0.1."""
    monkeypatch.setenv("MINISBERT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    before = {t for t in threading.enumerate() if not t.daemon}
    yield
    assert {t for t in threading.enumerate() if not t.daemon} == before, "a thread was left running"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The fake hub serving REPO, with HF_ENDPOINT pointing at it."""
    write_repo(tmp_path / "hub", REPO, FILES)
    with serve_folder(tmp_path / "hub") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def cache_files(tmp_path):
    return sorted(p.relative_to(tmp_path / "cache").as_posix()
                  for p in (tmp_path / "cache").rglob("*") if p.is_file())


def test_resolve_downloads_the_folder_then_needs_no_server(hub, tmp_path):
    folder = resolve(REPO)
    assert folder == tmp_path / "cache" / "models" / "test-org--tiny-model" / "main"
    for name, data in FILES.items():
        assert (folder / name).read_bytes() == data, name
    assert (folder / "2_Normalize").is_dir()  # a module without files still has its folder
    assert "/test-org/tiny-model/resolve/main/2_Normalize/config.json" not in hub.paths()
    assert not list(folder.rglob("*.part"))
    n = len(hub.requests)
    assert resolve(REPO) == folder and len(hub.requests) == n  # the cache answers: no request


def test_cached_model_is_used_with_the_server_gone(tmp_path, monkeypatch):
    write_repo(tmp_path / "hub", REPO, FILES)
    with serve_folder(tmp_path / "hub") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        folder = resolve(REPO)

    def no_network(*args, **kwargs):
        raise AssertionError("resolve made a request although the cache is complete")

    monkeypatch.setattr(urllib.request.OpenerDirector, "open", no_network)
    assert resolve(REPO) == folder
    assert (folder / "model.safetensors").read_bytes() == FILES["model.safetensors"]


def test_a_local_folder_is_returned_as_it_is(tmp_path):
    assert resolve(tmp_path) == tmp_path


def test_bare_name_falls_back_to_sentence_transformers(tmp_path, monkeypatch):
    write_repo(tmp_path / "hub", "sentence-transformers/tiny-model", FILES)
    with serve_folder(tmp_path / "hub") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        folder = resolve("tiny-model")
        assert server.paths()[:2] == ["/tiny-model/resolve/main/config.json",
                                      "/sentence-transformers/tiny-model/resolve/main/config.json"]
    assert folder.parent.name == "sentence-transformers--tiny-model"
    assert resolve("tiny-model") == folder  # found in the cache under its full name


def test_unknown_repo_is_an_error_naming_both_tries(hub):
    with pytest.raises(HubError, match="no repo nope or sentence-transformers/nope"):
        resolve("nope")


def test_hf_token_is_sent_as_bearer(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    resolve(REPO)
    assert all(headers.get("Authorization") == "Bearer hf_secret" for _, headers in hub.requests)


def test_redirect_is_followed_and_sha256_etags_checked(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hub_module, "PROGRESS_BYTES", 1024)  # so the 4 KB "weights" get a bar
    write_repo(tmp_path / "hub", "lfs", {"blob": FILES["model.safetensors"]})
    hub.redirects[f"/{REPO}/resolve/main/model.safetensors"] = "/lfs/resolve/main/blob"
    hub.send_sha256 = True
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    folder = resolve(REPO)
    assert (folder / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    assert hub.requests[-1][0] == "/lfs/resolve/main/blob"
    assert hub.requests[-1][1]["Authorization"] == "Bearer hf_secret"  # same host keeps it
    assert "model.safetensors" in capsys.readouterr().err  # the progress bar


def test_token_is_not_sent_to_another_host(hub, tmp_path, monkeypatch):
    write_repo(tmp_path / "cdn", "x", {"blob": FILES["model.safetensors"]})
    with serve_folder(tmp_path / "cdn") as cdn:
        hub.redirects[f"/{REPO}/resolve/main/model.safetensors"] = cdn.url + "/x/resolve/main/blob"
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        resolve(REPO)
        assert cdn.paths() == ["/x/resolve/main/blob"]
        assert "Authorization" not in cdn.requests[0][1]


def test_cut_off_download_keeps_nothing_and_the_next_call_completes(hub, tmp_path):
    hub.cut_off.add(f"/{REPO}/resolve/main/model.safetensors")
    with pytest.raises(HubError, match="cut off: got 2048 of 4096 bytes"):
        resolve(REPO)
    kept = cache_files(tmp_path)
    assert not any("model.safetensors" in f or f.endswith(".part") or ".complete" in f for f in kept)
    hub.cut_off.clear()
    folder = resolve(REPO)
    assert (folder / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    assert not list(folder.rglob("*.part"))


@pytest.mark.parametrize("redirected", [False, True], ids=["etag", "x-linked-etag"])
def test_wrong_sha256_is_refused_and_not_kept(hub, tmp_path, redirected):
    path = f"/{REPO}/resolve/main/model.safetensors"
    if redirected:  # the hub puts the sha256 on the redirect to its CDN
        write_repo(tmp_path / "hub", "lfs", {"blob": FILES["model.safetensors"]})
        hub.redirects[path] = "/lfs/resolve/main/blob"
    hub.wrong_sha256.add(path)
    with pytest.raises(HubError, match="corrupt: sha256"):
        resolve(REPO)
    assert not any("model.safetensors" in f or f.endswith(".part") for f in cache_files(tmp_path))


def test_missing_optional_files_are_fine_missing_weights_are_not(hub):
    hub.not_found.add(f"/{REPO}/resolve/main/vocab.txt")
    assert not (resolve(REPO, cache_dir=hub.root.parent / "c1") / "vocab.txt").exists()
    hub.not_found.add(f"/{REPO}/resolve/main/model.safetensors")
    with pytest.raises(HubError, match=f"{REPO}.*neither model.safetensors nor pytorch_model.bin"):
        resolve(REPO, cache_dir=hub.root.parent / "c2")
    assert hub.paths()[-1] == f"/{REPO}/resolve/main/pytorch_model.bin"


def test_pytorch_model_bin_is_used_without_safetensors(tmp_path, monkeypatch):
    files = {k: v for k, v in FILES.items() if k != "model.safetensors"}
    write_repo(tmp_path / "hub", REPO, {**files, "pytorch_model.bin": b"pickled weights"})
    with serve_folder(tmp_path / "hub") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        assert (resolve(REPO) / "pytorch_model.bin").read_bytes() == b"pickled weights"


def test_offline_with_empty_cache_names_the_repo(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match=f"'{REPO}'.*not in the cache.*pass a local folder"):
        resolve(REPO)
    assert hub.requests == []


def test_a_mistyped_local_path_is_named_as_missing_too(hub, tmp_path, monkeypatch):
    (tmp_path / "output").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="no local folder output/my-modle either"):
        resolve("output/my-modle")


def test_offline_with_complete_cache_works(hub, monkeypatch):
    folder = resolve(REPO)
    n = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve(REPO) == folder and len(hub.requests) == n


def test_unreachable_hub_without_cache_says_what_to_do(tmp_path, monkeypatch):
    with serve_folder(tmp_path) as server:
        url = server.url  # a port that nothing listens on once the server is gone
    monkeypatch.setenv("HF_ENDPOINT", url)
    with pytest.raises(HubError, match=f"could not reach {url}.*pass a local folder"):
        resolve(REPO)


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b/c", "org/..", "a\\b", "org/na me", ""])
def test_bad_repo_ids_are_refused_before_any_request(hub, name, tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # so that no name is, by chance, a folder ("../x" is one in /work/x)
    with pytest.raises(ValueError, match="neither a local folder nor a hub repo id"):
        resolve(name)
    with pytest.raises(ValueError, match="invalid revision"):
        resolve(REPO, revision="../../x")
    assert hub.requests == []


def test_module_path_outside_the_repo_is_refused(hub, tmp_path):
    modules = MODULES[:1] + [{"idx": 1, "name": "1", "path": "../../etc", "type": "x.Pooling"}]
    write_repo(tmp_path / "hub", REPO, {"modules.json": json.dumps(modules).encode()})
    with pytest.raises(HubError, match="module path '../../etc'"):
        resolve(REPO)
    assert not any("etc" in path for path in hub.paths())
    assert not (tmp_path / "cache" / "models" / "etc").exists()


def test_cached_url_downloads_once(hub, tmp_path, monkeypatch):
    write_repo(tmp_path / "hub", "datasets", {"sts.tsv.gz": b"gzipped rows"})
    url = hub.url + "/datasets/resolve/main/sts.tsv.gz"
    path = cached_url(url)
    assert path.parent == tmp_path / "cache" / "urls"
    assert path.name == hashlib.sha256(url.encode()).hexdigest() + "-sts.tsv.gz"
    assert path.read_bytes() == b"gzipped rows"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cached_url(url) == path and len(hub.requests) == 1
    with pytest.raises(HubError, match="not in the cache and HF_HUB_OFFLINE"):
        cached_url(url + "-other")


def test_download_checks_the_expected_sha256(hub, tmp_path):
    url = hub.url + f"/{REPO}/resolve/main/vocab.txt"
    good = hashlib.sha256(FILES["vocab.txt"]).hexdigest()
    assert download(url, tmp_path / "v.txt", expected_sha256=good).read_bytes() == FILES["vocab.txt"]
    with pytest.raises(HubError, match="corrupt"):
        download(url, tmp_path / "w.txt", expected_sha256="f" * 64)
    with pytest.raises(HubError, match="HTTP 404"):
        download(hub.url + "/nothing", tmp_path / "n")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["v.txt"]


def test_etag_sha256_parsing():
    sha = "ab" * 32
    assert hub_module._etag_sha256(f'W/"{sha}"') == sha
    assert hub_module._etag_sha256('"5d41402abc4b2a76b9719d911017c592"', f'"{sha.upper()}"') == sha
    assert hub_module._etag_sha256('"a1b2c3"', None) is None  # a git sha1 or md5 is not checked
