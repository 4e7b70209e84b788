"""Official Whisper-AT head files: where they live (the official URLs, a mirror), and a safe
downloader."""

import hashlib
import http.client
import io
import os
import sys
import urllib.parse
import urllib.request
import warnings
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor
from tqdm import tqdm

from ..staging import atomic_path

# The official TL-TR ("_ori") and TL-TR-512 ("_low") heads released with Whisper-AT.
HEAD_URLS: Dict[str, str] = {
    "tiny.en": "https://www.dropbox.com/s/atq9so6w0qug5ai/tiny.en_ori.pth?dl=1",
    "tiny": "https://www.dropbox.com/s/cib4q4iz6g758l0/tiny_ori.pth?dl=1",
    "base.en": "https://www.dropbox.com/s/qtzgsbuquoz0afn/base.en_ori.pth?dl=1",
    "base": "https://www.dropbox.com/s/2odwh42u6e9ger7/base_ori.pth?dl=1",
    "small.en": "https://www.dropbox.com/s/cyx50ycl1ul7lji/small.en_ori.pth?dl=1",
    "small.en_low": "https://www.dropbox.com/s/507o66zgl8v6ddd/small.en_low.pth?dl=1",
    "small": "https://www.dropbox.com/s/jftj9s0kr4ycvr1/small_ori.pth?dl=1",
    "small_low": "https://www.dropbox.com/s/a1x0416v58f7wrf/small_low.pth?dl=1",
    "medium.en": "https://www.dropbox.com/s/bbvylvmgns8ja4p/medium.en_ori.pth?dl=1",
    "medium.en_low": "https://www.dropbox.com/s/2q5wprr8f9gti5t/medium.en_low.pth?dl=1",
    "medium": "https://www.dropbox.com/s/65aabayr7o819az/medium_ori.pth?dl=1",
    "medium_low": "https://www.dropbox.com/s/0mnfmcasram4n6o/medium_low.pth?dl=1",
    "large-v1": "https://www.dropbox.com/s/b8x2en1fdzc8nhk/large-v1_ori.pth?dl=1",
    "large-v1_low": "https://www.dropbox.com/s/5o79h70wyla8jlk/large-v1_low.pth?dl=1",
    "large-v2": "https://www.dropbox.com/s/3zxpyvdrxy22eq7/large-v2_ori.pth?dl=1",
    "large-v2_low": "https://www.dropbox.com/s/jw2rh4uylhqgn85/large-v2_low.pth?dl=1",
    "large": "https://www.dropbox.com/s/3zxpyvdrxy22eq7/large-v2_ori.pth?dl=1",
    "large_low": "https://www.dropbox.com/s/jw2rh4uylhqgn85/large-v2_low.pth?dl=1",
}

# sha256 of head files, where known (the 2023 release published none; add them as verified).
HEAD_SHA256: Dict[str, str] = {}

# A base URL (http, https, file) or directory holding the head files under their official names
# (tiny.en_ori.pth, small_low.pth, ...), tried before the official URL; see docs/loading.md.
MIRROR_ENV = "WHISPER_AT_HEAD_MIRROR"
_OFFLINE_HINT = (
    "Offline? Pass a head file (load_model(..., at_head=PATH); on the command line "
    "--at_head PATH), or a mirror holding it (at_head_mirror=URL_OR_DIR, --at_head_mirror, "
    f"or ${MIRROR_ENV}); see docs/loading.md"
)


def _lock(path: str):
    """An inter-process lock beside path (filelock is imported on first use)."""
    from filelock import FileLock

    return FileLock(path + ".lock")


def head_key(name: str, low_compute: bool) -> str:
    return f"{name}_low" if low_compute else name


