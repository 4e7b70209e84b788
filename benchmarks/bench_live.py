"""Live captions (whisper_at.live) on a 3-minute recording fed a step at a time.

The recording (live_audio.py: espeak-ng speech in two voices, pauses, a plucked-string melody,
white and pink noise, a 440 Hz tone; made once, cached; ``--recording held-out``: 5 minutes of
40 sentences nothing else here has heard, in five voices, and LibriVox speech, between 1.5-6 s
of the same sounds) is fed a step (1 s; 2 s in one row) at a time, as a virtual clock: each
step's audio is fed when it has "arrived", whatever the compute took, so the run is
deterministic in what it commits and runs as fast as the machine can. A word's
*audio latency* is the stream time at which it is committed (the end of the step whose pass
commits it) minus its end in the audio (the committed word's own timestamp): the policy's
latency on a machine that keeps up; *+ its pass* adds that pass's measured compute time (the
latency on this machine if it kept up: on a machine slower than real time, ``whisper-at live``
merges steps instead). A sound's onset latency is the same for its event against the true
onset.

Rows: whisper_at.live (faster-whisper backend, int8) with tiny.en and the speech head the tests
train (with and without the speech gate), base with the speech head trained the same way on
base (and the gate) and base without a head (no tags, no gate); the row
"LocalAgreement-2 only": the published policy alone (``commit_pause=None``,
``agreement_history=1``); the rows "3 beams": ``beam_size=3`` in every pass and in the
offline transcript they are compared with (run apart, with ``--rows``); the baseline:
whisper_streaming's policy over plain faster-whisper, written here (LocalAgreement-2,
``segment`` buffer trimming at 15 s, 200-character prompt, beam 5, word timestamps, its
no_speech_prob > 0.9 word filter). Each row runs in its own process (peak RSS).
Columns: caption latency p50/p95; sound-event onset latency per non-speech block; WER of the
committed text vs the same model's offline transcript (``transcribe`` of the whole file, same
options) and vs the reference; words committed inside non-speech (more than 1 s from both its
ends: an utterance's first word timed a little early is not invented); compute real-time
factor; peak RSS; the longest buffer.

    python benchmarks/bench_live.py [--rows "NAME;NAME..."] [--recording held-out]
    python benchmarks/bench_live.py --minutes 30
    python benchmarks/bench_live.py --quick    # smoke run: two rows (or --rows) on 30 s
    python benchmarks/bench_live.py --lookahead  # base: one sentence's start, more or less heard
    python benchmarks/bench_live.py --shifts     # the offline WER after 0-2.3 s of silence
    python benchmarks/bench_live.py --live-shifts --rows "live tiny.en + gate"  # live, too

``--minutes N``: memory over a long stream instead: the recording fed over and over for N
minutes of stream (the first row's settings, virtual clock), the process's resident memory
sampled every minute of stream; prints it, the buffer and the growth after the first minutes.
"""

import argparse
import json
import subprocess
import sys
import time

import common
import numpy as np
import testkit
from live_audio import NAMES, recording

RATE = common.SAMPLE_RATE
ROWS = (
    "live tiny.en + gate",
    "live tiny.en + gate, LocalAgreement-2 only",
    "live tiny.en + gate (step 2 s)",
    "live tiny.en",
    "live tiny.en + gate, 3 beams",
    "live base + gate",
    "live base + gate, 3 beams",
    "live base",
    "baseline tiny.en",
    "baseline base",
)
STEP_SECONDS = {row: 2.0 if "step 2" in row else 1.0 for row in ROWS}
INSIDE = 1.0  # s from a non-speech block's ends beyond which a committed word is invented
BEAM_ROWS = tuple(row for row in ROWS if "3 beams" in row)  # not in the default run
BEAMS = {row: 3 if "3 beams" in row else 5 if row.startswith("baseline") else 1 for row in ROWS}
QUICK, QUICK_SECONDS = ("live tiny.en + gate", "baseline tiny.en"), 30


# ------------------------------------------------------------------ the baseline


