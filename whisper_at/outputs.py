"""Sound-event outputs written beside openai-whisper's: tags, events, SDH subtitles, timeline.

``<name>.tags.json`` / ``<name>.tags.tsv``: per-row tags; ``<name>.events.tsv``: rows where a
class stays active merged into intervals; ``<name>.sdh.srt`` / ``<name>.sdh.vtt``: subtitles for
the deaf and hard of hearing (speech cues plus bracketed sound captions); ``<name>.events.png``:
a picture of it all. The rules are in docs/outputs.md. Every file is written into a hidden
staging directory inside the output directory and renamed into place when complete.
"""

import json
import os
import shutil
import warnings
from functools import lru_cache
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from whisper.utils import SubtitlesWriter, format_timestamp, get_writer

from .labels import NUM_CLASSES, label_index, label_names, parse_at_label
from .plot import have_matplotlib, plot_timeline
from .staging import make_stage

AT_FORMATS = {"tags": ("tags.json", "tags.tsv"), "events": ("events.tsv",),
              "sdh": ("sdh.srt", "sdh.vtt"), "png": ("events.png",)}  # -f choice: files
UPSTREAM_FORMATS = ("txt", "vtt", "srt", "tsv", "json")
AT_KEYS = ("audio_tag", "at_time_res", "audio_features_for_at")

SPEECH_NAMES = ("Speech", "Speech synthesizer")  # and every class between them
SINGING_NAMES = ("Singing", "Rapping")  # lyrics: the cue text is shown as ♪ text ♪
MUSIC_NAMES = ("Music", "Scary music")  # instruments, genres and moods: one [Music] caption
MAX_EVENT_LINES = 2  # sound captions per speech cue, strongest first
MIN_EVENT_CUE = 1.0  # seconds: shorter gaps between speech cues get no sound-only cue

# "Caption: class | class | ...": the sound caption of those AudioSet classes; classes not
# listed are captioned by their own name (first part, capitalised); "-" means no caption.
CAPTIONS = """
Shouting: Shout | Bellow | Yell | Battle cry | Children shouting
Laughter: Laughter | Belly laugh | Snicker | Giggle | Chuckle, chortle | Baby laughter
Crying: Crying, sobbing | Whimper | Wail, moan
Baby crying: Baby cry, infant cry
Coughing: Cough
Sneezes: Sneeze
Sighs: Sigh
Gasps: Gasp
Groaning: Groan | Grunt
Whooping: Whoop
Breathing heavily: Breathing | Pant | Wheeze
Sniffing: Sniff | Snort
Clears throat: Throat clearing
Footsteps: Walk, footsteps | Run | Shuffle
Chewing: Chewing, mastication | Biting
Clapping: Clapping | Hands
Heartbeat: Heart sounds, heartbeat | Heart murmur
Indistinct chatter: Chatter | Hubbub, speech noise, speech babble
Crowd noise: Crowd
Dog barking: Dog | Bark | Bow-wow | Yip | Canidae, dogs, wolves
Dog whimpering: Whimper (dog)
Cat meowing: Cat | Meow | Caterwaul
Horse neighing: Horse | Neigh, whinny
Hooves clopping: Clip-clop
Cow mooing: Cattle, bovinae | Moo
Pig oinking: Pig | Oink
Sheep bleating: Sheep | Goat | Bleat
Chickens clucking: Fowl | Chicken, rooster | Cluck
Rooster crowing: Crowing, cock-a-doodle-doo
Ducks quacking: Duck | Quack
Birds chirping: Bird | Bird vocalization, bird call, bird song | Chirp, tweet
Insects buzzing: Insect | Fly, housefly | Bee, wasp, etc. | Mosquito | Buzz
Crickets chirping: Cricket
Frogs croaking: Frog | Croak
Animal noises: Animal | Domestic animals, pets | Wild animals
Wind blowing: Wind | Wind noise (microphone)
Leaves rustling: Rustling leaves | Rustle
Thunder: Thunder | Thunderstorm
Rain falling: Rain | Raindrop | Rain on surface
Water running: Water | Stream | Water tap, faucet | Trickle, dribble | Gush | Pour
Waves crashing: Ocean | Waves, surf
Fire crackling: Fire | Crackle
Traffic: Traffic noise, roadway noise | Vehicle | Motor vehicle (road)
Car passing: Car | Car passing by
Car horn honking: Vehicle horn, car horn, honking | Toot
Siren wailing: Siren | Police car (siren) | Ambulance (siren) | Civil defense siren
Siren wailing: Fire engine, fire truck (siren) | Emergency vehicle
Train passing: Train | Rail transport | Railroad car, train wagon
Train horn: Train horn | Train whistle
Airplane overhead: Aircraft | Fixed-wing aircraft, airplane | Jet engine | Aircraft engine
Engine running: Engine | Idling | Medium engine (mid frequency) | Heavy engine (low frequency)
Engine revving: Accelerating, revving, vroom
Door slams: Slam
Knocking: Knock
Doorbell rings: Doorbell | Ding-dong
Dishes clattering: Dishes, pots, and pans | Cutlery, silverware
Typing: Typing | Computer keyboard | Typewriter
Phone ringing: Telephone | Telephone bell ringing | Ringtone
Alarm ringing: Alarm | Alarm clock | Smoke detector, smoke alarm | Fire alarm | Car alarm
Clock ticking: Clock | Tick | Tick-tock
Gunshots: Gunshot, gunfire | Machine gun | Fusillade
Fireworks: Fireworks | Firecracker
Glass shattering: Glass | Shatter
Beeping: Beep, bleep | Reversing beeps | Chirp tone
Tone: Sine wave
Static: Static | White noise | Pink noise
Electrical hum: Mains hum | Hum
TV playing: Television
Radio playing: Radio
Fan whirring: Mechanical fan
Vacuum cleaner running: Vacuum cleaner
Toilet flushes: Toilet flush
-: Silence | Sound effect | Harmonic | Pulse | Noise | Environmental noise | Distortion | Sidetone
-: Inside, small room | Inside, large room or hall | Inside, public space | Echo | Reverberation
-: Outside, urban or manmade | Outside, rural or natural | Field recording
"""


