"""The gate inside openai-whisper's ``transcribe`` loop (seam: ``WhisperAT.decode``)."""

from typing import List

from whisper.audio import HOP_LENGTH, SAMPLE_RATE
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.utils import format_timestamp, make_safe

from .decide import (
    SKIP_TEMPERATURE,
    GateLog,
    held_words,
    moved_entry,
    segment_verdict,
    skip_steps,
)
from .evidence import FRAMES_PER_SECOND
from .speech import GateOptions, speech_probability
from .track import SpeechMap


class WindowGate:
    """For a window whose start is to be skipped, ``WhisperAT.decode`` returns, instead of
    decoding, a result whose tokens are two equal timestamps ``<|t|><|t|>`` and whose
    temperature is infinite. transcribe's own seeking then moves ``2 t`` mel frames on, records
    an empty, instantaneous segment (which ``finish`` removes) and, the temperature being above
    0.5, starts the next prompt afresh, as after a high-temperature fallback. See
    docs/gate.md for why this seam."""

    def __init__(self, options: GateOptions, timestamp_begin: int, transcribe_options: dict):
        self.options = options
        self.log = GateLog(options)
        self.timestamp_begin = timestamp_begin
        silence = transcribe_options.get("hallucination_silence_threshold")
        self.silence = silence if transcribe_options.get("word_timestamps") else None
        self.decisions = {}  # window seek -> timestamp tokens to skip (0: decode)
        self.skip_lines = {}  # the line openai-whisper prints for a skip -> what we print

    def decide(self, tagger, seek: int, n_frames: int) -> int:
        """Timestamp positions (of 2 mel frames) to skip in the window at ``seek``."""
        if seek in self.decisions:
            return self.decisions[seek]
        steps = skip_steps(tagger, seek, n_frames, self.options, self.silence, self.log)
        self.decisions[seek] = steps
        if steps:
            resume = float(seek * HOP_LENGTH / SAMPLE_RATE) + steps * 0.02  # as transcribe does
            at = format_timestamp(resume)
            shown = f"[{format_timestamp(seek / FRAMES_PER_SECOND)} --> {at}]"
            self.skip_lines[f"[{at} --> {at}] "] = f"{shown} (speech gate: no speech, skipped)"
        return steps

    def result(self, seek: int, options: DecodingOptions, features):
        """The DecodingResult that makes transcribe skip, or None to decode the window."""
        steps = self.decisions.get(seek, 0)
        if not steps:
            return None
        token = self.timestamp_begin + steps
        return DecodingResult(audio_features=features, language=options.language or "en",
                              tokens=[token, token], text="", avg_logprob=0.0,
                              no_speech_prob=0.0, temperature=SKIP_TEMPERATURE,
                              compression_ratio=0.0)

    def make_safe(self, line: str) -> str:
        """openai-whisper's ``make_safe`` for its verbose lines; a skip's empty line says so."""
        return make_safe(self.skip_lines.pop(line, line))

    def finish(self, result: dict, tagger, tokenizer, duration: float) -> dict:
        """Remove the skips' empty segments; drop the segments past the end of the audio or in
        no speech, hold the others' times to the speech (``at_original_times`` keeps what
        transcribe said); renumber them, rebuild the text if a dropped segment had any; add
        ``at_gate``. ``tagger``: the finished ChunkTagger with its speech track."""
        skipped = {seek for seek, steps in self.decisions.items() if steps}
        segments = [s for s in result["segments"]
                    if not (s["seek"] in skipped and not s["tokens"] and s["start"] == s["end"])]
        speech_map = SpeechMap.build(tagger, range(tagger.n_rows), self.options.threshold,
                                     self.options.margin)  # fmt: skip
        kept: List[dict] = []
        dropped: List[dict] = []
        for segment in segments:
            reason, start, end = segment_verdict(segment["start"], segment["end"], speech_map,
                                                 duration)  # fmt: skip
            if reason is not None:
                dropped.append({**segment, "reason": reason})
                continue
            if (start, end) != (segment["start"], segment["end"]):
                entry = moved_entry(segment["start"], segment["end"], start, end)
                self.log.moved.append(entry)
                segment = {**segment, "start": start, "end": end,
                           "at_original_times": entry["original"]}  # fmt: skip
                if segment.get("words"):
                    times = held_words([(w["start"], w["end"]) for w in segment["words"]],
                                       start, end)  # fmt: skip
                    segment["words"] = [{**w, "start": a, "end": b}
                                        for w, (a, b) in zip(segment["words"], times)]
            kept.append(segment)
        if any(s["tokens"] for s in dropped):  # as transcribe makes it, from what is left
            result["text"] = tokenizer.decode([t for s in kept for t in s["tokens"]])
        result["segments"] = [{**s, "id": i} for i, s in enumerate(kept)]
        probs = speech_probability(tagger.logits)
        result["at_gate"] = self.log.report(dropped, probs, tagger.res_frames)
        return result