class Baseline:
    """whisper_streaming's OnlineASRProcessor over plain faster-whisper, as published:
    LocalAgreement-2, the buffer trimmed at the second-last segment's end once over 15 s."""

    def __init__(self, model):
        from whisper_at.live import LocalAgreement

        self.model, self.agreement = model, LocalAgreement()
        self.audio, self.offset, self.committed, self.buffer_max = (
            np.zeros(0, np.float32),
            0.0,
            [],
            0,
        )

    def _words(self):
        from whisper_at.live import Word

        prompt = "".join(w.text for w in self.committed if w.end <= self.offset)[-200:]
        segments, _ = self.model.transcribe(self.audio, language="en", initial_prompt=prompt,
                                            beam_size=5, word_timestamps=True,
                                            condition_on_previous_text=True)  # fmt: skip
        segments = list(segments)
        words = [Word(round(w.start + self.offset, 3), round(w.end + self.offset, 3), w.word)
                 for s in segments if s.no_speech_prob <= 0.9 for w in s.words]  # fmt: skip
        return words, [s.end + self.offset for s in segments]

    def feed(self, chunk):
        self.audio = np.concatenate([self.audio, chunk])
        self.buffer_max = max(self.buffer_max, len(self.audio))
        words, ends = self._words()
        new = self.agreement.update(words)
        self.committed += new
        if len(self.audio) > 15 * RATE and len(ends) > 1:
            cut = ends[-2]
            if cut <= self.agreement.committed_end:
                self.audio = self.audio[int((cut - self.offset) * RATE) :]
                self.offset = cut
        return new

    def finish(self):
        words, _ = self._words()
        new = self.agreement.commit_pending(words)
        self.committed += new
        return new


# ------------------------------------------------------------------ one row (a child process)


def _models(row: str):
    from whisper_at.faster import WhisperModel

    cache = common.cache_dir()
    name = "tiny.en" if "tiny" in row else "base"
    model_dir = str(testkit.fw_dir(cache, name))
    if row.startswith("baseline"):
        import faster_whisper

        return faster_whisper.WhisperModel(model_dir, compute_type="int8", cpu_threads=2), None
    backbone = "tiny" if name == "tiny.en" else "base"
    with_head = name == "tiny.en" or "gate" in row  # "live base": base without a head
    head = str(testkit.speech_head(cache, common.checkpoint(backbone))) if with_head else False
    return WhisperModel(model_dir, compute_type="int8", cpu_threads=2, at_head=head), head


def _offline_options(row: str) -> dict:
    """The options of a row's offline transcript: its own decoding, the whole file at once."""
    options = dict(language="en", beam_size=BEAMS[row], temperature=0.0)
    if "gate" in row:
        options.update(at_speech_gate=0.5)
    return options


def _after_silence(audio: np.ndarray, shift: float) -> np.ndarray:
    """``audio`` after ``shift`` s of silence (where the passes' and windows' starts fall)."""
    return np.concatenate([np.zeros(round(shift * RATE), np.float32), audio])


def _percentile(values, q):
    return float(np.percentile(values, q)) if values else None


