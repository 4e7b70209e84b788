"""The recordings bench_live.py streams, made once and cached under
<cache>/bench-audio/<name>-<recipe hash>.

* ``live`` (188 s): testkit.SENTENCES in blocks of four (two espeak-ng voices), between them
  silence, a plucked-string melody, white and pink noise and a 440 Hz tone of 4-20 s.
* ``held-out`` (297 s): 40 sentences no test or head has heard, in blocks of two, five voices
  and speeds; between blocks 1.5-6 s of silence, melody, white or pink noise or tone; after the
  tenth block the five LibriVox utterances of the gate sweep (human speech, 25 s).

Each comes with its parts: (start s, end s, kind, text), kind "speech" or the sound's name.
"""

import json
from pathlib import Path
from typing import List, Tuple

import common
import numpy as np
import testkit

RATE = common.SAMPLE_RATE
NAMES = ("live", "held-out")
HELD_OUT = [
    "The bakery on the corner opens at six every morning.",
    "My sister is learning to speak Japanese this year.",
    "Please remember to water the plants while I am away.",
    "The bus was late again because of the heavy snow.",
    "He painted the fence white and the door bright blue.",
    "We are going to visit our grandparents next weekend.",
    "The dog barked loudly when the mailman came to the door.",
    "I would like a glass of orange juice with my breakfast.",
    "The meeting will start as soon as everyone has arrived.",
    "She found an old photograph hidden inside the book.",
    "The river flooded the fields after three days of rain.",
    "Can you help me carry these boxes up the stairs?",
    "The concert was so loud that my ears were ringing.",
    "Daniel forgot his keys and had to wait outside.",
    "Fresh bread smells wonderful when it comes out of the oven.",
    "The pilot announced that we would land in twenty minutes.",
    "Margaret keeps her bicycle in the garage next to the car.",
    "There are seven days in a week and twelve months in a year.",
    "The little boy wanted a red balloon for his birthday.",
    "Turn left at the traffic lights and go straight ahead.",
    "The scientists measured the temperature of the ocean.",
    "Our neighbours have a garden full of roses and tulips.",
    "I have to finish this letter before the post office closes.",
    "The hotel room had a beautiful view of the mountains.",
    "Robert plays the guitar in a small band with his friends.",
    "It is important to wash your hands before you eat.",
    "The shop sells shoes, hats and warm winter coats.",
    "We watched the sunset from the top of the hill.",
    "The teacher asked the class to open their books at page ten.",
    "A strong wind blew the leaves across the empty street.",
    "Helen ordered a pizza with mushrooms and olives.",
    "The train was crowded, so we stood all the way to London.",
    "My phone battery is almost empty, I need to charge it.",
    "The farmer milks his cows twice a day.",
    "Everyone laughed when the clown fell off his chair.",
    "The exam will be held in the main hall on Friday.",
    "Thomas drove his old truck to the market in town.",
    "The kitten slept in a basket near the warm fire.",
    "Please write your name at the top of the page.",
    "We need to buy eggs, butter and flour for the cake.",
]
HELD_OUT_VOICES = [("en-us", 140), ("en-gb", 150), ("en-us+f3", 150), ("en-gb+m3", 160),
                   ("en-us+m5", 145)]  # fmt: skip

# kind -> its sox synth effects
SOUNDS = {"white noise": ("whitenoise", "vol", "0.05"), "tone": ("sine", "440", "vol", "0.3"),
          "pink noise": ("pinknoise", "vol", "0.1")}  # fmt: skip

Part = Tuple[float, float, str, str]