def default_cache_dir() -> str:
    """openai-whisper's model cache, so heads sit beside the backbones."""
    default = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.getenv("XDG_CACHE_HOME", default), "whisper")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, target: str, sha256: Optional[str] = None, timeout: float = 60) -> str:
    """Download ``url`` to ``target`` atomically (temp file + rename), under a file lock.

    A cached file is reused only if its sha256 matches (when known); a truncated or mismatching
    download is deleted and reported, never kept. ``timeout``: seconds without data before
    giving up.
    """
    directory = os.path.dirname(os.path.abspath(target))
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(target) and not os.path.isfile(target):
        raise RuntimeError(f"{target} exists and is not a regular file")
    with _lock(target):
        if os.path.isfile(target):
            if sha256 is None or _sha256(target) == sha256:
                return target
            warnings.warn(f"{target}: SHA256 does not match; downloading it again", stacklevel=2)
            os.remove(target)
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as out:
                digest = _fetch(url, out, timeout, os.path.basename(target))
            if sha256 is not None and digest != sha256:
                raise RuntimeError(
                    f"{url}: downloaded file's SHA256 does not match; not using it, please retry"
                )
        check = "matches the known sha256" if sha256 else "compare it with another copy's"
        print(f"whisper-at: {os.path.basename(target)} sha256 {digest} (downloaded from "
              f"{_without_query(url)}; {check})", file=sys.stderr, flush=True)
    return target


def _without_query(url: str) -> str:
    return urllib.parse.urlparse(url)._replace(query="", fragment="").geturl()


