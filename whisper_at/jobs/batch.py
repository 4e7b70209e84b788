"""``whisper-at batch INPUT OUTPUT_DIR``: tag or transcribe a whole collection, resumably.

INPUT is a directory (searched recursively for ``--extensions``), a glob (quote it), a manifest
(``.txt``: a path per line; ``.csv``: a ``path`` column, else the first; ``.jsonl``: objects with
a ``path``; relative paths are relative to the manifest) or one audio file. Results go to
``OUTPUT_DIR/results-NNNNN.jsonl`` shards (see ``shards.py``), one line per file; with
``--output_format`` also per-file outputs, mirroring the input tree under OUTPUT_DIR.
``--engine ray`` runs on a Ray cluster (``ray_engine.py``); inputs are found by ``inputs.py``.
See docs/scaling.md.
"""

import argparse
import os
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, List, Optional

from tqdm import tqdm
from whisper.utils import optional_float, optional_int

from ..cli import transcribe_options, upstream_parser
from ..formats.weights import head_mirror
from ..options import (
    add_backend_options,
    add_gate_options,
    add_tagging_options,
    backend_options,
    batch_size_arg,
    check_device_compute_type,
    describe_failure,
    error,
    non_negative_int,
    positive_int,
    report,
    tag_options,
)
from ..outputs import AT_FORMATS, TagOptions, have_matplotlib, write_outputs
from .inputs import EXTENSIONS, common_root, find_inputs
from .inputs import MANIFEST_EXTENSIONS as MANIFEST_EXTENSIONS  # whisper-at 1.0's name
from .local_engine import TASKS, BatchOptions
from .shards import ShardWriter, completed, lock_output_dir, remove_temp_shards

PROG = "whisper-at batch"
TAG_FORMATS = ("tags", "events", "png")  # per-file outputs that need no transcript
MODEL_OPTIONS = ["model", "model_dir", "device", "at_head", "at_head_mirror", "at_low_compute",
                 "threads"]
OUTPUT_OPTIONS = ["shard_size", "shard_seconds", "resume", "retry_failed"]
LOCAL_OPTIONS = ["prefetch"]
RAY_OPTIONS = ["address", "num_actors", "num_gpus_per_actor", "cpus_per_actor", "num_cpus",
               "files_per_batch"]
ENGINE_OPTIONS = {"local": LOCAL_OPTIONS, "ray": RAY_OPTIONS}


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class OutputOptions:
    """Where and how results are written, and which files are skipped."""

    output_format: str = "none"  # per-file outputs: "none", openai-whisper's or AT_FORMATS
    writer_args: dict = field(default_factory=dict)  # openai-whisper's subtitle options
    shard_size: int = 100  # finish a shard after this many files ...
    shard_seconds: float = 60.0  # ... or after this many seconds
    resume: bool = True  # skip files with a record in a finished shard
    retry_failed: bool = False  # ... unless that record is an error
    progress: bool = True


class Sink:
    """Takes each file's record: per-file outputs first, then its shard line and progress."""

    def __init__(self, writer: ShardWriter, root: str, output: OutputOptions, tags: TagOptions,
                 total: int):
        self.writer = writer
        self.root = root
        self.output_format = output.output_format
        self.writer_args = output.writer_args
        self.tags = tags
        self.done, self.failed, self.seconds = 0, [], 0.0
        self.bar = tqdm(total=total, unit="file", desc="files", disable=not output.progress)

    def _write_outputs(self, line: dict, audio_tag):
        result = {key: line[key] for key in ("text", "segments", "language") if key in line}
        if audio_tag is not None:
            result.update(audio_tag=audio_tag, at_time_res=line["at_time_res"])
        relative = os.path.relpath(os.path.dirname(line["path"]), self.root)
        directory = os.path.normpath(os.path.join(self.writer.output_dir, relative))
        os.makedirs(directory, exist_ok=True)
        write_outputs(result, line["path"], directory, self.output_format, self.writer_args,
                      self.tags, duration=line["duration"])

    def __call__(self, line: dict, audio_tag=None):
        if "error" not in line and self.output_format != "none":
            try:
                self._write_outputs(line, audio_tag)
            except Exception as e:
                line = {"path": line["path"], "error": describe_failure(line["path"], e)}
        if "error" in line:
            with tqdm.external_write_mode():
                error(line["error"])
            self.failed.append(line["path"])
        else:
            self.done += 1
            self.seconds += line["duration"]
        self.writer.write(line)
        hours = self.seconds / 3600
        speed = self.seconds / max(self.bar.format_dict["elapsed"], 1e-9)
        self.bar.set_postfix_str(f"audio {hours:.3f} h, {speed:.1f}x real time", refresh=False)
        self.bar.update(1)

    def close(self):
        self.bar.close()


