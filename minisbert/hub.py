"""Turn a model name into a local folder: fetch from the Hugging Face hub once, then use the cache.

`resolve("sentence-transformers/all-MiniLM-L6-v2")` (or a bare "all-MiniLM-L6-v2") downloads the
files of a sentence-transformers folder, as modules.json lists them, into ~/.cache/minisbert and
returns that folder; a local folder is returned as it is. Each file is written under a temporary
name and renamed only once its size and sha256 check out, so the cache never holds half a file;
a finished folder is marked `.complete` and later calls, online or offline, make no request.
Read next: sentence_transformer.py, which loads the folder this returns.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

DEFAULT_ENDPOINT = "https://huggingface.co"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt")
SBERT_FILES = ("sentence_bert_config.json", "config_sentence_transformers.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
COMPLETE = ".complete"  # marker written last: JSON list of the files in the folder
PROGRESS_BYTES = 10 * 2**20  # files smaller than this download without a progress bar
TIMEOUT_S = 30
LOCAL_HINT = "or pass a local folder instead: SentenceTransformer('/path/to/model')"
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class HubError(OSError):
    """A model or file could not be fetched (not found, unreachable, offline, corrupt download)."""


class _Unreachable(HubError):
    """The server could not be reached at all (DNS, refused, timeout): the offline case."""


class _RepoNotFound(HubError):
    """401/404 on a repo's first file: the hub has no such (public) repo."""


# ---- names: validated before any request, so nothing lands outside the cache ----

def _valid(path: str, max_parts: int | None = None) -> bool:
    """True for plain relative a/b/c names of [A-Za-z0-9._-]: no '..', no absolute path, no '\\'."""
    parts = path.split("/")
    return bool(path) and (max_parts is None or len(parts) <= max_parts) and all(
        _NAME.fullmatch(p) and ".." not in p and p != "." for p in parts)


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    root = cache_dir or os.environ.get("MINISBERT_CACHE") or "~/.cache/minisbert"
    return Path(root).expanduser()


def _repo_folder(root: Path, repo: str, revision: str) -> Path:
    return root / "models" / repo.replace("/", "--") / revision  # hub names never contain "--"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


# ---- one HTTP GET into one file ----

class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, remembering the hub's X-Linked-Etag (the sha256 of an LFS file, sent on
    the redirect to the CDN) and keeping the token only while the host stays the same."""

    def __init__(self):
        self.linked_etag = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.linked_etag = self.linked_etag or headers.get("X-Linked-Etag")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        token = req.unredirected_hdrs.get("Authorization")
        same_host = urllib.parse.urlsplit(newurl).netloc == urllib.parse.urlsplit(req.full_url).netloc
        if new is not None and token and same_host:
            new.add_unredirected_header("Authorization", token)
        return new


def _etag_sha256(*etags: str | None) -> str | None:
    """The first ETag that is a sha256 (64 hex digits) once `W/` and quotes are stripped."""
    for etag in etags:
        value = (etag or "").strip().removeprefix("W/").strip('"').lower()
        if _SHA256.fullmatch(value):
            return value
    return None


def _fetch(url: str, dest: Path, token: str | None = None, expected_sha256: str | None = None):
    """GET url into dest atomically. Raises urllib's HTTPError as it is (the caller knows what a
    404 means), _Unreachable when there is no connection, HubError for a bad or cut-off body."""
    request = urllib.request.Request(url, headers={"User-Agent": "minisbert"})
    if token:  # unredirected: _Redirects decides whether it follows a redirect
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    redirects = _Redirects()
    try:
        response = urllib.request.build_opener(redirects).open(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
        raise _Unreachable(f"could not reach {url}: {getattr(e, 'reason', e)}") from e
    with response:
        length = response.headers.get("Content-Length")
        sha = expected_sha256 or _etag_sha256(
            redirects.linked_etag, response.headers.get("X-Linked-Etag"), response.headers.get("ETag"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                size, digest = _copy(response, out, int(length) if length else None, dest.name, url)
            if length is not None and size != int(length):
                raise HubError(f"download of {url} was cut off: got {size} of {length} bytes")
            if sha is not None and digest != sha.lower():
                raise HubError(f"download of {url} is corrupt: sha256 {digest}, expected {sha}")
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return dest


def _copy(response, out, total: int | None, name: str, url: str) -> tuple[int, str]:
    """Stream the body to `out`; returns (bytes written, sha256 hex digest)."""
    digest, size = hashlib.sha256(), 0
    big = total is None or total >= PROGRESS_BYTES  # small files: no bar (and no tqdm thread)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False) if big else None
    with bar if bar is not None else contextlib.nullcontext():
        while True:
            try:
                chunk = response.read(2**20)
            except (OSError, http.client.HTTPException) as e:
                raise HubError(f"download of {url} was cut off after {size} bytes: {e}") from e
            if not chunk:
                return size, digest.hexdigest()
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            if bar is not None:
                bar.update(len(chunk))


# ---- generic URLs (data.py fetches STSbenchmark through these) ----

def download(url: str, dest: str | os.PathLike, expected_sha256: str | None = None) -> Path:
    """Download url to dest atomically: the file appears only complete and with the right size
    (Content-Length) and sha256 (expected_sha256, else a sha256 ETag). No token is sent."""
    try:
        return _fetch(url, Path(dest), expected_sha256=expected_sha256)
    except urllib.error.HTTPError as e:
        e.close()
        raise HubError(f"could not download {url}: HTTP {e.code} {e.reason}") from e


def cached_url(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local copy of url in <cache>/urls/, downloaded on the first call only."""
    basename = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
    basename = re.sub(r"[^A-Za-z0-9._-]", "_", basename).lstrip(".") or "file"
    path = _cache_root(cache_dir) / "urls" / f"{hashlib.sha256(url.encode()).hexdigest()}-{basename}"
    if path.is_file():
        return path
    hint = f"download it yourself to {path}"
    if _offline():
        raise HubError(f"{url} is not in the cache and HF_HUB_OFFLINE is set; {hint}")
    try:
        return download(url, path)
    except _Unreachable as e:
        raise HubError(f"{e}; {hint}") from e