def _fetch(url: str, out, timeout: float, desc: str) -> str:
    """Copy the body of ``url`` into the open file ``out``; returns its sha256 (hex). Errors
    name the URL."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as source:
            total = int(source.info().get("Content-Length") or 0) or None
            with tqdm(total=total, ncols=80, unit="iB", unit_scale=True, unit_divisor=1024,
                      desc=desc) as bar:  # fmt: skip
                for block in iter(lambda: source.read(1 << 16), b""):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts
        raise RuntimeError(f"cannot download {url}: {e}") from e
    if total is not None and out.tell() != total:
        raise RuntimeError(f"download of {url} truncated: {out.tell()} of {total} bytes")
    return digest.hexdigest()


def load_state_dict(source: Union[str, bytes, os.PathLike]) -> Dict[str, Tensor]:
    """Load a checkpoint's tensors safely: ``torch.load(weights_only=True)``, which never runs
    pickled code, or safetensors. Refused, corrupt or truncated files raise RuntimeError."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            raise IsADirectoryError(f"expected a checkpoint file, got a directory: {path}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if path.endswith(".safetensors"):
            return _load_safetensors(path)
        handle = open(path, "rb")
    else:
        path, handle = "<bytes>", io.BytesIO(source)
    with handle:
        try:
            return torch.load(handle, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
            raise RuntimeError(
                f"refusing to load {path}: not a plain weights checkpoint (corrupt or truncated, "
                f"or it holds pickled Python objects or code, which are never unpickled): "
                f"{_load_error_detail(e)}"
            ) from e


def _load_error_detail(error: Exception) -> str:
    """The reason in torch's weights_only error, without its advice to unpickle anyway."""
    text = str(error).split("WeightsUnpickler error:")[-1]
    generic = ("Weights only load failed", "Check the documentation")
    paragraphs = [p for p in text.split("\n\n") if p.strip() and not p.startswith(generic)]
    return " ".join(" ".join(paragraphs).split()).split(" Please use")[0][:200]


def _load_safetensors(path: str) -> Dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise RuntimeError(f"{path}: `pip install safetensors` to read it") from None
    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...
        raise RuntimeError(f"cannot load {path}: corrupt or not a safetensors file: {e}") from e


def head_mirror(mirror: Optional[str] = None) -> Optional[str]:
    """The head mirror in effect: ``mirror``, else $WHISPER_AT_HEAD_MIRROR; "" means none."""
    value = os.environ.get(MIRROR_ENV, "") if mirror is None else os.fspath(mirror)
    return value.strip() or None


def _mirror_location(mirror: str, filename: str) -> str:
    """The URL or local path of ``filename`` on the mirror (file: URLs are local paths)."""
    parsed = urllib.parse.urlparse(mirror)
    if parsed.scheme in ("http", "https"):
        return f"{mirror.rstrip('/')}/{filename}"
    if parsed.scheme == "file":
        return os.path.join(urllib.request.url2pathname(parsed.path), filename)
    if len(parsed.scheme) > 1:  # one letter: a Windows drive
        raise ValueError(
            f"head mirror {mirror!r}: unsupported URL scheme {parsed.scheme!r}; "
            "give an http(s):// or file:// URL, or a directory"
        )
    return os.path.join(os.path.expanduser(mirror), filename)


def head_sources(name: str, low_compute: bool, mirror: Optional[str] = None) -> List[str]:
    """Where the official head for model ``name`` is looked for, in order: the mirror's copy
    (a URL or a local path), then the official URL."""
    key = head_key(name, low_compute)
    if key not in HEAD_URLS:
        raise ValueError(f"no official Whisper-AT head {key!r}; available: {', '.join(HEAD_URLS)}")
    mirror = head_mirror(mirror)
    url = HEAD_URLS[key]
    return ([_mirror_location(mirror, _filename(url))] if mirror else []) + [url]


def _filename(url: str) -> str:
    """The head's file name: its official URL's (tiny.en_ori.pth), in the cache and mirrors."""
    return os.path.basename(urllib.parse.urlparse(url).path)


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _local_head(path: str, sha256: Optional[str]) -> str:
    """A mirror's local head file, checked against the known sha256 (when known)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: {'not a file' if os.path.exists(path) else 'not found'}")
    if sha256 is not None and _sha256(path) != sha256:
        raise RuntimeError(f"{path}: SHA256 does not match the known one; not using it")
    return path


def _fetch_head(source: str, target: str, sha256: Optional[str]) -> str:
    """The head file from one source: a local path as it is, a URL downloaded to ``target``."""
    return download(source, target, sha256) if _is_url(source) else _local_head(source, sha256)


def _load_head(source: str, target: str, sha256: Optional[str]) -> Dict[str, Tensor]:
    """The head's state_dict from one source. A downloaded file that does not load is deleted
    and fetched again, once (a cached one may have been cut short by whisper-at <= 0.5, which
    downloaded in place, when no sha256 is known); so no file that does not load is kept."""
    if not _is_url(source):
        return load_state_dict(_local_head(source, sha256))
    for again in (False, True):
        path = download(source, target, sha256)
        stat = os.stat(path)
        try:
            return load_state_dict(path)
        except RuntimeError as e:
            with _lock(path):  # unless another process has replaced it meanwhile
                if os.path.isfile(path) and os.stat(path).st_ino == stat.st_ino:
                    os.remove(path)
            if again:
                raise
            warnings.warn(f"{e}; downloading {path} again", stacklevel=3)


def _first_source(name: str, low_compute: bool, root: Optional[str], mirror: Optional[str],
                  get):  # fmt: skip
    """``get(source, target, sha256)`` for each source in turn, until one works; the failure
    lists every place tried, and a failing source followed by another is warned about."""
    key = head_key(name, low_compute)
    sources = head_sources(name, low_compute, mirror)
    target = os.path.join(root or default_cache_dir(), _filename(sources[-1]))
    failures: List[Tuple[str, Exception]] = []
    for i, source in enumerate(sources):
        try:
            return get(source, target, HEAD_SHA256.get(key))
        except (OSError, RuntimeError) as e:
            failures.append((_without_query(source), e))
            if i + 1 < len(sources):
                following = _without_query(sources[i + 1])
                warnings.warn(f"{_reason(*failures[-1])}; trying {following}", stacklevel=3)
    tried = "; ".join(f"({i}) {_reason(source, e)}" for i, (source, e) in enumerate(failures, 1))
    raise RuntimeError(
        f"cannot get the Whisper-AT head {os.path.basename(target)}; tried {tried}. {_OFFLINE_HINT}"
    ) from failures[-1][1]


def _reason(source: str, error: Exception) -> str:
    """One line saying what went wrong with a source, naming it."""
    message = " ".join(str(error).split()) or type(error).__name__
    return message if source in message else f"{source}: {message}"


def head_file(name: str, low_compute: bool, root: Optional[str] = None,
              mirror: Optional[str] = None) -> str:  # fmt: skip
    """Path of the official head for model ``name``: the mirror's copy if it is a local
    directory, else the cached download (downloaded if needed) from the mirror or the official
    URL, in that order (``mirror``: None for $WHISPER_AT_HEAD_MIRROR)."""
    return _first_source(name, low_compute, root, mirror, _fetch_head)


def load_head_file(name: str, low_compute: bool, root: Optional[str] = None,
                   mirror: Optional[str] = None) -> Dict[str, Tensor]:  # fmt: skip
    """The official head's state_dict, from the first place in ``head_sources`` that has a
    file that loads (see ``head_file``)."""
    return _first_source(name, low_compute, root, mirror, _load_head)
