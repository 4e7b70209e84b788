"""What whisper-at's commands share: option value types (checked as the Python API checks them),
the option groups for tagging (``--at_*``), the speech gate and the faster-whisper backend, and
how a run over files reports its errors."""

import argparse
import sys
from typing import List, Optional

from .outputs import TagOptions, event_lines
from .precision import COMPUTE_TYPES, encoder_dtype

PROG = "whisper-at"


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


def clip_points(clips: str) -> List[float]:
    """openai-whisper's "start,end,start,end..." seconds as numbers; [] for the whole file
    ("0"). A value that is not a number raises ValueError."""
    points = [float(t) for t in clips.split(",")] if clips else []
    return [] if points == [0.0] else points


def clip_timestamps(value: str) -> str:
    """openai-whisper's ``--clip_timestamps`` ("start,end,start,end..." seconds), checked here
    instead of failing on every file; the string is passed on unchanged."""
    try:
        points = clip_points(value) if value else None
    except ValueError:
        points = None
    if points is None or not all(0 <= p < float("inf") for p in points):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated seconds >= 0 (e.g. 0 or 5,25,40), got {value!r}")
    return value


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
    """``--at_speech_gate``, ``--at_gate_margin`` and ``--at_segment_info`` (transcription
    only; docs/gate.md)."""
    group = parser.add_argument_group("speech gate and segment evidence (Whisper-AT)")
    from .gate import DEFAULT_MARGIN

    group.add_argument("--at_speech_gate", type=probability, default=None, metavar="P",
                       help="skip stretches whose speech probability (from the tags) is below P "
                            "before decoding them, drop segments in them and hold segment "
                            "times to the speech")
    group.add_argument("--at_gate_margin", type=seconds, default=DEFAULT_MARGIN,
                       metavar="SECONDS",
                       help="with --at_speech_gate: decoding resumes this long before the "
                            "earliest likely speech")
    group.add_argument("--at_segment_info", action="store_true",
                       help="add each segment's speech probability, sound events and "
                            "hallucination flag to the json output")


BACKENDS = ("openai-whisper", "faster-whisper")


def add_backend_options(parser: argparse.ArgumentParser, batch_size: bool = True,
                        tag_task: bool = False):  # fmt: skip
    """``--backend`` and the faster-whisper options (used only with ``--backend faster-whisper``;
    see docs/faster.md); ``batch_size=False``: the parser has its own ``--batch_size``;
    ``tag_task``: the parser has ``--task tag``, which takes ``--at_compute_type`` too."""
    from whisper.utils import str2bool

    group = parser.add_argument_group("faster-whisper backend (pip install 'whisper-at[faster]')")
    add = group.add_argument
    add("--backend", choices=BACKENDS, default="openai-whisper",
        help="ASR engine: openai-whisper, or faster-whisper (CTranslate2; --model: a "
        "faster-whisper model name or CTranslate2 directory)")
    add("--compute_type", default="default",
        help="faster-whisper: CTranslate2 compute type (int8, float16, float32, ...)")
    add("--vad_filter", type=str2bool, default=None,
        help="faster-whisper: decode only the speech Silero VAD finds (tag rows elsewhere: NaN "
        "unless --at_fill_gaps True); default: False, True with --batch_size and no "
        "--clip_timestamps (as faster-whisper)")
    if batch_size:
        add("--batch_size", type=positive_int, default=None,
            help="faster-whisper: use its batched pipeline with this many windows per batch")
    add("--at_encoder", choices=("one_pass", "exact"), default="one_pass",
        help="faster-whisper: one_pass (the tagging encoder feeds the decoder) or exact (FW's "
        "own encoder for the text, identical to plain faster-whisper)")
    add_compute_type_option(group, "faster-whisper and --task tag: " if tag_task else
                            "faster-whisper: ")  # fmt: skip
    add("--at_fill_gaps", type=str2bool, default=False,
        help="faster-whisper: also tag the audio it did not decode (VAD gaps), extra passes")
    return group


def add_compute_type_option(group, prefix: str = ""):
    """``--at_compute_type``: the tagging encoder's precision (``whisper_at.precision``)."""
    group.add_argument(
        "--at_compute_type", choices=COMPUTE_TYPES, default="auto",
        help=f"{prefix}precision of the tagging encoder (auto: float16 on CUDA, bfloat16 on CPUs "
        "that compute it natively, else float32; float16: CUDA only)")  # fmt: skip


def check_device_compute_type(parser: argparse.ArgumentParser, device: Optional[str],
                              compute_type: str):  # fmt: skip
    """Refuse ``--at_compute_type float16`` on a CPU ``--device`` before any model is loaded
    (a ``--device`` torch cannot parse is left to the model loader to report)."""
    import torch

    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError, ValueError):
        return
    try:
        encoder_dtype(device, compute_type, name="--at_compute_type")
    except ValueError as e:
        parser.error(str(e))


def backend_options(parser: argparse.ArgumentParser, args: dict, batch_size: bool = True,
                    tagging: bool = False) -> dict:  # fmt: skip
    """Pop the backend options out of parsed arguments; faster-whisper options given with the
    openai-whisper backend are a usage error, except ``--at_compute_type`` when ``tagging``
    (tagging only: ``batch --task tag``)."""
    names = ["backend", "compute_type", "vad_filter", "at_encoder", "at_compute_type",
             "at_fill_gaps"]
    backend = {name: args.pop(name) for name in names + ["batch_size"] * batch_size}
    if backend["backend"] == "openai-whisper":
        for name, value in backend.items():
            if name == "backend" or value == parser.get_default(name):
                continue
            if name == "at_compute_type" and not tagging:
                parser.error("--at_compute_type needs --backend faster-whisper, or tagging only "
                             "(whisper-at tag, batch --task tag): openai-whisper's transcription "
                             "encodes in the model's precision")
            elif name != "at_compute_type":
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


def error(message: str):
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def warning(message: str):
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def describe_failure(path: str, exc: BaseException) -> str:
    """One line naming the file and what went wrong."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return message if path in message else f"{path}: {message}"


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


def print_events(result: dict, duration: float, options) -> None:
    """With ``--verbose True``: the sound events of each tag row, after the transcript."""
    if result.get("audio_tag") is not None:
        print("Sound events:", *event_lines(result, duration, options), sep="\n",
              flush=True)
