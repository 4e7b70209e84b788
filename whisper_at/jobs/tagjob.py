"""``whisper-at tag``: tag many files without transcribing, one JSONL line per file.

Windows of all files share encoder batches (``--batch_size`` windows per call); the next files
are decoded in a background thread while the model runs. Each file's line is appended and
flushed as soon as its last window is tagged; a failing file gets an ``{"path", "error"}`` line
and the run goes on. ``--resume`` skips the files that already have a successful line.
"""

import argparse
import json
import os
import sys
from typing import Iterator, List, Optional, Set

import torch
from tqdm import tqdm
from whisper.utils import optional_int, str2bool

from ..cli import load_tagging_model
from ..options import (
    PROG,
    add_compute_type_option,
    add_tagging_options,
    batch_size_arg,
    check_device_compute_type,
    error,
    report,
    tag_options,
)
from ..outputs import TagOptions
from .inputs import EXTENSIONS, find_audio
from .local_engine import BatchOptions, Decoded, decode_ahead, process
from .local_engine import record as record  # whisper-at 1.0 defined it here

PREFETCH = 2  # files decoded ahead of the model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-at tag",
        description="Tag AudioSet sound events in audio files (no transcription); "
        "one JSON line per file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("inputs", nargs="+", help="audio files, or directories searched recursively")
    add("--model", default="small", help="Whisper model name or local checkpoint/directory")
    add("--model_dir", type=str, default=None, help="where model files are cached")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    add("--batch_size", type=batch_size_arg, default="auto",
        help="windows per encoder call, across files (auto: 1 on CPU, 8 on GPU)")
    add("--at_window", type=int, default=30, choices=[30, 10],
        help="encoder window in seconds: 30 (as transcribe) or 10 (as the heads were trained)")
    add("--extensions", default=EXTENSIONS, help="comma-separated extensions for directories")
    add("--output", default="tags.jsonl", help="JSON lines file, appended to")
    add("--resume", action="store_true", help="skip files with a successful line in --output")
    add("--threads", type=optional_int, default=0, help="torch CPU threads (0: torch's default)")
    add("--verbose", type=str2bool, default=True, help="show progress bars")
    add_compute_type_option(add_tagging_options(parser, language="en"))
    return parser


def _key(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def done_paths(output: str) -> Set[str]:
    """Files that already have a successful line in output (unreadable lines are ignored)."""
    done = set()
    if not os.path.exists(output):
        return done
    with open(output, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "path" in record and "error" not in record:
                done.add(_key(record["path"]))
    return done


def _unfinished(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


class TagJob:
    """Tags files with local_engine's ``process`` (shared encoder batches, decoding ahead in a
    background thread) and writes their lines."""

    def __init__(self, model, out, batch_size: Optional[int], window_seconds: int,
                 at_time_res: float, options: TagOptions, progress: bool,
                 at_compute_type: str = "auto"):  # fmt: skip
        self.model = model
        self.out = out
        self.options = BatchOptions(task="tag", at_time_res=at_time_res, batch_size=batch_size,
                                    window_seconds=window_seconds, tags=options,
                                    at_compute_type=at_compute_type)  # fmt: skip
        self.done, self.failed = 0, []
        self.files_bar = tqdm(unit="file", desc="files", disable=not progress, position=0)
        self.seconds_bar = tqdm(unit="s", desc="audio", disable=not progress, position=1,
                                total=0, bar_format="{desc}: {n:.0f}/{total:.0f} s {rate_fmt}")

    def write(self, line: dict):
        self.out.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.out.flush()
        self.files_bar.update(1)

    def fail(self, path: str, message: str):
        tqdm.write(f"{PROG}: error: {message}", file=sys.stderr)
        self.failed.append(path)
        self.write({"path": path, "error": message})

    def _decoded(self, paths: List[str]) -> Iterator[Decoded]:
        for item in decode_ahead(paths, PREFETCH):
            self.seconds_bar.total += item.duration
            yield item

    def run(self, paths: List[str]):
        self.files_bar.reset(total=len(paths))
        for line, _ in process(self.model, self._decoded(paths), self.options):
            if "error" in line:
                self.fail(line["path"], line["error"])
                continue
            self.write(line)
            self.done += 1
            self.seconds_bar.update(line["duration"])
        self.files_bar.close()
        self.seconds_bar.close()


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``whisper-at tag``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv).__dict__
    time_res = args.pop("at_time_res")
    options = tag_options(args)
    check_device_compute_type(parser, args["device"], args["at_compute_type"])
    paths = find_audio(args["inputs"], args["extensions"].split(","))
    if args["resume"]:
        done = done_paths(args["output"])
        paths = [p for p in paths if _key(p) not in done]
    if args["threads"] > 0:
        torch.set_num_threads(args["threads"])
    try:
        out = open(args["output"], "a", encoding="utf-8")
    except OSError as e:
        error(f"cannot write {args['output']}: {e.strerror or e}")
        return 2
    with out:
        if _unfinished(args["output"]):  # a line cut short by an interrupted run
            out.write("\n")
        if not paths:
            return 0
        model = load_tagging_model(args["model"], args)
        if model is None:
            return 2
        if not model.has_at_head:
            error(f"model {args['model']} has no audio-tagging head: pass --at_head PATH")
            return 2
        job = TagJob(model, out, args["batch_size"], args["at_window"], time_res, options,
                     args["verbose"], args["at_compute_type"])  # fmt: skip
        job.run(paths)
    return report(job.done, job.failed)
