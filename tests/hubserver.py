"""A tiny stand-in for the Hugging Face hub on 127.0.0.1, for tests that must not touch the network.

`with serve_folder(root) as hub:` serves the files under `root` at `hub.url + "/<relative path>"`,
so a model folder written to `root/<owner>/<name>/resolve/main/` is the repo `<owner>/<name>`
(`write_repo` does that). `hub` records every request and can be told to misbehave: 404 a path,
302-redirect it elsewhere, cut its body off, or send a wrong sha256 ETag. Used by test_hub.py.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class HubServer:
    root: Path
    url: str = ""
    requests: list = field(default_factory=list)  # (path, {header: value}) in arrival order
    not_found: set = field(default_factory=set)  # paths answered 404 although the file exists
    redirects: dict = field(default_factory=dict)  # path -> target (path or full URL), sent as 302
    cut_off: set = field(default_factory=set)  # paths whose body stops halfway, then EOF
    wrong_sha256: set = field(default_factory=set)  # paths sent with a sha256 ETag that does not match
    send_sha256: bool = False  # send the right sha256 as ETag, and as X-Linked-Etag on redirects

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


def write_repo(root: Path, repo: str, files: dict[str, bytes], revision: str = "main") -> Path:
    """Write files {relative name: bytes} as repo `repo` of the server rooted at root."""
    folder = Path(root) / repo / "resolve" / revision
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def copy_repo(root: Path, repo: str, source: Path, revision: str = "main") -> Path:
    """Serve an existing model folder (e.g. one written by SentenceTransformer.save) as `repo`."""
    folder = Path(root) / repo / "resolve" / revision
    shutil.copytree(source, folder, dirs_exist_ok=True)
    return folder


def _handler(hub: HubServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?", 1)[0]
            hub.requests.append((path, dict(self.headers.items())))
            file = hub.root / path.lstrip("/")
            if path in hub.redirects:
                target = hub.redirects[path]
                self.send_response(302)
                self.send_header("Location", target)
                self._etag("X-Linked-Etag", path, hub.root / target.lstrip("/"))
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path in hub.not_found or not file.is_file() or ".." in path:
                self.send_error(404)
            else:
                data = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self._etag("ETag", path, file)
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if path in hub.cut_off else data)
                self.close_connection = True

        def _etag(self, header: str, path: str, file: Path):
            if path in hub.wrong_sha256:
                self.send_header(header, 'W/"' + "0" * 64 + '"')
            elif hub.send_sha256 and file.is_file():
                self.send_header(header, '"' + hashlib.sha256(file.read_bytes()).hexdigest() + '"')

        def log_message(self, *args):
            pass

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # so that server_close() joins every request thread


@contextlib.contextmanager
def serve_folder(root: Path):
    """Serve root on 127.0.0.1 (a free port) in a thread; stopped and joined on exit."""
    hub = HubServer(Path(root))
    server = _Server(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