def run_row(row: str, seconds: float = 0, name: str = "live", shift: float = 0) -> dict:
    """One row; ``seconds``: only the recording's first seconds (the speech blocks that end
    before them are the reference); ``name``: the recording (live_audio.NAMES); ``shift``: s
    of silence before it."""
    from whisper_at.live import LiveTranscriber, Segment, Sound
    from whisper_at.research.noise import word_error_rate

    path, parts = recording(name)
    audio = testkit.read_wav(path)
    if seconds:
        audio = audio[: int(seconds * RATE)]
        parts = [(a, min(b, seconds), kind, text) for a, b, kind, text in parts
                 if a < seconds and (kind != "speech" or b <= seconds)]  # fmt: skip
    if shift:
        audio = _after_silence(audio, shift)
        parts = [(0.0, shift, "silence", "")] + [(a + shift, b + shift, kind, text)
                                                 for a, b, kind, text in parts]  # fmt: skip
    model, head = _models(row)
    gate = 0.5 if "gate" in row else None
    live = Baseline(model) if row.startswith("baseline") else LiveTranscriber(
        model, STEP_SECONDS[row], language="en", at_speech_gate=gate, beam_size=BEAMS[row],
        **(dict(commit_pause=None, agreement_history=1) if "only" in row else {}))  # fmt: skip
    compute, committed, sounds, passes, buffer_max = 0.0, [], [], [], 0
    step, baseline = int(STEP_SECONDS[row] * RATE), row.startswith("baseline")
    for at in range(0, len(audio), step):
        begun = time.perf_counter()
        out = live.feed(audio[at : at + step])
        if at + step >= len(audio):
            out = out + live.finish()
        spent = time.perf_counter() - begun
        compute += spent
        passes.append(spent)
        fed = min(at + step, len(audio)) / RATE
        buffer_max = max(buffer_max, live.buffer_max if baseline else len(live.audio))
        if baseline:
            committed += [(fed, spent, w) for w in out]
            continue
        for e in out:
            if isinstance(e, Segment):
                committed += [(fed, spent, w) for w in e.words]
            elif isinstance(e, Sound) and e.end is None and e.caption:
                sounds.append((fed + spent, e))
    audio_latency = [fed - w.end for fed, _, w in committed]
    latency = [fed + spent - w.end for fed, spent, w in committed]
    text = " ".join(w.text.strip() for _, _, w in committed)
    reference = " ".join(p[3] for p in parts if p[2] == "speech")
    offline, _ = model.transcribe(audio, **_offline_options(row))
    offline = " ".join(s.text.strip() for s in offline)
    invented = [w.text for _, _, w in committed for a, b, kind, _ in parts if kind != "speech"
                and a + INSIDE <= (w.start + w.end) / 2 < b - INSIDE]  # fmt: skip
    onsets = {}
    for a, b, kind, _ in parts:
        if kind in ("music", "white noise", "tone", "pink noise") and f"{kind}@{a}" not in onsets:
            hits = [(t, e) for t, e in sounds if a - 1.0 <= e.start < b]
            onsets[f"{kind}@{a:.0f}s"] = (
                None if not hits else [round(hits[0][0] - a, 2), round(hits[0][1].start - a, 2),
                                       hits[0][1].caption])  # fmt: skip
    duration = len(audio) / RATE
    return {
        "row": row, "duration": duration, "words": len(committed),
        "audio_latency_p50": _percentile(audio_latency, 50),
        "audio_latency_p95": _percentile(audio_latency, 95),
        "latency_p50": _percentile(latency, 50), "latency_p95": _percentile(latency, 95),
        "pass_p50": _percentile(passes, 50), "pass_p95": _percentile(passes, 95),
        "wer_vs_offline": word_error_rate([offline], [text]),
        "wer_vs_reference": word_error_rate([reference], [text]),
        "offline_wer_vs_reference": word_error_rate([reference], [offline]),
        "slowest": sorted((round(fed - w.end, 2), w.text.strip(), w.end) for fed, _, w in
                          committed)[-12:],
        "invented": invented, "onsets": onsets, "rtf": compute / duration,
        "peak_rss_mb": common.peak_rss_mb(), "buffer_max_s": buffer_max / RATE,
    }  # fmt: skip


def run_long(minutes: float) -> dict:
    """Memory over ``minutes`` of stream: the recording over and over through the first row,
    and the command's captions (growing .sdh.vtt and .sdh.srt, JSON-lines log) in a temporary
    directory."""
    import tempfile

    from whisper_at.live import LiveCaptions, LiveTranscriber

    path, _ = recording()
    audio = testkit.read_wav(path)
    model, _ = _models(ROWS[0])
    live = LiveTranscriber(model, STEP_SECONDS[ROWS[0]], language="en", at_speech_gate=0.5)
    out = tempfile.mkdtemp(prefix="bench-live-")
    captions = LiveCaptions(f"{out}/live.sdh.vtt", f"{out}/live.sdh.srt", f"{out}/live.jsonl",
                            show=lambda line: None)  # fmt: skip
    samples, words, begun = [], 0, time.perf_counter()
    total = int(minutes * 60 * RATE) // RATE * RATE
    for at in range(0, total, RATE):
        start = at % len(audio)
        chunk = audio[start : start + RATE]
        if len(chunk) < RATE:  # the recording starts over
            chunk = np.concatenate([chunk, audio[: RATE - len(chunk)]])
        events = live.feed(chunk)
        words += sum(len(e.words) for e in events if hasattr(e, "words") and e.final)
        captions.add(events)
        captions.settle(*live.settled)
        if (at + RATE) % (60 * RATE) == 0:
            samples.append([(at + RATE) // (60 * RATE), round(common.rss_mb(), 1),
                            round(len(live.audio) / RATE, 1), live.passes, words])  # fmt: skip
            print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
    captions.add(live.finish())
    captions.close()
    return {"samples": samples, "compute_s": time.perf_counter() - begun,
            "peak_rss_mb": common.peak_rss_mb()}  # fmt: skip