# ---- hub repos ----

def _hub_get(repo: str, revision: str, name: str, folder: Path, missing: type | None = None) -> bool:
    """Fetch one file of a repo into folder. If the hub has no such file, return False when
    `missing` is None (an optional file), else raise `missing`."""
    url = f"{_endpoint()}/{repo}/resolve/{revision}/{name}"
    try:
        _fetch(url, folder / name, token=os.environ.get("HF_TOKEN"))
        return True
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 404 and missing is None:
            return False
        error = missing if missing is not None and e.code in (401, 404) else HubError
        raise error(f"{repo} (revision {revision}): could not download {name}: "
                    f"HTTP {e.code} {e.reason} from {url}") from e


def _module_files(modules_json: Path, repo: str) -> list[str]:
    """The config files that modules.json asks for. Module folders are created here: a Normalize
    module has no files but still has its folder, as save() writes it."""
    files = list(SBERT_FILES)
    for module in json.loads(modules_json.read_text(encoding="utf-8")):
        path = module.get("path", "").rstrip("/")
        if not path:
            continue  # the Transformer at the root: its config.json is fetched anyway
        if not _valid(path):
            raise HubError(f"modules.json of {repo} has module path {path!r}, which would leave "
                           "the repo folder (only plain relative names [A-Za-z0-9._-] are allowed)")
        (modules_json.parent / path).mkdir(parents=True, exist_ok=True)
        if not module.get("type", "").endswith("Normalize") and f"{path}/config.json" not in files:
            files.append(f"{path}/config.json")
    return files


def _download_repo(repo: str, revision: str, folder: Path) -> Path:
    """Fetch every file the model needs into folder, then write the .complete marker."""
    def get(name: str, missing: type | None = None) -> bool:
        return _hub_get(repo, revision, name, folder, missing)

    get("config.json", missing=_RepoNotFound)  # first: a 401/404 here means no such repo
    files = ["config.json"]
    if get("modules.json"):
        files += ["modules.json"] + [f for f in _module_files(folder / "modules.json", repo) if get(f)]
    files += [f for f in TOKENIZER_FILES if get(f)]
    weights = next((f for f in WEIGHT_FILES if get(f)), None)  # the first one the repo has
    if weights is None:
        raise HubError(f"{repo} (revision {revision}) has no weights: "
                       f"neither {' nor '.join(WEIGHT_FILES)} at {_endpoint()}")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{COMPLETE}.", suffix=".part")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(files + [weights], out, indent=1)
    os.replace(tmp, folder / COMPLETE)
    return folder


def _cached(folder: Path) -> bool:
    """True if folder holds a finished download: the marker and every file it lists."""
    try:
        files = json.loads((folder / COMPLETE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all((folder / f).is_file() for f in files)


def resolve(name_or_path: str | os.PathLike, revision: str = "main",
            cache_dir: str | os.PathLike | None = None) -> Path:
    """A local folder holding the model: name_or_path itself if it is a folder, else the cached
    download of the hub repo of that id (a bare name also tries sentence-transformers/<name>).

    A branch such as "main" is cached as first downloaded: delete its cache folder to refresh."""
    if os.fspath(name_or_path) and Path(name_or_path).expanduser().is_dir():
        return Path(name_or_path).expanduser()
    repo = os.fspath(name_or_path)
    if not _valid(repo, max_parts=2):
        raise ValueError(f"{repo!r} is neither a local folder nor a hub repo id ('name' or "
                         "'owner/name' of [A-Za-z0-9._-], no '..', no absolute path or backslash)")
    if not _valid(revision, max_parts=1):
        raise ValueError(f"invalid revision {revision!r}: a branch, tag or commit of [A-Za-z0-9._-]")
    repos = [repo] if "/" in repo else [repo, f"sentence-transformers/{repo}"]
    root = _cache_root(cache_dir)
    for candidate in repos:
        if _cached(_repo_folder(root, candidate, revision)):
            return _repo_folder(root, candidate, revision)
    typo = Path(repo).parent != Path(".") and Path(repo).parent.is_dir()  # in a local path?
    local = f" (and there is no local folder {repo} either)" if typo else ""
    where = f"{repo!r} (revision {revision}) is not in the cache {root}{local}"
    if _offline():
        raise HubError(f"{where} and HF_HUB_OFFLINE is set: unset it to download, {LOCAL_HINT}")
    for candidate in repos:
        try:
            return _download_repo(candidate, revision, _repo_folder(root, candidate, revision))
        except _RepoNotFound:
            continue
        except _Unreachable as e:
            raise HubError(f"{where} and {e}; check the network or HF_ENDPOINT, {LOCAL_HINT}") from e
    raise HubError(f"no repo {' or '.join(repos)} at {_endpoint()}{local} (HTTP 401/404 on "
                   f"config.json): check the name, set HF_TOKEN for a private repo, {LOCAL_HINT}")
