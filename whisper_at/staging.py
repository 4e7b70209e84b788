"""Writing outputs so that they appear whole or not at all: ``atomic_path`` for one file, staging
directories for a set of files (written inside one, then renamed into place).

A staging directory's name carries its owner (PID, host, boot and PID namespace), so the ones
left behind by killed processes can be told from those of live writers and removed.
"""

import hashlib
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator, Union

STAGE_PREFIX = ".whisper-at-stage-"  # + "<pid>@<machine>-<random>": owner of a staging dir
_swept = set()  # output directories this process has already cleaned


@contextmanager
def atomic_path(path: Union[str, "os.PathLike[str]"]) -> Iterator[str]:
    """A temporary path beside ``path`` (same extension) for the block to write; if the block
    succeeds, the file is fsynced, made readable (0644) and renamed to ``path``; if not, removed."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    suffix = os.path.splitext(name)[1] or ".tmp"  # np.save appends .npy to names without it
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(directory, name))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@lru_cache(maxsize=None)
def _machine() -> str:
    """This host and PID namespace, as a name part: a PID means this process only here."""
    name = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"
    try:  # boot and PID namespace: containers and reboots with the same host name differ
        with open("/proc/sys/kernel/random/boot_id") as f:
            ids = f.read().strip() + os.readlink("/proc/self/ns/pid")
        name += "~" + hashlib.sha1(ids.encode()).hexdigest()[:8]
    except OSError:
        pass
    return name


def _alive(pid: int) -> bool:
    if pid <= 0 or os.name == "nt":  # on Windows os.kill would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user
        return True
    return True


def remove_stale_stages(output_dir: str):
    """Remove the staging directories in output_dir left by processes of this machine that
    are gone (killed while writing); once per process and directory. Directories of other
    machines, of live processes and of other names are left alone."""
    key = os.path.realpath(output_dir)
    if key in _swept:
        return
    if len(_swept) > 10000:  # a long-lived process writing to many directories (serve)
        _swept.clear()
    _swept.add(key)
    pattern = re.compile(re.escape(STAGE_PREFIX) + r"(\d+)@(.+)-[^-]+")
    try:
        entries = list(os.scandir(output_dir))
    except OSError:
        return
    for entry in entries:
        owner = pattern.fullmatch(entry.name)
        try:
            if (
                owner
                and owner.group(2) == _machine()
                and not _alive(int(owner.group(1)))
                and entry.is_dir(follow_symlinks=False)
            ):
                shutil.rmtree(entry.path, ignore_errors=True)  # others may be removing it too
        except OSError:
            pass


def make_stage(output_dir: str) -> str:
    """A new staging directory in output_dir (after removing stale ones)."""
    remove_stale_stages(output_dir)
    return tempfile.mkdtemp(dir=output_dir, prefix=f"{STAGE_PREFIX}{os.getpid()}@{_machine()}-")