def report_long(minutes: float):
    result = run_long(minutes)
    samples = result["samples"]
    print(common.machine())
    print(f"{minutes:g} minutes of stream (the {recording()[0].name} recording over and over), "
          f"{ROWS[0]}, step {STEP_SECONDS[ROWS[0]]:g} s; compute {result['compute_s']:.0f} s\n")
    print(common.table(["minute", "RSS (MiB)", "buffer (s)", "passes", "words committed"],
                       samples))  # fmt: skip
    settled = [s[1] for s in samples[2:]] or [samples[-1][1]]
    print(f"\nRSS after minute 3: {min(settled):.1f} - {max(settled):.1f} MiB "
          f"(growth from minute 3 to the end {samples[-1][1] - settled[0]:+.1f} MiB); "
          f"peak {result['peak_rss_mb']:.1f} MiB")


def report_lookahead():
    """One pass of base (+ gate) over the recording from the onset of the sentence after the
    tone (117.7 s), ending 1.3 ... 21.3 s after it: how an utterance's first words are read
    with more or less of what follows in the window (a live pass hears a few seconds)."""
    from whisper_at.live.backends import PassOptions, run_pass

    path, parts = recording()
    audio = testkit.read_wav(path)
    onset = next(parts[i + 1][0] for i, part in enumerate(parts) if part[2] == "tone")
    model, _ = _models("live base + gate")
    begin = int((onset - 0.1) * RATE)
    for after in (1.3, 2.3, 3.3, 5.3, 8.3, 13.3, 21.3):
        result = run_pass(model, audio[begin : int((onset + after) * RATE)], "",
                          PassOptions(at_speech_gate=0.5, language="en"))  # fmt: skip
        text = " ".join(w.text.strip() for w in result.words)
        print(f"{after:5.1f} s after the onset: {text[:80]}")


SHIFTS = (0.0, 0.3, 0.7, 1.1, 1.6, 2.3)  # s of silence before the recording (--shifts)


def report_shifts():
    """The offline WER (the rows' options: temperature 0, greedy, gate 0.5; and with the
    temperature fallback) of each recording with SHIFTS s of silence before it: how much the
    offline transcript a live row is compared with moves when its windows start elsewhere."""
    from whisper_at.research.noise import word_error_rate

    print(common.machine())
    found = []
    for row in ("live tiny.en + gate", "live base + gate"):
        model, _ = _models(row)
        for name in NAMES:
            path, parts = recording(name)
            audio = testkit.read_wav(path)
            reference = " ".join(p[3] for p in parts if p[2] == "speech")
            for label, temperature in (("0", 0.0), ("fallback", (0.0, 0.2, 0.4, 0.6, 0.8, 1.0))):
                wers = []
                for shift in SHIFTS:
                    options = dict(_offline_options(row), temperature=temperature)
                    segments, _ = model.transcribe(_after_silence(audio, shift), **options)
                    text = " ".join(s.text.strip() for s in segments)
                    wers.append(round(word_error_rate([reference], [text]), 3))
                found.append([row.split()[1], name, label, " ".join(map(str, wers)),
                              float(np.median(wers))])  # fmt: skip
                print(json.dumps(found[-1]), file=sys.stderr, flush=True)
    print(f"\noffline WER vs the reference, the recording after {', '.join(map(str, SHIFTS))} s "
          "of silence\n")
    print(common.table(["model", "recording", "temperature", "WER per shift", "median"], found))


def report_live_shifts(rows, name: str, seconds: float = 0):
    """Each row live and offline after each of SHIFTS s of silence (a child per run; ``seconds``
    as for run_row): WERs vs the reference, their medians and the ratio of the medians, which
    one draw of the offline windows does not sway."""
    found = []
    for row in rows:
        runs = []
        for shift in SHIFTS:
            runs.append(_child(row, seconds, name, shift))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
        live = [r["wer_vs_reference"] for r in runs]
        offline = [r["offline_wer_vs_reference"] for r in runs]
        found.append([row, " ".join(f"{w:.3f}" for w in live), f"{np.median(live):.3f}",
                      " ".join(f"{w:.3f}" for w in offline), f"{np.median(offline):.3f}",
                      f"{np.median(live) / np.median(offline):.2f}",
                      f"{max(r['audio_latency_p95'] for r in runs):.2f}",
                      sum(len(r["invented"]) for r in runs)])  # fmt: skip
    print(common.machine())
    print(f"recording {name} after {', '.join(map(str, SHIFTS))} s of silence; "
          "WER vs the reference\n")
    print(common.table(["row", "live WER per shift", "median", "offline WER per shift", "median",
                        "live / offline (medians)", "worst audio latency p95 (s)",
                        "words in non-speech (all runs)"], found))  # fmt: skip


