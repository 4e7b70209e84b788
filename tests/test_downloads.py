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


# ---------------------------------------------------------------- mirrors

UNREACHABLE = "http://127.0.0.1:9/s/x/tiny_ori.pth?dl=1"  # the discard port: connection refused


@pytest.fixture
def no_env_mirror(monkeypatch):
    monkeypatch.delenv(weights.MIRROR_ENV, raising=False)


@pytest.fixture
def mirror_dir(tmp_path, head_bytes) -> Path:
    """A directory mirror holding tiny_ori.pth."""
    directory = tmp_path / "mirror"
    directory.mkdir()
    (directory / "tiny_ori.pth").write_bytes(head_bytes)
    return directory


@pytest.fixture
def offline_tiny_en(monkeypatch, tmp_path, tiny_en_pt, tiny_head_file, mirror_dir) -> Path:
    """tiny.en's backbone in a cache directory (returned), its head in mirror_dir, and both
    official URLs unreachable."""
    (mirror_dir / "tiny.en_ori.pth").write_bytes(tiny_head_file.read_bytes())
    backbone = tiny_en_pt.read_bytes()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "t.pt").write_bytes(backbone)
    monkeypatch.setitem(whisper._MODELS, "tiny.en", f"http://127.0.0.1:9/{_sha256(backbone)}/t.pt")
    monkeypatch.setitem(weights.HEAD_URLS, "tiny.en", UNREACHABLE.replace("tiny_", "tiny.en_"))
    return cache


def _printed_sha256(err: str, name: str) -> List[str]:
    return [line.split(" sha256 ")[1].split()[0] for line in err.splitlines()
            if line.startswith(f"whisper-at: {name} sha256 ")]


def test_url_mirror_is_tried_first_and_the_sha256_printed(
    server, monkeypatch, tmp_path, head_bytes, capsys, no_env_mirror
):
    _point_tiny_at(monkeypatch, server.serve("/s/x/tiny_ori.pth", head_bytes))
    server.serve("/heads/tiny_ori.pth", head_bytes)
    base = f"http://127.0.0.1:{server.server_address[1]}/heads/"
    assert weights.head_sources("tiny", False, base) == [
        base + "tiny_ori.pth", weights.HEAD_URLS["tiny"]]
    cache = tmp_path / "cache"
    path = weights.head_file("tiny", False, str(cache), mirror=base)
    assert path == str(cache / "tiny_ori.pth") and Path(path).read_bytes() == head_bytes
    assert server.hits == ["/heads/tiny_ori.pth"]  # the official URL was not needed
    err = capsys.readouterr().err
    assert _printed_sha256(err, "tiny_ori.pth") == [_sha256(head_bytes)]
    assert f"downloaded from {base}tiny_ori.pth; compare it with another copy's" in err
    weights.head_file("tiny", False, str(cache), mirror=base)  # cached: no download, no line
    assert len(server.hits) == 1 and _printed_sha256(capsys.readouterr().err, "tiny_ori.pth") == []


def test_known_sha256_is_printed_as_matching(server, monkeypatch, tmp_path, head_bytes, capsys,
                                             no_env_mirror):
    _point_tiny_at(monkeypatch, server.serve("/s/x/tiny_ori.pth", head_bytes), _sha256(head_bytes))
    weights.head_file("tiny", False, str(tmp_path))
    err = capsys.readouterr().err
    assert _printed_sha256(err, "tiny_ori.pth") == [_sha256(head_bytes)]
    assert "matches the known sha256" in err and "?dl=1" not in err


def test_environment_variable_sets_the_mirror_and_the_argument_overrides_it(
    server, monkeypatch, tmp_path, head_bytes, mirror_dir
):
    _point_tiny_at(monkeypatch, server.serve("/s/x/tiny_ori.pth", head_bytes))
    monkeypatch.setenv(weights.MIRROR_ENV, str(mirror_dir))
    assert weights.head_file("tiny", False, str(tmp_path)) == str(mirror_dir / "tiny_ori.pth")
    assert server.hits == []
    server.serve("/heads/tiny_ori.pth", head_bytes)
    base = f"http://127.0.0.1:{server.server_address[1]}/heads"  # no trailing slash
    weights.head_file("tiny", False, str(tmp_path / "a"), mirror=base)
    assert server.hits == ["/heads/tiny_ori.pth"]
    weights.head_file("tiny", False, str(tmp_path / "b"), mirror="")  # "": no mirror
    assert server.hits == ["/heads/tiny_ori.pth", "/s/x/tiny_ori.pth"]