class TagOptions(NamedTuple):
    """How tag logits become labels, events and captions (the ``--at_*`` options)."""

    top_k: int = 5
    threshold: float = -1.0
    language: str = "follow_asr"
    speech_events: bool = False


def _span(first: str, last: str) -> range:
    return range(label_index(first), label_index(last) + 1)


@lru_cache(maxsize=None)
def captions() -> Tuple[Optional[str], ...]:
    """Caption word per class (None: never captioned), as in docs/outputs.md."""
    names = label_names("en")
    table: Dict[int, Optional[str]] = {}
    for line in CAPTIONS.strip().splitlines():
        caption, members = line.split(":")
        for name in members.split("|"):
            table[label_index(name.strip())] = None if caption == "-" else caption
    table.update({i: None for i in _span(*SPEECH_NAMES)})
    table.update({i: "Singing" for i in _span(*SINGING_NAMES)})
    table.update({i: "Music" for i in _span(*MUSIC_NAMES)})
    for i, name in enumerate(names):
        if i not in table:
            word = name.split(",")[0].split(" (")[0].strip()
            table[i] = word[:1].upper() + word[1:]
    return tuple(table[i] for i in range(NUM_CLASSES))


def event_classes(speech_events: bool = False) -> List[int]:
    """Classes of the sound-event timeline: all but the speech classes unless asked for."""
    speech = set() if speech_events else set(_span(*SPEECH_NAMES))
    return [i for i in range(NUM_CLASSES) if i not in speech]


def row_times(n_rows: int, at_time_res: float, duration: float) -> List[Tuple[float, float]]:
    """(start, end) seconds of each tag row, to the ms; the last ends with the audio."""
    end = round(duration, 3)
    return [(round(k * at_time_res, 3), min(round((k + 1) * at_time_res, 3), end))
            for k in range(n_rows)]