def _child(row: str, seconds: float, name: str, shift: float = 0) -> dict:
    """run_row in a process of its own (its peak RSS); raises with the child's error."""
    cmd = [sys.executable, __file__, "--child", row, "--seconds", str(seconds),
           "--recording", name, "--shift", str(shift)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{row}: failed\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=None,
                        help=f"row names, separated by ; (of: {' | '.join(ROWS)}; default: all "
                             f"but the 3-beam rows, with --quick: {' and '.join(QUICK)})")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--minutes", type=float, default=None,
                        help="measure memory over this many minutes of stream instead")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: the first {QUICK_SECONDS} s")
    parser.add_argument("--seconds", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--recording", default="live", choices=NAMES,
                        help="live: the 3-minute recording; held-out: 5 minutes of sentences "
                             "nothing else has heard, with LibriVox speech (live_audio.py)")
    parser.add_argument("--shifts", action="store_true",
                        help="the offline WER of each recording after 0-2.3 s of silence")
    parser.add_argument("--live-shifts", action="store_true",
                        help="--rows live and offline after 0-2.3 s of silence: medians, ratio")
    parser.add_argument("--shift", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--lookahead", action="store_true",
                        help="base: one utterance's first words, read with 1.3-21.3 s after them")
    args = parser.parse_args()
    if args.shifts:
        report_shifts()
        return
    if args.lookahead:
        report_lookahead()
        return
    if args.minutes:
        report_long(args.minutes)
        return
    if args.child:
        print(json.dumps(run_row(args.child, args.seconds, args.recording, args.shift)))
        return
    default = QUICK if args.quick else [r for r in ROWS if r not in BEAM_ROWS]
    rows = args.rows.split(";") if args.rows else list(default)
    seconds = QUICK_SECONDS if args.quick else 0
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {unknown}: expected some of {list(ROWS)}")
    recording(args.recording)
    if args.live_shifts:
        report_live_shifts(rows, args.recording, seconds)
        return
    results = []
    for row in rows:
        try:
            results.append(_child(row, seconds, args.recording))
        except RuntimeError as error:
            print(error, file=sys.stderr)
            continue
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(common.machine())
    if not results:
        sys.exit("every row failed")
    print(f"recording {args.recording}: {results[0]['duration']:.1f} s; CPU, 2 threads, int8\n")
    print(common.table(
        ["row", "audio latency p50 / p95 (s)", "+ its pass p50 / p95 (s)", "pass p50 / p95 (s)",
         "WER vs offline", "WER vs reference", "offline WER vs reference",
         "words in non-speech", "compute RTF", "peak RSS (MiB)", "longest buffer (s)"],
        [[r["row"], f"{r['audio_latency_p50']:.2f} / {r['audio_latency_p95']:.2f}",
          f"{r['latency_p50']:.2f} / {r['latency_p95']:.2f}",
          f"{r['pass_p50']:.2f} / {r['pass_p95']:.2f}", r["wer_vs_offline"],
          r["wer_vs_reference"], r["offline_wer_vs_reference"], len(r["invented"]), r["rtf"],
          r["peak_rss_mb"], r["buffer_max_s"]] for r in results]))  # fmt: skip
    print("\nslowest commits: [audio latency s, word, word end s]")
    for r in results:
        print(f"- {r['row']}: {r['slowest']}")
    print("\nsound-event onsets: [report latency s, start error s, caption] per non-speech block")
    for r in results:
        if any(v is not None for v in r["onsets"].values()):
            print(f"- {r['row']}: {r['onsets']}")
    for r in results:
        if r["invented"]:
            print(f"- {r['row']} words in non-speech: {' '.join(r['invented'][:30])}")
    first = results[0]
    print(f"\nSUMMARY bench_live: {first['row']}: audio latency p50 / p95 "
          f"{first['audio_latency_p50']:.2f} / {first['audio_latency_p95']:.2f} s, WER vs offline "
          f"{first['wer_vs_offline']:.3f}, {len(first['invented'])} words in non-speech, "
          f"compute RTF {first['rtf']:.3f}")
    if len(results) < len(rows):
        sys.exit(f"{len(rows) - len(results)} row(s) failed (above)")


if __name__ == "__main__":
    main()
