"""SDH subtitles (``.sdh.srt`` / ``.sdh.vtt``): speech cues with bracketed sound captions in
lower case, each sound captioned at its onset; the rules are in docs/outputs.md."""

from functools import lru_cache
from typing import Dict, Iterator, List, Optional, Tuple

from whisper.utils import SubtitlesWriter, format_timestamp

from ..gate import SINGING_NAMES, SPEECH_NAMES
from ..labels import NUM_CLASSES, label_index, label_names
from .events import MUSIC_NAMES, TagOptions, span

MAX_EVENT_LINES = 2  # sound captions per cue, strongest first
MIN_EVENT_CUE = 1.0  # seconds: shorter gaps between speech cues get no sound-only cue
MAX_SOUND_CUE = 7.0  # seconds a sound-only cue stays up (onset captions, not --at_sdh_repeat)
CONTINUES_AFTER = TagOptions().sdh_continues  # seconds before "[... continues]"
MUSIC, SINGING = "music", "singing"  # the captions of all music and all singing classes

# "caption: class | class | ...": the sound caption (lower case) of those AudioSet classes;
# classes not listed are captioned by their own name (first part, lower case); "-": no caption.
CAPTIONS = """
shouting: Shout | Bellow | Yell | Battle cry | Children shouting
laughter: Laughter | Belly laugh | Snicker | Giggle | Chuckle, chortle | Baby laughter
crying: Crying, sobbing | Whimper | Wail, moan
baby crying: Baby cry, infant cry
coughing: Cough
sneezes: Sneeze
sighs: Sigh
gasps: Gasp
groaning: Groan | Grunt
whooping: Whoop
breathing heavily: Breathing | Pant | Wheeze
sniffing: Sniff | Snort
clears throat: Throat clearing
footsteps: Walk, footsteps | Run | Shuffle
chewing: Chewing, mastication | Biting
clapping: Clapping | Hands
heartbeat: Heart sounds, heartbeat | Heart murmur
indistinct chatter: Chatter | Hubbub, speech noise, speech babble
crowd noise: Crowd
dog barking: Dog | Bark | Bow-wow | Yip | Canidae, dogs, wolves
dog whimpering: Whimper (dog)
cat meowing: Cat | Meow | Caterwaul
horse neighing: Horse | Neigh, whinny
hooves clopping: Clip-clop
cow mooing: Cattle, bovinae | Moo
pig oinking: Pig | Oink
sheep bleating: Sheep | Goat | Bleat
chickens clucking: Fowl | Chicken, rooster | Cluck
rooster crowing: Crowing, cock-a-doodle-doo
ducks quacking: Duck | Quack
birds chirping: Bird | Bird vocalization, bird call, bird song | Chirp, tweet
insects buzzing: Insect | Fly, housefly | Bee, wasp, etc. | Mosquito | Buzz
crickets chirping: Cricket
frogs croaking: Frog | Croak
animal noises: Animal | Domestic animals, pets | Wild animals
wind blowing: Wind | Wind noise (microphone)
leaves rustling: Rustling leaves | Rustle
thunder: Thunder | Thunderstorm
rain falling: Rain | Raindrop | Rain on surface
water running: Water | Stream | Water tap, faucet | Trickle, dribble | Gush | Pour
waves crashing: Ocean | Waves, surf
fire crackling: Fire | Crackle
traffic: Traffic noise, roadway noise | Vehicle | Motor vehicle (road)
car passing: Car | Car passing by
car horn honking: Vehicle horn, car horn, honking | Toot
siren wailing: Siren | Police car (siren) | Ambulance (siren) | Civil defense siren
siren wailing: Fire engine, fire truck (siren) | Emergency vehicle
train passing: Train | Rail transport | Railroad car, train wagon
train horn: Train horn | Train whistle
airplane overhead: Aircraft | Fixed-wing aircraft, airplane | Jet engine | Aircraft engine
engine running: Engine | Idling | Medium engine (mid frequency) | Heavy engine (low frequency)
engine revving: Accelerating, revving, vroom
door slams: Slam
knocking: Knock
doorbell rings: Doorbell | Ding-dong
dishes clattering: Dishes, pots, and pans | Cutlery, silverware
typing: Typing | Computer keyboard | Typewriter
phone ringing: Telephone | Telephone bell ringing | Ringtone
alarm ringing: Alarm | Alarm clock | Smoke detector, smoke alarm | Fire alarm | Car alarm
clock ticking: Clock | Tick | Tick-tock
gunshots: Gunshot, gunfire | Machine gun | Fusillade
fireworks: Fireworks | Firecracker
glass shattering: Glass | Shatter
beeping: Beep, bleep | Reversing beeps | Chirp tone
tone: Sine wave
static: Static | White noise | Pink noise
electrical hum: Mains hum | Hum
TV playing: Television
radio playing: Radio
fan whirring: Mechanical fan
vacuum cleaner running: Vacuum cleaner
toilet flushes: Toilet flush
-: Silence | Sound effect | Harmonic | Pulse | Noise | Environmental noise | Distortion | Sidetone
-: Inside, small room | Inside, large room or hall | Inside, public space | Echo | Reverberation
-: Outside, urban or manmade | Outside, rural or natural | Field recording
"""


def lower_case(caption: str) -> str:
    """A caption in lower case, as SDH sound captions are; acronyms (TV) keep their capitals."""
    return " ".join(w if w.isupper() and len(w) > 1 else w.lower() for w in caption.split())


