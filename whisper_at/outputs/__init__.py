"""Sound-event outputs written beside openai-whisper's: tags, events, SDH subtitles, timeline.

``<name>.tags.json`` / ``<name>.tags.tsv``: per-row tags; ``<name>.events.tsv``: rows where a
class stays active merged into intervals (``events.py``); ``<name>.sdh.srt`` / ``<name>.sdh.vtt``:
subtitles for the deaf and hard of hearing (speech cues plus bracketed sound captions,
``sdh.py``); ``<name>.events.png``: a picture of it all (``plot.py``). The rules are in
docs/outputs.md. Every file is written into a hidden staging directory inside the output
directory and renamed into place when complete.
"""

import json
import os
import shutil
import warnings
from typing import List, Optional

from whisper.utils import get_writer

from ..gate import SINGING_NAMES as SINGING_NAMES  # whisper-at 1.0's outputs.py had these
from ..gate import SPEECH_NAMES as SPEECH_NAMES
from ..staging import make_stage
from .events import MUSIC_NAMES as MUSIC_NAMES
from .events import (
    TagOptions,
    active_classes,
    event_classes,
    event_lines,
    events_tsv_rows,
    row_times,
    sound_events,
    tags_document,
    tags_tsv_rows,
    write_tsv,
)
from .events import label_language as _language
from .plot import have_matplotlib, plot_timeline
from .sdh import CAPTIONS as CAPTIONS
from .sdh import MAX_EVENT_LINES as MAX_EVENT_LINES
from .sdh import MIN_EVENT_CUE as MIN_EVENT_CUE
from .sdh import captions, sdh_cues, speech_cues, write_sdh

AT_FORMATS = {"tags": ("tags.json", "tags.tsv"), "events": ("events.tsv",),
              "sdh": ("sdh.srt", "sdh.vtt"), "png": ("events.png",)}  # -f choice: files
UPSTREAM_FORMATS = ("txt", "vtt", "srt", "tsv", "json")
AT_KEYS = ("audio_tag", "at_time_res", "audio_features_for_at")

__all__ = ["AT_FORMATS", "TagOptions", "active_classes", "captions", "event_classes", "event_lines",
           "have_matplotlib", "row_times", "sdh_cues", "sound_events", "speech_cues",
           "tags_document", "write_outputs"]  # fmt: skip


def write_at_outputs(
    stage: str, base: str, result: dict, audio_path: str, formats: List[str],
    writer_args: dict, options: TagOptions, duration: float,
):
    """Write the requested sound-event files as ``<stage>/<base>.<kind>``."""
    res = result["at_time_res"]
    events = sound_events(result["audio_tag"], res, duration, options)
    path = os.path.join(stage, base)
    if "tags" in formats:
        with open(path + ".tags.json", "w", encoding="utf-8") as f:
            json.dump(tags_document(result, audio_path, duration, options), f, ensure_ascii=False)
        write_tsv(path + ".tags.tsv", ("start", "end", "label", "logit"),
                   tags_tsv_rows(result, duration, options))
    if "events" in formats:
        write_tsv(path + ".events.tsv", ("start", "end", "label", "peak_logit"),
                   events_tsv_rows(events, _language(result, options)))
    if "sdh" in formats:
        cues = sdh_cues(speech_cues(result, writer_args), events, options.sdh_repeat,
                        options.sdh_continues)
        write_sdh(path + ".sdh.srt", cues, vtt=False)
        write_sdh(path + ".sdh.vtt", cues, vtt=True)
    if "png" in formats:
        if have_matplotlib():
            plot_timeline(path + ".events.png", result, events, duration, options, audio_path)
        else:
            message = "matplotlib is not installed (pip install 'whisper-at[plot]')"
            warnings.warn(f"{message}: {base}.events.png not written", stacklevel=2)


def write_outputs(
    result: dict, audio_path: str, output_dir: str, output_format: str, writer_args: dict,
    options: TagOptions = TagOptions(), duration: Optional[float] = None,
) -> List[str]:
    """Write openai-whisper's outputs (byte for byte as ``whisper`` would, via its own
    ``get_writer``) and the sound-event outputs for one audio file; returns the paths written.

    All files are written in a staging directory inside output_dir, then renamed into place;
    staging directories of killed runs are removed first (``staging.make_stage``).
    """
    if duration is None:  # the tag rows' span
        duration = len(result.get("audio_tag", [])) * result.get("at_time_res", 0)
    base = os.path.splitext(os.path.basename(audio_path))[0]
    stage = make_stage(output_dir)
    try:
        if output_format == "all" or output_format in UPSTREAM_FORMATS:
            asr = {key: value for key, value in result.items() if key not in AT_KEYS}
            get_writer(output_format, stage)(asr, audio_path, **writer_args)
        formats = list(AT_FORMATS) if output_format == "all" else [output_format]
        if set(formats) & set(AT_FORMATS) and result.get("audio_tag") is not None:
            write_at_outputs(stage, base, result, audio_path, formats, writer_args, options,
                             duration)
        written = []
        for name in sorted(os.listdir(stage)):
            target = os.path.join(output_dir, name)
            try:
                os.replace(os.path.join(stage, name), target)
            except OSError as e:
                raise OSError(f"{audio_path}: cannot write {target}: {e.strerror or e}") from e
            written.append(target)
        return written
    finally:
        shutil.rmtree(stage, ignore_errors=True)
