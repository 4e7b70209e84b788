"""The ``whisper-at`` command: openai-whisper's CLI plus audio tagging, and sub-commands.

``whisper-at AUDIO... [whisper options] [--at_* options]`` transcribes like ``whisper`` (the
parser is the one the installed openai-whisper builds, so every option, name and default is
upstream's) and also writes sound-event outputs (see ``outputs/``). A first argument naming a
sub-command (``tag``, ``convert``, ...) runs that module's ``main`` instead; an audio file with
such a name is reached as ``./tag``.
"""

import argparse
import importlib
import os
import sys
import tempfile
import types
import warnings
from typing import List, Optional

import numpy as np
import torch
from whisper.audio import SAMPLE_RATE

from . import outputs
from .options import (
    PROG,
    add_backend_options,
    add_gate_options,
    add_tagging_options,
    backend_options,
    clip_timestamps,
    describe_failure,
    error,
    print_events,
    report,
    tag_options,
)
from .options import at_time_res as at_time_res  # whisper-at 1.0 defined these five here
from .options import batch_size_arg as batch_size_arg
from .options import logit as logit
from .options import non_negative_int as non_negative_int
from .options import positive_int as positive_int
from .outputs import AT_FORMATS

# sub-command -> module whose main(argv) runs it; ``research`` gets the command as argv[0]
SUBCOMMANDS = {
    "tag": "whisper_at.jobs.tagjob",
    "convert": "whisper_at.formats.convert",
    "batch": "whisper_at.jobs.batch",
    "features": "whisper_at.research",
    "train": "whisper_at.research",
    "probe": "whisper_at.research",
    "noise-study": "whisper_at.research",
    "serve": "whisper_at.serve",
    "live": "whisper_at.live.command",
}
MULTI_COMMAND_MODULES = {"whisper_at.research"}

WORD_OPTIONS = ["highlight_words", "max_line_count", "max_line_width", "max_words_per_line"]


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("parser captured")
        self.parser = parser


class _CapturingParser(argparse.ArgumentParser):
    """Its first ``parse_args`` call hands the parser back instead of reading ``sys.argv``."""

    captured = False

    def parse_args(self, args=None, namespace=None):
        if not self.captured:
            self.captured = True
            raise _Captured(self)
        return super().parse_args(args, namespace)


def upstream_parser() -> argparse.ArgumentParser:
    """The argument parser of the installed ``whisper`` CLI, built by its own ``cli()`` code
    (``--clip_timestamps`` gets a type that checks it).

    ``cli()`` builds its parser inline, so it runs with private globals in which
    ``argparse.ArgumentParser`` is :class:`_CapturingParser` (nothing global is patched).
    """
    fn = importlib.import_module("whisper.transcribe").cli
    if "argparse" not in fn.__code__.co_names:  # pragma: no cover - upstream changed
        raise RuntimeError("unsupported openai-whisper version: cli() builds no argparse parser")
    shim = types.ModuleType("argparse")
    shim.__dict__.update(argparse.__dict__)
    shim.ArgumentParser = _CapturingParser
    scope = dict(fn.__globals__, argparse=shim)
    bound = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    try:
        bound()
    except _Captured as captured:
        parser = captured.parser
    else:
        raise RuntimeError("unsupported openai-whisper version: cli() did not parse arguments")
    for action in parser._actions:  # checked once, not on every file
        if action.dest == "clip_timestamps":
            action.type = clip_timestamps
    return parser


def build_parser() -> argparse.ArgumentParser:
    """openai-whisper's parser with the audio-tagging options and output formats added."""
    parser = upstream_parser()
    parser.prog = PROG
    parser.description = "Transcribe with openai-whisper and tag AudioSet sound events."
    parser.epilog = (
        f"sub-commands (as first argument): {', '.join(SUBCOMMANDS)}; "
        f"`{PROG} tag --help` etc. An audio file named like a sub-command: ./tag. "
        f"Output formats {', '.join(AT_FORMATS)} are the sound-event outputs; 'all' includes them."
    )
    actions = {action.dest: action for action in parser._actions}
    actions["model"].help += " (or a local checkpoint file, CTranslate2 or HF directory)"
    output_format = actions["output_format"]
    output_format.choices = list(output_format.choices) + list(AT_FORMATS)
    add_tagging_options(parser, captions=True)
    add_gate_options(parser)
    add_backend_options(parser)
    return parser


def load_tagging_model(name: str, args: dict, **kwargs):
    """``whisper_at.load_model`` from parsed options; None (after an error line) on failure."""
    import whisper_at

    try:
        return whisper_at.load_model(
            name,
            device=args.pop("device"),
            download_root=args.pop("model_dir"),
            at_low_compute=args.pop("at_low_compute"),
            at_head=args.pop("at_head"),
            at_head_mirror=args.pop("at_head_mirror"),
            **kwargs,
        )
    except Exception as e:
        error(f"cannot load model {name}: {' '.join(str(e).split()) or type(e).__name__}")
        return None


