"""Sharded JSONL results of ``whisper-at batch``, written so that a crash never corrupts them.

A shard collects one JSON line per file in ``.results-NNNNN.jsonl.tmp`` and becomes
``results-NNNNN.jsonl`` by an atomic rename (after fsync) once it holds ``max_files`` lines or
has been open ``max_seconds``. Finished shards are never written again; a temporary shard left by
a killed run is deleted by the next run, whose resume skips the files of finished shards only.
One run at a time owns an output directory (an advisory lock, released by the OS on a crash).
"""

import json
import os
import re
import time
from typing import Dict, Iterator, Optional

from filelock import FileLock, Timeout

SHARD_PATTERN = re.compile(r"^results-(\d{5,})\.jsonl$")
TEMP_PATTERN = re.compile(r"^\.results-(\d{5,})\.jsonl\.tmp$")
LOCK_NAME = ".whisper-at-batch.lock"


def shard_name(index: int) -> str:
    return f"results-{index:05d}.jsonl"


def finished_shards(output_dir: str) -> list:
    """Paths of the finished shards in output_dir, in index order."""
    names = [n for n in os.listdir(output_dir) if SHARD_PATTERN.match(n)]
    names.sort(key=lambda n: int(SHARD_PATTERN.match(n).group(1)))
    return [os.path.join(output_dir, n) for n in names]


def shard_records(output_dir: str) -> Iterator[dict]:
    """Every record of every finished shard, in shard order."""
    for shard in finished_shards(output_dir):
        with open(shard, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def read_results(output_dir: str) -> Dict[str, dict]:
    """The final record of each file: path -> record (a later record replaces an earlier one,
    as when ``--retry_failed`` redoes a failed file)."""
    return {record["path"]: record for record in shard_records(output_dir)}


def completed(output_dir: str, retry_failed: bool = False) -> Dict[str, bool]:
    """Files with a record in a finished shard -> whether it succeeded (for ``--resume``);
    with ``retry_failed``, only successful files."""
    done = {}
    for record in shard_records(output_dir):
        ok = "error" not in record
        done[record["path"]] = done.get(record["path"], False) or ok
    return {path: ok for path, ok in done.items() if ok or not retry_failed}


def remove_temp_shards(output_dir: str) -> int:
    """Delete temporary shards left by an interrupted run; returns how many."""
    names = [n for n in os.listdir(output_dir) if TEMP_PATTERN.match(n)]
    for name in names:
        os.unlink(os.path.join(output_dir, name))
    return len(names)


def lock_output_dir(output_dir: str) -> FileLock:
    """Hold the output directory for this run (raises RuntimeError if another run has it)."""
    lock = FileLock(os.path.join(output_dir, LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RuntimeError(f"another whisper-at batch run is writing to {output_dir}") from None
    return lock


def _fsync_dir(path: str):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on this platform or file system
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ShardWriter:
    """Appends records to the current temporary shard and finishes shards atomically."""

    def __init__(self, output_dir: str, max_files: int = 100, max_seconds: float = 60.0):
        self.output_dir = output_dir
        self.max_files = max_files
        self.max_seconds = max_seconds
        shards = finished_shards(output_dir)
        last = SHARD_PATTERN.match(os.path.basename(shards[-1])).group(1) if shards else -1
        self.index = int(last) + 1
        self.file = None
        self.count = 0
        self.opened = 0.0

    @property
    def temp_path(self) -> str:
        return os.path.join(self.output_dir, "." + shard_name(self.index) + ".tmp")

    def write(self, record: dict):
        """Add one file's record; finishes the shard when it is full or old enough."""
        if self.file is None:
            self.file = open(self.temp_path, "x", encoding="utf-8")
            self.count, self.opened = 0, time.monotonic()
        self.file.write(json.dumps(record, ensure_ascii=False, default=jsonable) + "\n")
        self.count += 1
        if self.count >= self.max_files or time.monotonic() - self.opened >= self.max_seconds:
            self.finish()

    def finish(self) -> Optional[str]:
        """Close the current shard and rename it into place; its final path, if one was open."""
        if self.file is None:
            return None
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.file = None
        target = os.path.join(self.output_dir, shard_name(self.index))
        os.replace(self.temp_path, target)
        _fsync_dir(self.output_dir)
        self.index += 1
        return target


def jsonable(value):
    """JSON for numpy scalars and arrays, and tensors (as in word timestamps)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
