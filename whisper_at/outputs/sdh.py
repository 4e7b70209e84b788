"""SDH subtitles (``.sdh.srt`` / ``.sdh.vtt``): speech cues with bracketed sound captions;
the rules are in docs/outputs.md."""

from functools import lru_cache
from typing import Dict, List, Optional, Tuple

from whisper.utils import SubtitlesWriter, format_timestamp

from ..labels import NUM_CLASSES, label_index, label_names
from .events import MUSIC_NAMES, SINGING_NAMES, SPEECH_NAMES, span

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


@lru_cache(maxsize=None)
def captions() -> Tuple[Optional[str], ...]:
    """Caption word per class (None: never captioned), as in docs/outputs.md."""
    names = label_names("en")
    table: Dict[int, Optional[str]] = {}
    for line in CAPTIONS.strip().splitlines():
        caption, members = line.split(":")
        for name in members.split("|"):
            table[label_index(name.strip())] = None if caption == "-" else caption
    table.update({i: None for i in span(*SPEECH_NAMES)})
    table.update({i: "Singing" for i in span(*SINGING_NAMES)})
    table.update({i: "Music" for i in span(*MUSIC_NAMES)})
    for i, name in enumerate(names):
        if i not in table:
            word = name.split(",")[0].split(" (")[0].strip()
            table[i] = word[:1].upper() + word[1:]
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
