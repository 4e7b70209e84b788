"""``whisper-at live [SOURCE]``: live captions with sound events from the microphone, stdin or a
file/URL; committed captions printed as they settle, optionally a growing ``.sdh.vtt`` /
``.sdh.srt`` and a JSON-lines event log (docs/live.md)."""

import argparse
import os
import signal
import sys
from typing import List, Optional

import numpy as np

from ..cli import load_tagging_model
from ..options import (
    BACKENDS,
    PROG,
    add_gate_options,
    add_tagging_options,
    error,
    positive_int,
    warning,
)
from .captions import LiveCaptions
from .events import Lag
from .sounds import SoundOptions
from .sources import SourceError, check_source, open_source
from .stream import LiveTranscriber

LAG_EVERY = 10.0  # s of stream between two "behind real time" messages


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} live",
        description="Live captions with sound events (SDH) from the microphone, stdin or a "
        "file/URL: committed text (LocalAgreement-2), [sound] captions, the speech gate.",
    )
    add = parser.add_argument
    add("source", nargs="?", default=None,
        help="the microphone when omitted; '-': stdin (raw 16 kHz mono s16le, or any container "
        "ffmpeg decodes); else a file or URL read through ffmpeg")  # fmt: skip
    add("--model", default="base", help="model name, CTranslate2 dir or checkpoint")
    add("--backend", choices=BACKENDS, default="faster-whisper")
    add("--compute_type", default="int8", help="faster-whisper: CTranslate2 compute type")
    add("--device", default=None, help="cpu, cuda (default: cuda if available)")
    add("--threads", type=int, default=0, help="CPU threads (0: the library's default)")
    add("--model_dir", default=None, help="where models are downloaded")
    add("--language", default=None, help="spoken language (default: detected once)")
    add("--step", type=float, default=1.0, help="seconds of audio between two passes")
    add("--beam_size", type=positive_int, default=1)
    add("--commit_pause", type=float, default=0.6,
        help="commit the tentative words after this many seconds of pause (0: only when two "
        "passes agree)")  # fmt: skip
    add("--realtime", action="store_true", help="pace a file at real time (as if live)")
    add("--input_device", default=None, help="microphone: sounddevice's device name or number")
    add("--vtt", default=None, metavar="PATH", help="write the SDH captions here (WebVTT)")
    add("--srt", default=None, metavar="PATH", help="write the SDH captions here (SRT)")
    add("--events", default=None, metavar="PATH", help="JSON-lines log: a line per event")
    add_tagging_options(parser, captions=True)
    add_gate_options(parser)
    parser.set_defaults(at_time_res=0.8, at_top_k=3, at_threshold=SoundOptions().threshold)
    return parser


def _load(args: dict):
    if args["backend"] == "openai-whisper":
        return load_tagging_model(args["model"], args)
    try:
        from ..faster import cli as faster_cli

        backend = {name: args[name] for name in ("compute_type", "at_head", "at_low_compute",
                                                 "at_head_mirror", "threads")}  # fmt: skip
        return faster_cli.load_model(args["model"], args["device"], args["model_dir"], backend)
    except Exception as e:
        error(f"cannot load model {args['model']}: {' '.join(str(e).split())}")
        return None


def _check_outputs(paths: List[Optional[str]]) -> Optional[str]:
    for path in filter(None, paths):
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
            return f"cannot write {path}: no writable directory {directory}"
    return None


def _interrupt(*_):
    raise KeyboardInterrupt


def run(live: LiveTranscriber, captions: LiveCaptions, source) -> Optional[str]:
    """Stream ``source`` through ``live`` into ``captions`` until its end or Ctrl-C; the tail
    is committed and the files closed whole in any case. Returns the source's problem."""
    said, problem = -LAG_EVERY, None
    try:
        for batch in source.chunks():
            # behind: the audio arrives at real-time pace, yet more than a step of it waits
            events = live.feed(np.concatenate(batch), catch_up=source.paced())
            for event in events:
                if isinstance(event, Lag) and event.time - said >= LAG_EVERY:
                    said = event.time
                    warning(f"falling behind real time at {event.time:.1f} s: "
                            f"{event.behind:.1f} s of audio waited, done as one pass (a smaller "
                            f"model or a larger --step keeps up)")  # fmt: skip
            captions.add(events)
            captions.settle(*live.settled)
    except KeyboardInterrupt:
        pass
    except SourceError as e:
        problem = str(e)
    finally:
        source.close()
        captions.add(live.finish())
        captions.close()
    return problem


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv).__dict__
    if args.pop("at_segment_info"):
        parser.error("--at_segment_info is for transcribing files: live events carry no "
                     "per-segment evidence")  # fmt: skip
    problem = _check_outputs([args["vtt"], args["srt"], args["events"]])
    if problem:
        error(problem)
        return 2
    try:
        check_source(args["source"])
    except SourceError as e:
        error(str(e))
        return 1
    model = _load(args)
    if model is None:
        return 2
    sounds = SoundOptions(threshold=args["at_threshold"], top_k=args["at_top_k"],
                          speech_events=args["at_speech_events"])  # fmt: skip
    pause = args["commit_pause"] or None  # 0: off
    try:
        live = LiveTranscriber(model, args["step"], language=args["language"],
                               at_speech_gate=args["at_speech_gate"],
                               at_gate_margin=args["at_gate_margin"],
                               at_time_res=args["at_time_res"], beam_size=args["beam_size"],
                               sounds=sounds, commit_pause=pause)  # fmt: skip
    except (TypeError, ValueError) as e:
        parser.error(str(e))
    try:
        source = open_source(args["source"], args["realtime"], args["input_device"])
    except SourceError as e:
        error(str(e))
        return 1
    captions = LiveCaptions(args["vtt"], args["srt"], args["events"],
                            lambda line: print(line, flush=True), args["at_sdh_continues"],
                            args["at_sdh_repeat"])  # fmt: skip
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        problem = run(live, captions, source)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if problem:
        error(problem)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
