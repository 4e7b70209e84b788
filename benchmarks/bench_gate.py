"""Speech gate: words invented over non-speech, speech words lost, and time, with and without it.

Audio: tests/testkit.gate_audio (~93 s): espeak-ng speech, 20 s of a 440 Hz tone, 29 s of white
noise, speech again. Head: the TL-TR head for tiny.en that the test suite trains itself
(testkit.speech_head: `whisper-at features` + `whisper-at train` on espeak-ng speech vs sox tones,
noise and plucked-string music; none of this audio is in its training set). So: tiny.en only.

Rows: openai-whisper's decoding through whisper_at without the gate and with ``at_speech_gate``
P; plain faster-whisper (CTranslate2, the same tiny.en weights, default compute type) without
and with ``vad_filter`` (Silero VAD); and the faster-whisper backend (``whisper_at.faster``, one
pass) without and with the AT gate: compare within a backend.
"""

import argparse
import importlib.util

import common
import testkit


def _norm():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def matched(reference, hypothesis) -> int:
    """Longest common subsequence of two word lists (words found in order)."""
    row = [0] * (len(hypothesis) + 1)
    for ref in reference:
        previous = 0
        for j, hyp in enumerate(hypothesis, 1):
            previous, row[j] = row[j], previous + 1 if ref == hyp else max(row[j], row[j - 1])
    return row[-1]


def score(segments, parts) -> dict:
    """``invented``: transcript words that match no spoken word (hallucinations, misheard
    words); ``lost``: spoken words missing from the transcript (both from one in-order word
    alignment of the whole transcript with the spoken text); ``in_non_speech``: words of the
    segments whose middle lies in the tone or noise."""
    norm = _norm()
    heard, in_non_speech = [], 0
    for start, end, text in segments:
        middle = (start + end) / 2
        words = norm(text).split()
        heard += words
        if any(a <= middle < b and k != "speech" for a, b, k, _ in parts):
            in_non_speech += len(words)
    spoken = norm(" ".join(t for _, _, k, t in parts if k == "speech")).split()
    common_words = matched(spoken, heard)
    return {"invented": len(heard) - common_words, "lost": len(spoken) - common_words,
            "spoken": len(spoken), "in_non_speech": in_non_speech}


def whisper_rows(path, thresholds, repeats):
    import whisper_at

    head = testkit.speech_head(common.cache_dir(), common.checkpoint("tiny"))
    model = whisper_at.load_model(str(common.checkpoint("tiny")), device="cpu",
                                  at_head=str(head)).eval()
    audio = common.load_wav(path)
    variants = {"no gate": {}}
    variants.update({f"AT gate {p:g}": {"at_speech_gate": p} for p in thresholds})
    results, decoders = {}, {}

    def make(name, options):
        def go():
            calls = []
            handle = model.decoder.register_forward_hook(lambda *_: calls.append(1))
            try:
                result, _ = common.count_encodes(model, whisper_at.transcribe, audio,
                                                 {"fp16": False, **options})
            finally:
                handle.remove()
            results[name], decoders[name] = result, len(calls)

        return go

    times = common.alternate({n: make(n, o) for n, o in variants.items()}, repeats)
    rows = {}
    for name in variants:
        segments = [(s["start"], s["end"], s["text"]) for s in results[name]["segments"]]
        gate = results[name].get("at_gate", {})
        skipped = sum(b - a for a, b in gate.get("skipped", []))
        rows[name] = {"wall": common.median(times[name]), "decoder": decoders[name],
                      "skipped": skipped, **score(segments, testkit.gate_audio(path)[1])}
    return rows


