"""Official Whisper-AT head files: where they live, and a safe downloader."""

import hashlib
import http.client
import io
import os
import urllib.parse
import urllib.request
import warnings
from typing import Dict, Optional, Union

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
                _fetch(url, out, timeout, os.path.basename(target))
            if sha256 is not None and _sha256(tmp) != sha256:
                raise RuntimeError(
                    f"{url}: downloaded file's SHA256 does not match; not using it, please retry"
                )
    return target


def _fetch(url: str, out, timeout: float, desc: str) -> None:
    """Copy the body of ``url`` into the open file ``out``; errors name the URL."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as source:
            total = int(source.info().get("Content-Length") or 0) or None
            with tqdm(total=total, ncols=80, unit="iB", unit_scale=True, unit_divisor=1024,
                      desc=desc) as bar:  # fmt: skip
                for block in iter(lambda: source.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
    except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts
        raise RuntimeError(
            f"cannot download {url}: {e}. Offline? Pass at_head=PATH (a head file) to "
            "load_model; see docs/loading.md"
        ) from e
    if total is not None and out.tell() != total:
        raise RuntimeError(f"download of {url} truncated: {out.tell()} of {total} bytes")


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


def head_file(name: str, low_compute: bool, root: Optional[str] = None) -> str:
    """Path of the official head for model ``name``, downloaded into the cache if needed."""
    key = head_key(name, low_compute)
    if key not in HEAD_URLS:
        raise ValueError(f"no official Whisper-AT head {key!r}; available: {', '.join(HEAD_URLS)}")
    url = HEAD_URLS[key]
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    return download(url, os.path.join(root or default_cache_dir(), filename), HEAD_SHA256.get(key))


def load_head_file(name: str, low_compute: bool, root: Optional[str] = None) -> Dict[str, Tensor]:
    """The official head's state_dict. A cached file that does not load (e.g. one cut short by
    whisper-at <= 0.5, which downloaded in place, when no sha256 is known) is fetched again."""
    path = head_file(name, low_compute, root)
    stat = os.stat(path)
    try:
        return load_state_dict(path)
    except RuntimeError as e:
        warnings.warn(f"{e}; downloading {path} again", stacklevel=2)
    with _lock(path):  # unless another process has replaced it meanwhile
        if os.path.isfile(path) and os.stat(path).st_ino == stat.st_ino:
            os.remove(path)
    return load_state_dict(head_file(name, low_compute, root))