@lru_cache(maxsize=None)
def captions() -> Tuple[Optional[str], ...]:
    """Caption words per class, lower case (None: never captioned), as in docs/outputs.md."""
    names = label_names("en")
    table: Dict[int, Optional[str]] = {}
    for line in CAPTIONS.strip().splitlines():
        caption, members = line.split(":")
        for name in members.split("|"):
            table[label_index(name.strip())] = None if caption == "-" else caption
    table.update({i: None for i in span(*SPEECH_NAMES)})
    table.update({i: SINGING for i in span(*SINGING_NAMES)})
    table.update({i: MUSIC for i in span(*MUSIC_NAMES)})
    for i, name in enumerate(names):
        if i not in table:
            table[i] = lower_case(name.split(",")[0].split(" (")[0])
    return tuple(table[i] for i in range(NUM_CLASSES))


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
    """Events with a caption; events sharing a caption and overlapping are merged: the sounds."""
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


def _gap_slots(sounds: List[dict], covered: List[Tuple[float, float]]) -> List[tuple]:
    """(start, end, sounds) of the time between speech cues, split where the set of sounds
    changes; a part shorter than MIN_EVENT_CUE is joined to the part next to it."""
    pieces = [(a, b, s) for s in sounds for a, b in _gaps(s["start"], s["end"], covered)]
    bounds = sorted({t for a, b, _ in pieces for t in (a, b)})
    slots: List[tuple] = []
    for a, b in zip(bounds, bounds[1:]):
        here = [s for x, y, s in pieces if x <= a and y >= b]
        last = slots[-1] if slots else None
        if here and last and last[1] == a and min(b - a, a - last[0]) < MIN_EVENT_CUE:
            joined = last[2] + [s for s in here if all(s is not t for t in last[2])]
            slots[-1] = (last[0], b, joined)
        elif here:
            slots.append((a, b, here))
    return slots


def _split(slots: List[tuple], every: float) -> Iterator[tuple]:
    """Slots longer than ``every`` seconds cut into parts of ``every`` (0: not cut)."""
    for a, b, here in slots:
        while every > 0 and b - a >= every + MIN_EVENT_CUE:
            yield a, a + every, here
            a += every
        yield a, b, here


class _Captioner:
    """Chooses each cue's sound captions: a sound at its onset, then ``[... continues]`` once
    it has gone ``continues`` seconds without its caption; every cue with ``repeat``."""

    def __init__(self, repeat: bool, continues: float):
        self.repeat, self.continues = repeat, continues
        self.shown: Dict[int, float] = {}  # id of a sound -> start of the last cue showing it

    def seen(self, sounds: List[dict], start: float):
        for sound in sounds:
            self.shown[id(sound)] = start

    def lines(self, sounds: List[dict], start: float) -> List[str]:
        strongest = sorted(sounds, key=lambda s: -s["peak"])
        if self.repeat:
            return [f"[{s['caption']}]" for s in strongest[:MAX_EVENT_LINES]]
        new = [(s, "") for s in strongest if id(s) not in self.shown]
        due = [(s, " continues") for s in strongest if id(s) in self.shown
               and 0 < self.continues <= start - self.shown[id(s)]]  # fmt: skip
        chosen = (new + due)[:MAX_EVENT_LINES]
        self.seen([s for s, _ in chosen], start)
        return [f"[{s['caption']}{suffix}]" for s, suffix in chosen]


def sdh_cues(
    speech: List[Tuple[float, float, str]], events: List[dict], repeat: bool = False,
    continues: float = CONTINUES_AFTER,
) -> List[tuple]:
    """Speech cues with sound captions as extra lines above the text, and sound-only cues for
    the time between speech: (start, end, text), sorted by start. A sound is captioned on the
    first cue it overlaps, and again as ``[... continues]`` on the first cue at least
    ``continues`` seconds later (0: never); ``repeat``: on every cue (whisper-at 1.0)."""
    sounds = _sound_captions(events)
    captioner = _Captioner(repeat, continues)
    slots = [(start, end, text, [s for s in sounds if s["start"] < end and s["end"] > start])
             for start, end, text in speech]  # fmt: skip
    gaps = _gap_slots(sounds, [(start, end) for start, end, _ in speech])
    slots += [(a, b, None, here) for a, b, here in _split(gaps, 0 if repeat else continues)]
    cues: List[tuple] = []
    alone: List[tuple] = []  # sound-only cues
    for start, end, text, here in sorted(slots, key=lambda slot: (slot[0], slot[1])):
        if text and any(s["caption"] == SINGING for s in here):  # lyrics: ♪ text ♪
            text = f"♪ {text} ♪"
            captioner.seen([s for s in here if s["caption"] in (SINGING, MUSIC)], start)
            here = [s for s in here if s["caption"] not in (SINGING, MUSIC)]
        lines = "\n".join(captioner.lines(here, start))
        if text is not None:
            cues.append((start, end, "\n".join(part for part in (lines, text) if part)))
        elif lines and alone and alone[-1][1] == start and alone[-1][2] == lines:
            alone[-1] = (alone[-1][0], end, lines)  # the same captions go on: one cue
        elif lines:
            alone.append((start, end if repeat else min(end, start + MAX_SOUND_CUE), lines))
    return sorted(cues + alone, key=lambda cue: (cue[0], cue[1]))


def write_sdh(path: str, cues: List[tuple], vtt: bool):
    """SRT (numbered, hh:mm:ss,mmm) or WebVTT (hh: only when needed, mm:ss.mmm) captions."""
    with open(path, "w", encoding="utf-8") as f:
        if vtt:
            print("WEBVTT\n", file=f)
        for i, (start, end, text) in enumerate(cues, start=1):
            times = [format_timestamp(t, not vtt, "." if vtt else ",") for t in (start, end)]
            number = "" if vtt else f"{i}\n"
            print(f"{number}{times[0]} --> {times[1]}\n{text.replace('-->', '->')}\n", file=f)
