"""whisper_at.formats.weights downloads against a local HTTP server (127.0.0.1, a thread).

The server serves real files (a converted tiny.en checkpoint, a TL-TR head) and can lie about
Content-Length or send slowly; HEAD_URLS / HEAD_SHA256 (and openai-whisper's _MODELS) are
pointed at it with monkeypatch, so the real download code runs end to end.
"""

import hashlib
import multiprocessing
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
import whisper

import whisper_at
from whisper_at.formats import weights


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        path = self.path.split("?")[0]
        self.server.hits.append(path)
        if path not in self.server.routes:
            self.send_error(404)
            return
        body, extra_length, delay = self.server.routes[path]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) + extra_length))
        self.end_headers()
        step = -(-len(body) // 4)
        for start in range(0, len(body), step):  # in 4 pieces, `delay` s apart
            self.wfile.write(body[start : start + step])
            self.wfile.flush()
            time.sleep(delay)

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: Dict[str, Tuple[bytes, int, float]] = {}
        self.hits: List[str] = []

    def serve(self, path: str, body: bytes, extra_length: int = 0, delay: float = 0.0) -> str:
        """Serve body at path (announcing extra_length more bytes than sent); returns a URL with
        a query string, as the official Dropbox links have."""
        self.routes[path] = (body, extra_length, delay)
        return f"http://127.0.0.1:{self.server_address[1]}{path}?dl=1"


@pytest.fixture
def server():
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def head_bytes(tiny_head_file: Path) -> bytes:
    return tiny_head_file.read_bytes()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cache_files(root: Path) -> List[str]:
    """Files in the cache other than (empty) lock files."""
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def _point_tiny_at(monkeypatch, url: str, sha256=None) -> None:
    monkeypatch.setitem(weights.HEAD_URLS, "tiny", url)
    if sha256 is None:
        monkeypatch.delitem(weights.HEAD_SHA256, "tiny", raising=False)
    else:
        monkeypatch.setitem(weights.HEAD_SHA256, "tiny", sha256)


def test_load_model_downloads_backbone_and_head(
    server, monkeypatch, tmp_path, tiny_en_pt, tiny_head_file
):
    backbone = tiny_en_pt.read_bytes()  # openai-whisper checks the sha256 in the URL path
    url = server.serve(f"/{_sha256(backbone)}/t.pt", backbone).split("?")[0]
    monkeypatch.setitem(whisper._MODELS, "tiny.en", url)
    head = tiny_head_file.read_bytes()
    monkeypatch.setitem(weights.HEAD_URLS, "tiny.en", server.serve("/s/x/tiny.en_ori.pth", head))
    monkeypatch.setitem(weights.HEAD_SHA256, "tiny.en", _sha256(head))

    model = whisper_at.load_model("tiny.en", device="cpu", download_root=str(tmp_path))
    assert _cache_files(tmp_path) == ["t.pt", "tiny.en_ori.pth"]
    assert (tmp_path / "tiny.en_ori.pth").read_bytes() == head
    assert (tmp_path / "tiny.en_ori.pth").stat().st_mode & 0o777 == 0o644
    expected = weights.load_state_dict(tiny_head_file)
    for key, value in model.at_model.state_dict().items():
        assert torch.equal(value, expected[f"at_model.{key}"]), key
    served = torch.load(tiny_en_pt, map_location="cpu", weights_only=True)["model_state_dict"]
    for key, value in model.state_dict().items():
        if not key.startswith("at_model."):
            assert torch.equal(value, served[key].float()), key

    whisper_at.load_model("tiny.en", device="cpu", download_root=str(tmp_path))
    assert len(server.hits) == 2  # the second load used the cache


def test_truncated_download_leaves_nothing(server, monkeypatch, tmp_path, head_bytes):
    _point_tiny_at(monkeypatch, server.serve("/s/x/tiny_ori.pth", head_bytes, extra_length=1000))
    size = len(head_bytes)
    with pytest.raises(RuntimeError, match=f"tiny_ori.pth.* truncated: {size} of {size + 1000}"):
        weights.head_file("tiny", False, str(tmp_path))
    assert _cache_files(tmp_path) == []


def test_wrong_sha256_keeps_nothing(server, monkeypatch, tmp_path, head_bytes):
    _point_tiny_at(monkeypatch, server.serve("/s/x/tiny_ori.pth", head_bytes), "0" * 64)
    with pytest.raises(RuntimeError, match="SHA256 does not match"):
        weights.head_file("tiny", False, str(tmp_path))
    assert _cache_files(tmp_path) == []


def test_http_error_names_url_and_offline_use(server, monkeypatch, tmp_path):
    url = server.serve("/s/x/other.pth", b"")
    _point_tiny_at(monkeypatch, url.replace("other", "tiny_ori"))
    del server.routes["/s/x/other.pth"]
    with pytest.raises(RuntimeError, match=r"cannot download http://127\.0\.0\.1.*404.*at_head"):
        weights.head_file("tiny", False, str(tmp_path))
    assert _cache_files(tmp_path) == []


def test_corrupt_cached_file_with_known_sha_is_downloaded_again(
    server, monkeypatch, tmp_path, head_bytes
):
    _point_tiny_at(monkeypatch, server.serve("/s/x/tiny_ori.pth", head_bytes), _sha256(head_bytes))
    cached = tmp_path / "tiny_ori.pth"
    cached.write_bytes(head_bytes[: len(head_bytes) // 2])
    with pytest.warns(UserWarning, match="SHA256 does not match; downloading it again"):
        assert weights.head_file("tiny", False, str(tmp_path)) == str(cached)
    assert cached.read_bytes() == head_bytes and len(server.hits) == 1
    weights.head_file("tiny", False, str(tmp_path))  # now valid: not fetched again
    assert len(server.hits) == 1


def test_unloadable_cached_file_without_sha_is_downloaded_again(
    server, monkeypatch, tmp_path, head_bytes
):
    """whisper-at 0.5 wrote heads in place, so an interrupted download left a cut file."""
    _point_tiny_at(monkeypatch, server.serve("/s/x/tiny_ori.pth", head_bytes))
    cached = tmp_path / "tiny_ori.pth"
    cached.write_bytes(head_bytes[: len(head_bytes) // 2])
    with pytest.warns(UserWarning, match="downloading .*tiny_ori.pth again"):
        state = weights.load_head_file("tiny", False, str(tmp_path))
    assert "at_model.mlp_layer.1.weight" in state and cached.read_bytes() == head_bytes
    assert len(server.hits) == 1


def _download_and_load(root: str, start, results) -> None:
    start.wait()
    try:
        state = weights.load_state_dict(weights.head_file("tiny", False, root))
        results.put(("ok", len(state)))
    except BaseException as e:  # report to the parent instead of dying silently
        results.put(("error", repr(e)))


def test_two_processes_download_once(server, monkeypatch, tmp_path, head_bytes):
    # sent in 4 pieces 0.3 s apart: the second process reaches the lock mid-download
    url = server.serve("/s/x/tiny_ori.pth", head_bytes, delay=0.3)
    _point_tiny_at(monkeypatch, url, _sha256(head_bytes))
    context = multiprocessing.get_context("fork")  # children inherit the patched HEAD_URLS
    start, results = context.Event(), context.Queue()
    workers = [
        context.Process(target=_download_and_load, args=(str(tmp_path), start, results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    start.set()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    n_keys = len(weights.load_state_dict(head_bytes))
    assert outcomes == [("ok", n_keys)] * 2
    assert _cache_files(tmp_path) == ["tiny_ori.pth"]
    assert (tmp_path / "tiny_ori.pth").read_bytes() == head_bytes
    assert server.hits == ["/s/x/tiny_ori.pth"]  # the lock made the second process wait
