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
from .outputs import AT_FORMATS, TagOptions

PROG = "whisper-at"

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
    """The argument parser of the installed ``whisper`` CLI, built by its own ``cli()`` code.

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
        return captured.parser
    raise RuntimeError("unsupported openai-whisper version: cli() did not parse arguments")


def at_time_res(value: str) -> float:
    """``--at_time_res``: seconds per tag row, checked as the Python API checks it."""
    from .tagging import check_at_time_res

    try:
        return check_at_time_res(float(value))
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _int_at_least(value: str, least: int) -> int:
    number = int(value)
    if number < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return number


def positive_int(value: str) -> int:
    return _int_at_least(value, 1)


def non_negative_int(value: str) -> int:
    return _int_at_least(value, 0)


def batch_size_arg(value: str) -> Optional[int]:
    """``--batch_size``: a positive int, or "auto" (None: 1 on CPU, 8 on GPU)."""
    return None if value == "auto" else positive_int(value)


def seconds(value: str) -> float:
    """A non-negative number of seconds."""
    number = float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {value}")
    return number


def logit(value: str) -> float:
    number = float(value)
    if number != number:
        raise argparse.ArgumentTypeError("must be a number (or -inf), not NaN")
    return number


def add_tagging_options(parser: argparse.ArgumentParser, language: str = "follow_asr",
                        captions: bool = False):
    """The ``--at_*`` options shared by transcription and ``whisper-at tag``; ``captions``:
    with the SDH caption options."""
    group = parser.add_argument_group("audio tagging (Whisper-AT)")
    add = group.add_argument
    add("--at_head", type=str, default=None,
        help="Whisper-AT head file; None: the official head of --model (downloaded)")
    add("--at_head_mirror", type=str, default=None, metavar="URL_OR_DIR",
        help="where official heads are looked for first: a base URL or a directory holding "
             "<name>_ori.pth / <name>_low.pth; None: $WHISPER_AT_HEAD_MIRROR")
    add("--at_low_compute", action="store_true",
        help="use the TL-TR-512 head (small, medium and large only)")
    add("--at_time_res", type=at_time_res, default=10,
        help="seconds per tag row: a multiple of 0.4, at most 30 (heads were trained at 10)")
    add("--at_top_k", type=positive_int, default=5, help="report up to this many classes per row")
    add("--at_threshold", type=logit, default=-1,
        help="report classes with a logit above this (-1: p > 0.27; 0: p > 0.5)")
    add("--at_language", type=str, default=language,
        help="language of label names ('follow_asr': the language ASR detected)")
    add("--at_speech_events", action="store_true",
        help="include speech classes (Speech, Male speech, ...) in the sound-event timeline")
    if captions:
        add("--at_sdh_repeat", action="store_true",
            help="SDH: caption a sound on every cue it overlaps, not only at its onset")
        add("--at_sdh_continues", type=seconds, default=TagOptions().sdh_continues,
            help="SDH: caption a sound still going this many seconds after its caption as "
                 "[... continues]; 0: never")
    return group


def probability(value: str) -> float:
    """``--at_speech_gate``: a speech probability in [0, 1]."""
    from .gate import check_threshold

    try:
        return check_threshold(float(value))
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e).replace("at_speech_gate ", "")) from None


def add_gate_options(parser: argparse.ArgumentParser):
    """``--at_speech_gate`` and ``--at_segment_info`` (transcription only; docs/gate.md)."""
    group = parser.add_argument_group("speech gate and segment evidence (Whisper-AT)")
    group.add_argument("--at_speech_gate", type=probability, default=None, metavar="P",
                       help="skip stretches whose speech probability (from the tags) is below P "
                            "before decoding them, and drop segments inside them")
    group.add_argument("--at_segment_info", action="store_true",
                       help="add each segment's speech probability, sound events and "
                            "hallucination flag to the json output")


BACKENDS = ("openai-whisper", "faster-whisper")


def add_backend_options(parser: argparse.ArgumentParser, batch_size: bool = True):
    """``--backend`` and the faster-whisper options (used only with ``--backend faster-whisper``;
    see docs/faster.md); ``batch_size=False``: the parser has its own ``--batch_size``."""
    from whisper.utils import str2bool

    group = parser.add_argument_group("faster-whisper backend (pip install 'whisper-at[faster]')")
    add = group.add_argument
    add("--backend", choices=BACKENDS, default="openai-whisper",
        help="ASR engine: openai-whisper, or faster-whisper (CTranslate2; --model: a "
        "faster-whisper model name or CTranslate2 directory)")
    add("--compute_type", default="default",
        help="faster-whisper: CTranslate2 compute type (int8, float16, float32, ...)")
    add("--vad_filter", type=str2bool, default=False,
        help="faster-whisper: decode only the speech Silero VAD finds (tag rows elsewhere: NaN "
        "unless --at_fill_gaps True)")
    if batch_size:
        add("--batch_size", type=positive_int, default=None,
            help="faster-whisper: use its batched pipeline with this many windows per batch")
    add("--at_encoder", choices=("one_pass", "exact"), default="one_pass",
        help="faster-whisper: one_pass (the tagging encoder feeds the decoder) or exact (FW's "
        "own encoder for the text, identical to plain faster-whisper)")
    add("--at_fill_gaps", type=str2bool, default=False,
        help="faster-whisper: also tag the audio it did not decode (VAD gaps), extra passes")
    return group


def backend_options(parser: argparse.ArgumentParser, args: dict, batch_size: bool = True) -> dict:
    """Pop the backend options out of parsed arguments; faster-whisper options given with the
    openai-whisper backend are a usage error."""
    names = ["backend", "compute_type", "vad_filter", "at_encoder", "at_fill_gaps"]
    backend = {name: args.pop(name) for name in names + ["batch_size"] * batch_size}
    if backend["backend"] == "openai-whisper":
        for name, value in backend.items():
            if name != "backend" and value != parser.get_default(name):
                parser.error(f"--{name} needs --backend faster-whisper")
    elif args.get("carry_initial_prompt"):
        parser.error("--carry_initial_prompt is not supported by faster-whisper")
    return backend


def tag_options(args: dict) -> TagOptions:
    """Pop the label options out of parsed arguments."""
    return TagOptions(
        top_k=args.pop("at_top_k"),
        threshold=args.pop("at_threshold"),
        language=args.pop("at_language"),
        speech_events=args.pop("at_speech_events"),
        sdh_repeat=args.pop("at_sdh_repeat", False),
        sdh_continues=args.pop("at_sdh_continues", TagOptions().sdh_continues),
    )


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


def error(message: str):
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def describe_failure(path: str, exc: BaseException) -> str:
    """One line naming the file and what went wrong."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return message if path in message else f"{path}: {message}"


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


def report(done: int, failed: List[str], noun: str = "file") -> int:
    """Exit status of a run over files: non-zero only when nothing succeeded."""
    if not failed:
        return 0
    total = done + len(failed)
    if done == 0:
        error(f"none of the {total} {noun}s succeeded")
        return 1
    error(f"{len(failed)} of {total} {noun}s failed: {', '.join(failed)}")
    return 0


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
        if not model.has_at_head and args[option] not in (None, False):
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