def faster_rows(path, repeats):
    """Plain faster-whisper without and with vad_filter (a reference on another decoder)."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(testkit.ct2_dir(common.cache_dir(), "tiny.en")), device="cpu")
    audio = common.load_wav(path)
    results = {}

    def make(name, vad):
        def go():
            segments, _ = model.transcribe(audio, language="en", vad_filter=vad)
            results[name] = [(s.start, s.end, s.text) for s in segments]

        return go

    variants = {"faster-whisper": make("faster-whisper", False),
                "faster-whisper vad_filter": make("faster-whisper vad_filter", True)}
    times = common.alternate(variants, repeats)
    return {name: {"wall": common.median(times[name]), "decoder": "-", "skipped": "-",
                   **score(results[name], testkit.gate_audio(path)[1])} for name in variants}


def at_faster_rows(path, thresholds, repeats):
    """The faster-whisper backend (whisper_at.faster, one pass, the same compute type as the
    plain rows) with tags, without and with the AT gate."""
    from whisper_at.faster import WhisperModel

    head = testkit.speech_head(common.cache_dir(), common.checkpoint("tiny"))
    model = WhisperModel(str(testkit.ct2_dir(common.cache_dir(), "tiny.en")), device="cpu",
                         at_head=str(head))
    audio = common.load_wav(path)
    variants = {"whisper_at.faster": {}}
    variants.update({f"whisper_at.faster AT gate {p:g}": {"at_speech_gate": p}
                     for p in thresholds})
    results = {}

    def make(name, options):
        def go():
            segments, info = model.transcribe(audio, language="en", **options)
            results[name] = ([(s.start, s.end, s.text) for s in segments], info)

        return go

    times = common.alternate({n: make(n, o) for n, o in variants.items()}, repeats)
    rows = {}
    for name in variants:
        segments, info = results[name]
        gate = info.at_gate or {}
        rows[name] = {"wall": common.median(times[name]), "decoder": "-",
                      "skipped": sum(b - a for a, b in gate.get("skipped", [])),
                      **score(segments, testkit.gate_audio(path)[1])}
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, repeats=3, models=("tiny",))
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5])
    parser.add_argument("--no_faster", action="store_true",
                        help="skip the faster-whisper rows (--quick skips them too)")
    args = common.parse_args(parser)
    if args.models != ["tiny"]:
        parser.error("the speech head is trained for tiny.en: --models tiny")
    print(f"# bench_gate; {common.machine()}")
    directory = common.cache_dir() / "bench-audio"
    directory.mkdir(exist_ok=True)
    path, parts = testkit.gate_audio(directory / "gate.wav")
    print("# audio: " + ", ".join(f"{k} {a:.1f}-{b:.1f} s" for a, b, k, _ in parts))

    rows = whisper_rows(path, args.thresholds, args.repeats)
    faster = not (args.no_faster or args.quick) and importlib.util.find_spec("faster_whisper")
    if faster:
        rows.update(faster_rows(path, args.repeats))
        rows.update(at_faster_rows(path, args.thresholds, args.repeats))
    table = [["tiny", name, r["in_non_speech"], r["invented"], f"{r['lost']}/{r['spoken']}",
              r["decoder"],
              r["skipped"] if isinstance(r["skipped"], str) else f"{r['skipped']:.1f}",
              r["wall"]] for name, r in rows.items()]
    print("\n## words over non-speech, invented, speech words lost, time (medians)\n")
    print(common.table(["model", "variant", "words in non-speech", "invented words",
                        "speech words lost", "decoder calls", "skipped s", "wall s"], table))

    def change(name, base):
        new = rows[name]
        return (f"{name}: wall x{new['wall'] / base['wall']:.3f}, words in non-speech "
                f"{base['in_non_speech']} -> {new['in_non_speech']}, invented {base['invented']}"
                f" -> {new['invented']}, speech words lost {base['lost']} -> {new['lost']}")

    summary = [change(f"AT gate {p:g}", rows["no gate"]) for p in args.thresholds]
    if faster:
        summary.append(change("faster-whisper vad_filter", rows["faster-whisper"]))
        summary += [change(f"whisper_at.faster AT gate {p:g}", rows["whisper_at.faster"])
                    for p in args.thresholds]
    print(f"\nSUMMARY bench_gate: tiny {'; '.join(summary)}")


if __name__ == "__main__":
    main()
