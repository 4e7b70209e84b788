"""Which files a job reads: directories searched recursively, globs, manifests, single files."""

import csv
import glob
import json
import os
from typing import Iterable, List

EXTENSIONS = "wav,mp3,flac,ogg,opus,m4a,aac,wma,webm,mp4,mkv,mov,aiff,aif"
MANIFEST_EXTENSIONS = (".txt", ".csv", ".jsonl")


def find_audio(inputs: Iterable[str], extensions: Iterable[str]) -> List[str]:
    """Files given, plus files under directories given whose extension is listed (sorted)."""
    suffixes = tuple("." + e.strip().lower().lstrip(".") for e in extensions if e.strip())
    found = []
    for item in inputs:
        if not os.path.isdir(item):
            found.append(item)
            continue
        for root, dirs, files in os.walk(item):
            dirs.sort()
            found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(suffixes)]
    return found


def _manifest_entries(manifest: str) -> List[str]:
    with open(manifest, encoding="utf-8", newline="") as f:
        if manifest.lower().endswith(".jsonl"):
            rows = [json.loads(line) for line in f if line.strip()]
            return [row["path"] if isinstance(row, dict) else row for row in rows]
        if manifest.lower().endswith(".csv"):
            rows = [row for row in csv.reader(f) if row]
            column = 0
            if rows and "path" in rows[0]:  # a header
                column, rows = rows[0].index("path"), rows[1:]
            return [row[column] for row in rows]
        lines = (line.strip() for line in f)
        return [line for line in lines if line and not line.startswith("#")]


def find_inputs(source: str, extensions: Iterable[str] = EXTENSIONS.split(",")) -> List[str]:
    """The absolute paths of the files INPUT names, without repeats, in a stable order."""
    if os.path.isdir(source):
        paths = find_audio([source], extensions)
    elif os.path.isfile(source) and source.lower().endswith(MANIFEST_EXTENSIONS):
        base = os.path.dirname(os.path.abspath(source))
        paths = [os.path.join(base, p) for p in _manifest_entries(source)]
    elif os.path.isfile(source):
        paths = [source]
    elif glob.has_magic(source):
        paths = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))
    else:
        raise FileNotFoundError(f"input not found: {source} (a directory, glob, manifest or file)")
    return list(dict.fromkeys(os.path.abspath(p) for p in paths))


def common_root(source: str, paths: List[str]) -> str:
    """The directory per-file outputs mirror: INPUT if a directory, else the files' common one."""
    if os.path.isdir(source):
        return os.path.abspath(source)
    return os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