def check_output_dir(output_dir: str) -> Optional[str]:
    """Create output_dir and check that files can be written there; the problem, if any."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(dir=output_dir, prefix=".whisper-at-check-"))
    except OSError as e:
        return f"cannot write to output directory {output_dir}: {e.strerror or e}"
    return None


def _subcommand(argv: List[str]) -> int:
    command, rest = argv[0], argv[1:]
    module_name = SUBCOMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        error(f"sub-command {command!r} is not available in this installation ({module_name})")
        return 2
    if module_name in MULTI_COMMAND_MODULES:
        rest = [command] + rest
    status = module.main(rest)
    return status if isinstance(status, int) else 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``whisper-at``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _subcommand(argv)
    parser = build_parser()
    args = parser.parse_args(argv).__dict__
    return transcribe_files(parser, args)


def transcribe_options(parser: argparse.ArgumentParser, args: dict, model_name: str) -> dict:
    """Pop openai-whisper's post-parse options out of args as its ``cli()`` does (English-only
    models, the temperature fallback schedule, word options); returns the writer options."""
    if model_name.endswith(".en") and args["language"] not in {"en", "English"}:
        if args["language"] is not None:
            warnings.warn(
                f"{model_name} is an English-only model but receipted '{args['language']}'; "
                "using English instead.",
                stacklevel=1,
            )
        args["language"] = "en"

    temperature = args.pop("temperature")
    if (increment := args.pop("temperature_increment_on_fallback")) is not None:
        args["temperature"] = tuple(np.arange(temperature, 1.0 + 1e-6, increment))
    else:
        args["temperature"] = [temperature]

    if not args["word_timestamps"]:
        for option in WORD_OPTIONS:
            if args[option]:
                parser.error(f"--{option} requires --word_timestamps True")
    if args["max_line_count"] and not args["max_line_width"]:
        warnings.warn("--max_line_count has no effect without --max_line_width", stacklevel=1)
    if args["max_words_per_line"] and args["max_line_width"]:
        warnings.warn("--max_words_per_line has no effect with --max_line_width", stacklevel=1)
    return {arg: args.pop(arg) for arg in WORD_OPTIONS}


def transcribe_files(parser: argparse.ArgumentParser, args: dict) -> int:
    """The part of openai-whisper's ``cli()`` after parsing, with per-file error handling."""
    model_name: str = args.pop("model")
    output_dir: str = args.pop("output_dir")
    output_format: str = args.pop("output_format")
    time_res = args.pop("at_time_res")
    options = tag_options(args)
    backend = backend_options(parser, args)

    if (threads := args.pop("threads")) > 0:
        torch.set_num_threads(threads)
    writer_args = transcribe_options(parser, args, model_name)

    if output_format == "png" and not outputs.have_matplotlib():
        error("--output_format png needs matplotlib: pip install 'whisper-at[plot]'")
        return 2
    problem = check_output_dir(output_dir)
    if problem:
        error(problem)
        return 2
    if backend["backend"] == "faster-whisper":
        return _faster_files(model_name, args, backend, threads, output_dir, output_format,
                             writer_args, options, time_res)  # fmt: skip
    model = load_tagging_model(model_name, args)
    if model is None:
        return 2
    if not model.has_at_head and output_format in outputs.AT_FORMATS:
        error(f"--output_format {output_format} needs an audio-tagging head: pass --at_head PATH")
        return 2
    for option in ("at_speech_gate", "at_segment_info"):
        if not model.has_at_head and args[option] is not None and args[option] is not False:
            error(f"--{option} needs an audio-tagging head: pass --at_head PATH")
            return 2

    from .audio_io import load_audio
    from .transcribe import transcribe

    done, failed = 0, []
    for audio_path in args.pop("audio"):
        try:
            audio = load_audio(audio_path)
            if audio.size == 0:
                raise ValueError(f"{audio_path}: audio is empty (0 samples decoded)")
            result = transcribe(model, audio, at_time_res=time_res, **args)
            if args.get("verbose"):
                print_events(result, audio.shape[-1] / SAMPLE_RATE, options)
            outputs.write_outputs(
                result,
                audio_path,
                output_dir,
                output_format,
                writer_args,
                options,
                duration=audio.shape[-1] / SAMPLE_RATE,
            )
            done += 1
        except Exception as e:
            error(describe_failure(audio_path, e))
            failed.append(audio_path)
    return report(done, failed)


def _faster_files(model_name, args, backend, threads, *rest) -> int:
    try:
        from .faster import cli as faster_cli
    except ImportError as e:
        error(str(e))
        return 2
    head = {name: args.pop(name) for name in ("at_head", "at_low_compute", "at_head_mirror")}
    backend = dict(backend, threads=threads, **head)
    try:
        model = faster_cli.load_model(model_name, args["device"], args["model_dir"], backend)
    except Exception as e:
        error(f"cannot load model {model_name}: {' '.join(str(e).split()) or type(e).__name__}")
        return 2
    output_format = rest[1]
    if not model.has_at_head and output_format in outputs.AT_FORMATS:
        error(f"--output_format {output_format} needs an audio-tagging head: pass --at_head PATH")
        return 2
    return faster_cli.transcribe_files(model, args, backend, *rest)