def active_classes(
    audio_tag: torch.Tensor, include: Sequence[int], top_k: int, threshold: float
) -> List[List[Tuple[int, float]]]:
    """Per row, the top_k classes of ``include`` with logit > threshold: [(class, logit)]."""
    include_t = torch.as_tensor(list(include), dtype=torch.long)
    values = audio_tag.detach().float().cpu()[:, include_t]
    masked = torch.where(values > threshold, values, torch.full_like(values, -float("inf")))
    top, order = torch.sort(masked, dim=1, descending=True, stable=True)
    k = min(top_k, include_t.numel())
    rows = []
    for logits, classes in zip(top[:, :k].tolist(), include_t[order[:, :k]].tolist()):
        rows.append([(c, v) for c, v in zip(classes, logits) if v != -float("inf")])
    return rows


def sound_events(
    audio_tag: torch.Tensor, at_time_res: float, duration: float, options: TagOptions
) -> List[dict]:
    """Merge consecutive rows in which a class is active into events, sorted by start time:
    ``{"start", "end", "index", "label" (English), "peak" (max logit)}``."""
    rows = active_classes(
        audio_tag, event_classes(options.speech_events), options.top_k, options.threshold
    )
    times = row_times(len(rows), at_time_res, duration)
    names = label_names("en")
    open_events: Dict[int, dict] = {}
    events = []
    for (start, end), active in zip(times, rows):
        for index in set(open_events) - {c for c, _ in active}:
            events.append(open_events.pop(index))
        for index, logit in active:
            event = open_events.setdefault(
                index, {"start": start, "end": end, "index": index, "label": names[index]}
            )
            event["end"] = end
            event["peak"] = round(max(event.get("peak", -float("inf")), logit), 4)
    events.extend(open_events.values())
    return sorted(events, key=lambda e: (e["start"], -e["peak"], e["index"]))


def _language(result: dict, options: TagOptions) -> str:
    if options.language == "follow_asr":
        return result.get("language") or "en"
    return options.language


def tags_document(result: dict, audio_path: str, duration: float, options: TagOptions) -> dict:
    """Content of ``<name>.tags.json``."""
    audio_tag, res = result["audio_tag"], result["at_time_res"]
    names = label_names("en")
    rows = active_classes(audio_tag, range(NUM_CLASSES), options.top_k, -float("inf"))
    chunks = [
        {"start": start, "end": end, "top": [
            {"index": c, "label": names[c], "logit": round(v, 4)} for c, v in top
        ]}
        for (start, end), top in zip(row_times(len(rows), res, duration), rows)
    ]
    parsed = parse_at_label(result, _language(result, options), options.top_k, options.threshold)
    events = sound_events(audio_tag, res, duration, options)
    return {"audio": audio_path, "duration": round(duration, 3), "at_time_res": res,
            "language": result.get("language"), "top_k": options.top_k,
            "threshold": options.threshold, "chunks": chunks, "parsed": parsed, "events": events}


def tags_tsv_rows(result: dict, duration: float, options: TagOptions) -> List[tuple]:
    """(start ms, end ms, label, logit) for the parse_at_label view of every row."""
    parsed = parse_at_label(result, _language(result, options), options.top_k, options.threshold)
    times = row_times(len(parsed), result["at_time_res"], duration)
    return [
        (round(1000 * start), round(1000 * end), label, f"{logit:.4f}")
        for (start, end), chunk in zip(times, parsed)
        for label, logit in chunk["audio tags"]
    ]


def events_tsv_rows(events: List[dict], language: str) -> List[tuple]:
    names = label_names(language)
    return [(round(1000 * e["start"]), round(1000 * e["end"]), names[e["index"]],
             f"{e['peak']:.4f}") for e in events]


def _write_tsv(path: str, header: Sequence[str], rows: List[tuple]):
    with open(path, "w", encoding="utf-8") as f:
        for row in [tuple(header)] + rows:
            print(*(str(v).replace("\t", " ") for v in row), sep="\t", file=f)


# ---------------------------------------------------------------- SDH subtitles


class _CueTimes(SubtitlesWriter):
    """openai-whisper's cue splitting (word options included) with times left in seconds."""

    always_include_hours = False
    decimal_marker = "."

    def format_timestamp(self, seconds: float):
        return round(seconds * 1000.0) / 1000.0  # the ms the writers show, so equal cues match