def test_directory_mirror_needs_no_network(offline_tiny_en, tiny_head_file, mirror_dir, capsys,
                                           no_env_mirror):
    """load_model("tiny.en") with the backbone in the cache and the head in a directory mirror
    (as a path and as a file: URL): the official URLs are unreachable and never needed."""
    cache = offline_tiny_en
    expected = weights.load_state_dict(tiny_head_file)
    for mirror in (str(mirror_dir), mirror_dir.as_uri()):
        model = whisper_at.load_model("tiny.en", device="cpu", download_root=str(cache),
                                      at_head_mirror=mirror)
        for key, value in model.at_model.state_dict().items():
            assert torch.equal(value, expected[f"at_model.{key}"]), key
    assert _cache_files(cache) == ["t.pt"]  # the mirror's file is used where it is
    assert " sha256 " not in capsys.readouterr().err  # nothing was downloaded


def test_missing_mirror_file_falls_back_to_the_official_url(
    server, monkeypatch, tmp_path, head_bytes, no_env_mirror
):
    _point_tiny_at(monkeypatch, server.serve("/s/x/tiny_ori.pth", head_bytes))
    base = f"http://127.0.0.1:{server.server_address[1]}/heads/"
    with pytest.warns(UserWarning, match=rf"cannot download {base}tiny_ori.pth: HTTP Error 404"
                                         r".*; trying http://127\.0\.0\.1:\d+/s/x/tiny_ori.pth$"):
        state = weights.load_head_file("tiny", False, str(tmp_path), mirror=base)
    assert len(state) == len(weights.load_state_dict(head_bytes))
    assert server.hits == ["/heads/tiny_ori.pth", "/s/x/tiny_ori.pth"]
    assert _cache_files(tmp_path) == ["tiny_ori.pth"]


def test_corrupt_or_truncated_mirror_files_fall_back_and_leave_nothing(
    server, monkeypatch, tmp_path, head_bytes, mirror_dir, no_env_mirror
):
    _point_tiny_at(monkeypatch, server.serve("/s/x/tiny_ori.pth", head_bytes))
    cut = head_bytes[: len(head_bytes) // 2]
    (mirror_dir / "tiny_ori.pth").write_bytes(cut)
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="refusing to load .*mirror/tiny_ori.pth.*; trying"):
        weights.load_head_file("tiny", False, str(cache), mirror=str(mirror_dir))
    assert (mirror_dir / "tiny_ori.pth").read_bytes() == cut  # the user's file is left alone
    assert (cache / "tiny_ori.pth").read_bytes() == head_bytes

    # a mirror that sends less than it announces: the partial file is deleted, not cached
    server.serve("/heads/tiny_ori.pth", head_bytes, extra_length=1000)
    base = f"http://127.0.0.1:{server.server_address[1]}/heads/"
    other = tmp_path / "other"
    with pytest.warns(UserWarning, match="truncated.*; trying"):
        assert weights.head_file("tiny", False, str(other), mirror=base).endswith("tiny_ori.pth")
    assert _cache_files(other) == ["tiny_ori.pth"]
    assert (other / "tiny_ori.pth").read_bytes() == head_bytes


def test_mirror_file_with_wrong_known_sha256_is_not_used(
    server, monkeypatch, tmp_path, head_bytes, mirror_dir, no_env_mirror
):
    _point_tiny_at(monkeypatch, server.serve("/s/x/tiny_ori.pth", head_bytes), _sha256(head_bytes))
    (mirror_dir / "tiny_ori.pth").write_bytes(head_bytes + b"x")
    with pytest.warns(UserWarning, match="SHA256 does not match the known one"):
        path = weights.head_file("tiny", False, str(tmp_path / "cache"), mirror=str(mirror_dir))
    assert Path(path).read_bytes() == head_bytes and server.hits == ["/s/x/tiny_ori.pth"]


def test_failure_lists_every_place_tried(server, monkeypatch, tmp_path, mirror_dir,
                                         no_env_mirror):
    _point_tiny_at(monkeypatch, server.serve("/s/x/gone.pth", b"").replace("gone", "tiny_ori"))
    (mirror_dir / "tiny_ori.pth").unlink()
    with pytest.warns(UserWarning), pytest.raises(RuntimeError) as info:
        whisper_at.load_model("tiny", device="cpu", download_root=str(tmp_path / "cache"),
                              at_head_mirror=str(mirror_dir))
    message = str(info.value)
    assert message.startswith("cannot get the Whisper-AT head tiny_ori.pth; tried "
                              f"(1) {mirror_dir / 'tiny_ori.pth'}: not found; (2) cannot download "
                              f"http://127.0.0.1:{server.server_address[1]}/s/x/tiny_ori.pth?dl=1: "
                              "HTTP Error 404")
    assert "at_head=PATH" in message and "--at_head PATH" in message
    assert weights.MIRROR_ENV in message
    assert not (tmp_path / "cache").exists() or _cache_files(tmp_path / "cache") == []