class _Tape:
    """Pieces of audio laid end to end, with their parts."""

    def __init__(self, directory: Path):
        self.directory, self.pieces, self.parts, self.cursor = directory, [], [], 0.0

    def add(self, kind: str, audio, text: str = ""):
        self.pieces.append(np.asarray(audio, np.float32))
        end = self.cursor + len(audio) / RATE
        self.parts.append((round(self.cursor, 3), round(end, 3), kind, text))
        self.cursor = end

    def speech(self, sentences, voice: str, speed: int, name: str):
        audio = []
        for i, text in enumerate(sentences):
            wav = testkit.espeak(text, self.directory / f"{name}{i}.wav", voice=voice, speed=speed)
            audio += [testkit.read_wav(wav), np.zeros(RATE, np.float32)]
        self.add("speech", np.concatenate(audio), " ".join(sentences))

    def sound(self, kind: str, seconds: float):
        wav = testkit.synth(self.directory / "x.wav", seconds, *SOUNDS[kind])
        self.add(kind, testkit.read_wav(wav))

    def silence(self, seconds: float):
        self.add("silence", np.zeros(round(seconds * RATE), np.float32))


def _live(tape: _Tape, melody):
    s = testkit.SENTENCES
    tape.speech(s[0:4], "en-us", 140, "s")
    tape.silence(4)
    tape.add("music", melody)
    tape.speech(s[4:8], "en-us", 140, "s")
    tape.sound("white noise", 15)
    tape.speech(s[8:12], "en-gb", 150, "s")
    tape.sound("tone", 15)
    tape.speech(s[0:4], "en-gb", 150, "s")
    tape.sound("pink noise", 15)
    tape.speech(s[4:8], "en-us", 160, "s")
    tape.silence(5)
    tape.add("music", melody[: 10 * RATE])


def _held_out(tape: _Tape, melody):
    import gate_sweep

    between = [lambda: tape.silence(3), lambda: tape.add("music", melody[: 6 * RATE]),
               lambda: tape.sound("white noise", 5), lambda: tape.sound("tone", 5),
               lambda: tape.sound("pink noise", 5), lambda: tape.silence(1.5)]  # fmt: skip
    for block in range(len(HELD_OUT) // 2):
        voice, speed = HELD_OUT_VOICES[block % len(HELD_OUT_VOICES)]
        tape.speech(HELD_OUT[2 * block : 2 * block + 2], voice, speed, f"h{block}_")
        between[block % len(between)]()
        if block == 9:
            ids = gate_sweep.RECORDED["a"] + gate_sweep.RECORDED["b"]
            recorded = gate_sweep.recorded_pieces(common.cache_dir(), ids)
            tape.add("speech", np.concatenate([p[0] for p in recorded]),
                     " ".join(p[3] for p in recorded))  # fmt: skip
            tape.add("music", melody[: 6 * RATE])


def recipe_key(name: str) -> str:
    """Hash of the code and constants that make recording ``name``: a new recipe, a new folder."""
    import gate_sweep

    functions = [_Tape, _live if name == "live" else _held_out, recording, testkit.sox,
                 testkit.espeak, testkit.synth, testkit.pluck_music, testkit.write_wav]  # fmt: skip
    constants = [SOUNDS, common.ARPEGGIO, testkit.SENTENCES]
    if name == "held-out":
        functions.append(gate_sweep.recorded_pieces)
        constants += [HELD_OUT, HELD_OUT_VOICES, gate_sweep.RECORDED]
    return common.recipe_hash(functions, constants)


def recording(name: str = "live") -> Tuple[Path, List[Part]]:
    """(path, parts) of the recording ``name`` (NAMES)."""
    if name not in NAMES:
        raise ValueError(f"unknown recording {name!r}: expected one of {', '.join(NAMES)}")
    directory = common.cache_dir() / "bench-audio" / f"{name}-{recipe_key(name)}"
    directory.mkdir(parents=True, exist_ok=True)
    path, parts_file = directory / f"{name}.wav", directory / f"{name}.json"
    if path.is_file() and parts_file.is_file():
        return path, [tuple(p) for p in json.loads(parts_file.read_text())]
    melody = testkit.read_wav(testkit.pluck_music(directory / "m.wav", common.ARPEGGIO, 0.25, 20))
    tape = _Tape(directory)
    (_live if name == "live" else _held_out)(tape, melody * 0.5)
    common.atomic(path, lambda tmp: testkit.write_wav(tmp, np.concatenate(tape.pieces)))
    common.atomic(parts_file, lambda tmp: tmp.write_text(json.dumps(tape.parts)))
    return path, tape.parts