def speech_cues(result: dict, writer_args: dict) -> List[Tuple[float, float, str]]:
    """The cues openai-whisper's srt/vtt writers would write, as (start, end, text)."""
    return list(_CueTimes(".").iterate_result(result, **writer_args))


def _sound_captions(events: List[dict]) -> List[dict]:
    """Events with a caption; events sharing a caption and overlapping are merged."""
    table = captions()
    merged: List[dict] = []
    for event in sorted(events, key=lambda e: e["start"]):
        caption = table[event["index"]]
        if caption is None:
            continue
        same = [m for m in merged if m["caption"] == caption and m["end"] >= event["start"]]
        if same:
            same[0]["end"] = max(same[0]["end"], event["end"])
            same[0]["peak"] = max(same[0]["peak"], event["peak"])
        else:
            merged.append({"caption": caption, **{k: event[k] for k in ("start", "end", "peak")}})
    return merged


def _gaps(start: float, end: float, covered: List[Tuple[float, float]]):
    """Parts of [start, end) outside the covered intervals, at least MIN_EVENT_CUE long."""
    pieces, cursor = [], start
    for a, b in sorted(covered):
        if b <= cursor or a >= end:
            continue
        if a - cursor >= MIN_EVENT_CUE:
            pieces.append((cursor, a))
        cursor = max(cursor, b)
    if end - cursor >= MIN_EVENT_CUE:
        pieces.append((cursor, end))
    return pieces


def sdh_cues(speech: List[Tuple[float, float, str]], events: List[dict]) -> List[tuple]:
    """Speech cues with the sounds they overlap as extra lines, then sound-only cues for the
    time between speech: (start, end, text), sorted by start."""
    sounds = _sound_captions(events)
    cues = []
    for start, end, text in speech:
        over = sorted(
            (s for s in sounds if s["start"] < end and s["end"] > start), key=lambda s: -s["peak"]
        )
        if text and any(s["caption"] == "Singing" for s in over):
            text = f"♪ {text} ♪"
            over = [s for s in over if s["caption"] not in ("Singing", "Music")]
        lines = [f"[{s['caption']}]" for s in over[:MAX_EVENT_LINES]]
        cues.append((start, end, "\n".join(lines + [text]) if text else "\n".join(lines)))
    covered = [(start, end) for start, end, _ in speech]
    pieces = [(a, b, s) for s in sounds for a, b in _gaps(s["start"], s["end"], covered)]
    bounds = sorted({t for a, b, _ in pieces for t in (a, b)})
    alone: List[tuple] = []
    for a, b in zip(bounds, bounds[1:]):
        here = sorted((s for x, y, s in pieces if x <= a and y >= b), key=lambda s: -s["peak"])
        text = "\n".join(f"[{s['caption']}]" for s in here[:MAX_EVENT_LINES])
        if text and alone and alone[-1][1] == a and alone[-1][2] == text:
            alone[-1] = (alone[-1][0], b, text)
        elif text:
            alone.append((a, b, text))
    cues += alone
    return sorted(cues, key=lambda c: (c[0], c[1]))


def write_sdh(path: str, cues: List[tuple], vtt: bool):
    """SRT (numbered, hh:mm:ss,mmm) or WebVTT (hh: only when needed, mm:ss.mmm) captions."""
    with open(path, "w", encoding="utf-8") as f:
        if vtt:
            print("WEBVTT\n", file=f)
        for i, (start, end, text) in enumerate(cues, start=1):
            times = [format_timestamp(t, not vtt, "." if vtt else ",") for t in (start, end)]
            number = "" if vtt else f"{i}\n"
            print(f"{number}{times[0]} --> {times[1]}\n{text.replace('-->', '->')}\n", file=f)


# ---------------------------------------------------------------- writing


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
        _write_tsv(path + ".tags.tsv", ("start", "end", "label", "logit"),
                   tags_tsv_rows(result, duration, options))
    if "events" in formats:
        _write_tsv(path + ".events.tsv", ("start", "end", "label", "peak_logit"),
                   events_tsv_rows(events, _language(result, options)))
    if "sdh" in formats:
        cues = sdh_cues(speech_cues(result, writer_args), events)
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
