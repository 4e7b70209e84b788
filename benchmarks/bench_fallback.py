"""Temperature fallback: whisper_at reuses a window's encoding across temperatures.

openai-whisper re-encodes the 30 s window for every temperature it tries; whisper_at encodes it
once. Two inputs that fall back: white noise with language="en" (tiny.en/base hallucinate a
repetitive line at temperature 0), and the speech/music/noise mix with logprob_threshold=0 (every
temperature fails, so all six are decoded). Same seed before each run, so sampled text must be
identical. Target: wall ratio whisper_at / openai-whisper <= 0.95.
"""

import argparse

import common

TARGET = 0.95


def scenarios(args):
    """(name, audio path, transcribe options) of each fallback input."""
    if args.quick:  # smoke test: one short input, two temperatures
        return [
            (
                "speech, logprob_threshold=0",
                common.make_audio(args.seconds),
                {"fp16": False, "logprob_threshold": 0.0, "temperature": (0.0, 1.0)},
            )
        ]
    return [
        ("noise, language=en", common.make_noise(args.seconds), {"fp16": False, "language": "en"}),
        (
            "speech, logprob_threshold=0",
            common.make_audio(args.seconds),
            {"fp16": False, "logprob_threshold": 0.0},
        ),
    ]


def run_scenario(at, plain, audio, options, repeats: int) -> dict:
    import whisper

    import whisper_at

    counts = {}

    def make(key, model, fn):
        def go():
            result, counts[key] = common.count_encodes(model, fn, audio, options)
            return result

        return go

    variants = {
        "openai-whisper": make("openai-whisper", plain, whisper.transcribe),
        "whisper_at": make("whisper_at", at, whisper_at.transcribe),
    }
    results = {}

    def keep(key):
        def go():
            results.setdefault(key, variants[key]())

        return go

    # the first round warms up (unless there is only one) and gives the results to compare
    times = common.alternate({key: keep(key) for key in variants}, repeats + (repeats > 1))
    if repeats > 1:
        times = {key: value[1:] for key, value in times.items()}
    expected, actual = results["openai-whisper"], dict(results["whisper_at"])
    del actual["audio_tag"], actual["at_time_res"]
    temps = [segment["temperature"] for segment in expected["segments"]]
    return {
        "identical": actual == expected,
        "encodes": (counts["openai-whisper"], counts["whisper_at"]),
        "max_temperature": max(temps, default=0.0),
        "wall": {key: common.median(value) for key, value in times.items()},
        "paired": common.paired_ratio(times["whisper_at"], times["openai-whisper"]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, seconds=30, repeats=3)
    args = common.parse_args(parser)
    print(f"# bench_fallback; {common.machine()}")

    rows, summary = [], []
    for name in args.models:
        at = common.load_at(name)
        plain = common.plain_from_at(at)
        for label, path, options in scenarios(args):
            res = run_scenario(at, plain, common.load_wav(path), options, args.repeats)
            w = res["wall"]
            ratio = w["whisper_at"] / w["openai-whisper"]
            rows.append(
                [
                    name,
                    label,
                    f"{common.wav_seconds(path):.0f}",
                    "{}/{}".format(*res["encodes"]),
                    res["max_temperature"],
                    w["openai-whisper"],
                    w["whisper_at"],
                    ratio,
                    res["paired"],
                    "yes" if res["identical"] else "NO",
                ]
            )
            summary.append(
                f"{name} {label.split(',')[0]} x{ratio:.3f} "
                f"({'met' if ratio <= TARGET else 'MISSED'}, "
                f"text {'identical' if res['identical'] else 'DIFFERS'})"
            )
    print("\n## transcribe with temperature fallback (medians)\n")
    print(
        common.table(
            [
                "model",
                "input",
                "seconds",
                "encodes plain/at",
                "max segment temperature",
                "wall plain s",
                "wall at s",
                "wall ratio",
                "paired ratio",
                "same result",
            ],
            rows,
        )
    )
    print(f"\nSUMMARY bench_fallback: {'; '.join(summary)} (target <= {TARGET})")


if __name__ == "__main__":
    main()