@contextmanager
def _sigterm_exits():
    """SIGTERM (preemption, ``kill``) unwinds like Ctrl-C, so the open shard is finished."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(options: BatchOptions, source: str, output_dir: str,
        output: OutputOptions = OutputOptions(), engine: str = "local",
        extensions: Iterable[str] = EXTENSIONS.split(","), **engine_options) -> Sink:
    """Process every file INPUT names into OUTPUT_DIR with the engine ("local" or "ray", given
    ``engine_options``: ``run_local``'s or ``run_ray``'s); returns the sink (counts, failures)."""
    if engine == "ray":  # before anything is written
        from .ray_engine import require_ray

        require_ray()
    paths = find_inputs(source, extensions)
    os.makedirs(output_dir, exist_ok=True)
    lock = lock_output_dir(output_dir)
    try:
        remove_temp_shards(output_dir)
        done = completed(output_dir, output.retry_failed) if output.resume else {}
        todo = [path for path in paths if path not in done]
        if done and output.progress:
            print(f"resuming: {len(paths) - len(todo)} of {len(paths)} files already done",
                  file=sys.stderr)
        writer = ShardWriter(output_dir, output.shard_size, output.shard_seconds)
        sink = Sink(writer, common_root(source, paths), output, options.tags, len(todo))
        try:
            with _sigterm_exits():
                if engine == "ray" and todo:
                    from .ray_engine import run_ray

                    run_ray(options, todo, sink, **engine_options)
                elif todo:
                    from .local_engine import run_local

                    run_local(options, todo, sink, **engine_options)
        finally:
            writer.finish()
            sink.close()
    finally:
        lock.release()
    return sink


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """openai-whisper's parser, repurposed: INPUT OUTPUT_DIR, --task tag, batch options."""
    parser = upstream_parser()
    parser.prog = PROG
    parser.description = "Tag or transcribe many audio files into sharded JSONL results."
    actions = {action.dest: action for action in parser._actions}
    source = actions["audio"]
    source.nargs, source.metavar = None, "INPUT"
    source.help = "directory (recursive), glob, manifest (.txt, .csv, .jsonl) or audio file"
    parser.add_argument("output", metavar="OUTPUT_DIR", help="directory for the results")
    actions["model"].default = "small"
    actions["task"].choices = list(TASKS)
    actions["task"].help = "tag: sound events only (encoder + head); or transcribe/translate"
    actions["verbose"].help = "show progress bars"
    actions["output_dir"].default, actions["output_dir"].help = None, argparse.SUPPRESS
    formats = actions["output_format"]
    formats.choices = ["none"] + list(formats.choices) + list(AT_FORMATS)
    formats.default = "none"
    formats.help = "per-file outputs beside the shards (tag task: tags, events or png)"
    add_tagging_options(parser, captions=True)
    add_gate_options(parser)
    add_backend_options(parser, batch_size=False, tag_task=True)

    group = parser.add_argument_group("batch")
    add = group.add_argument
    add("--engine", choices=["local", "ray"], default="local", help="where the model runs")
    add("--extensions", default=EXTENSIONS, help="comma-separated extensions for directories")
    add("--resume", action=argparse.BooleanOptionalAction, default=True,
        help="skip files with a record in a finished shard of OUTPUT_DIR")
    add("--retry_failed", action="store_true", help="with --resume, redo files that failed")
    add("--shard_size", type=positive_int, default=100, help="finish a shard after this many files")
    add("--shard_seconds", type=float, default=60.0, help="... or after this many seconds")
    add("--batch_size", type=batch_size_arg, default="auto",
        help="tag: windows per encoder call, across files (auto: 1 on CPU, 8 on GPU); "
        "faster-whisper: its batched pipeline's batch (auto: sequential decoding)")
    add("--at_window", type=int, choices=[30, 10], default=30, help="tag: encoder window (s)")
    add("--prefetch", type=positive_int, default=2, help="local: files decoded ahead of the model")
    add("--seed", type=int, default=0, help="torch seed set before each transcription")
    add("--retries", type=non_negative_int, default=1, help="extra attempts at a failing file")
    group = parser.add_argument_group("ray engine")
    add = group.add_argument
    add("--address", default="local",
        help="'local': start Ray here; 'auto' or HOST:PORT: join a running cluster")
    add("--num_actors", type=optional_int, default=None,
        help="model actors (None: one per GPU, else one per 2 CPUs)")
    add("--num_gpus_per_actor", type=optional_float, default=None,
        help="GPUs per actor (None: 1 when the cluster has GPUs, else 0)")
    add("--cpus_per_actor", type=float, default=1, help="CPUs (torch threads) per actor")
    add("--num_cpus", type=optional_int, default=None,
        help="CPUs of a local Ray instance (None: all)")
    add("--files_per_batch", type=positive_int, default=8, help="files per model actor call")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``whisper-at batch``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv).__dict__
    source, output_dir = args.pop("audio"), args.pop("output")
    if args.pop("output_dir") is not None:
        parser.error("the output directory is the second argument, OUTPUT_DIR")
    task, output_format = args.pop("task"), args.pop("output_format")
    if task == "tag" and output_format not in ("none",) + TAG_FORMATS:
        parser.error(f"--task tag writes --output_format {', '.join(TAG_FORMATS)} or none")
    if output_format == "png" and not have_matplotlib():
        parser.error("--output_format png needs matplotlib: pip install 'whisper-at[plot]'")
    backend = backend_options(parser, args, batch_size=False, tagging=task == "tag")
    if task == "tag" and backend["backend"] != "openai-whisper":
        parser.error("--task tag runs the tagging encoder only: --backend applies to transcribe")
    at_compute_type = backend.pop("at_compute_type")  # tag, or faster-whisper's encoder
    gate = {name: args.pop(name)
            for name in ("at_speech_gate", "at_gate_margin", "at_segment_info")}  # fmt: skip
    if task != "tag":  # transcribe options (docs/gate.md)
        args.update(gate)
    elif gate["at_speech_gate"] is not None or gate["at_segment_info"]:
        parser.error("--at_speech_gate and --at_segment_info steer transcription: not with "
                     "--task tag")
    model = {name: args.pop(name) for name in MODEL_OPTIONS}
    # the env var's, for Ray workers; "" (none) stays "" so that workers do not read theirs
    model["at_head_mirror"] = head_mirror(model["at_head_mirror"]) or ""
    engine, extensions = args.pop("engine"), args.pop("extensions").split(",")
    if engine == "local" and (task == "tag" or backend["backend"] == "faster-whisper"):
        # (Ray: each actor checks its own device)
        check_device_compute_type(parser, model["device"], at_compute_type)
    if engine == "ray":
        from .ray_engine import require_ray

        try:
            require_ray()
        except RuntimeError as e:
            parser.error(str(e))
    engine_options = {name: args.pop(name) for name in LOCAL_OPTIONS + RAY_OPTIONS}
    engine_options = {name: engine_options[name] for name in ENGINE_OPTIONS[engine]}
    output = OutputOptions(
        output_format=output_format, writer_args=transcribe_options(parser, args, model["model"]),
        **{name: args.pop(name) for name in OUTPUT_OPTIONS}, progress=args.pop("verbose"),
    )
    options = BatchOptions(
        **model, task=task, at_time_res=args.pop("at_time_res"), tags=tag_options(args),
        window_seconds=args.pop("at_window"), batch_size=args.pop("batch_size"),
        seed=args.pop("seed"), retries=args.pop("retries"), backend=backend.pop("backend"),
        at_compute_type=at_compute_type,
        backend_options=backend,
        decode_options=args,  # what is left: openai-whisper's transcribe options
    )
    try:
        sink = run(options, source, output_dir, output, engine, extensions, **engine_options)
    except Exception as e:
        error(describe_failure(source, e))
        return 2
    return report(sink.done, sink.failed)