def test_unsupported_mirror_scheme_is_refused(no_env_mirror):
    with pytest.raises(ValueError, match=r"head mirror 's3://bucket/heads': unsupported URL "
                                         r"scheme 's3'; give an http\(s\):// or file:// URL"):
        whisper_at.load_model("tiny", at_head_mirror="s3://bucket/heads")


def test_mirror_option_of_the_commands(offline_tiny_en, tmp_path, mirror_dir, speech_wav,
                                       no_env_mirror):
    """`whisper-at tag --at_head_mirror DIR` loads an official model name offline; batch and
    serve take the option too."""
    from whisper_at import cli, serve
    from whisper_at.jobs import batch

    cache = offline_tiny_en
    out = tmp_path / "tags.jsonl"
    argv = ["tag", str(speech_wav), "--model", "tiny.en", "--model_dir", str(cache),
            "--at_head_mirror", str(mirror_dir), "--output", str(out), "--verbose", "False"]
    assert cli.main(argv) == 0
    assert '"tags"' in out.read_text()
    argv = [str(speech_wav), str(tmp_path), "--at_head_mirror", str(mirror_dir)]
    assert batch.build_parser().parse_args(argv).at_head_mirror == str(mirror_dir)
    model, _ = serve.ModelCache({}, "cpu", str(cache), str(mirror_dir)).get("tiny.en")
    assert model.has_at_head


def test_documented_mirror_filling_snippet_runs(server, monkeypatch, tmp_path, head_bytes,
                                                capsys):
    """docs/loading.md's "Hosting a mirror" Python, with HEAD_URLS pointed at the local server;
    the directory it fills is a working mirror."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "loading.md").read_text()
    section = text[text.index("**Hosting a mirror.**"):]
    snippet = section[section.index("```python\n") + 10 : section.index("\n```\n")]
    urls = {key: server.serve(f"/s/{i}/{key}_ori.pth", head_bytes)
            for i, key in enumerate(("tiny", "base"))}
    urls["tiny.en"] = urls["tiny"]  # two names, one file: downloaded once
    monkeypatch.setattr(weights, "HEAD_URLS", urls)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "loading.md", "exec"), {})
    assert sorted(server.hits) == ["/s/0/tiny_ori.pth", "/s/1/base_ori.pth"]
    assert _cache_files(tmp_path / "heads") == ["base_ori.pth", "tiny_ori.pth"]
    assert _printed_sha256(capsys.readouterr().err, "base_ori.pth") == [_sha256(head_bytes)]
    path = weights.head_file("base", False, str(tmp_path / "cache"), str(tmp_path / "heads"))
    assert path == str(tmp_path / "heads" / "base_ori.pth") and len(server.hits) == 2


def test_mirror_serving_something_else_is_not_cached(server, monkeypatch, tmp_path, head_bytes,
                                                     no_env_mirror):
    """A mirror answering 200 with an HTML page: the page is downloaded, refused, fetched once
    more, refused, deleted; the official URL serves the head. If it too serves junk, the error
    lists both and nothing stays in the cache."""
    page = b"<html><body>Please sign in</body></html>"
    official = server.serve("/s/x/tiny_ori.pth", head_bytes)
    _point_tiny_at(monkeypatch, official)
    server.serve("/heads/tiny_ori.pth", page)
    base = f"http://127.0.0.1:{server.server_address[1]}/heads/"
    with pytest.warns(UserWarning, match="refusing to load"):
        weights.load_head_file("tiny", False, str(tmp_path / "a"), mirror=base)
    assert server.hits == ["/heads/tiny_ori.pth"] * 2 + ["/s/x/tiny_ori.pth"]
    assert (tmp_path / "a" / "tiny_ori.pth").read_bytes() == head_bytes
    server.serve("/s/x/tiny_ori.pth", page)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match=(
        r"tried \(1\) http://\S+/heads/tiny_ori.pth: refusing to load .*; "
        r"\(2\) http://\S+/s/x/tiny_ori.pth: refusing to load ")):
        weights.load_head_file("tiny", False, str(tmp_path / "b"), mirror=base)
    assert _cache_files(tmp_path / "b") == []
