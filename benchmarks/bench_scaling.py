"""Scaling of tagging with audio length: 1, 5 and 30 minutes.

Each run is a fresh interpreter: load the model, decode the WAV (whisper_at's loader: ffmpeg),
then ``model.tag`` on the waveform. Reports tagging wall time, peak RSS, and RSS growth over the
loaded model split into decoding and tagging. Targets: 30-min time within 5% of 30x the 1-min
time; memory flat apart from the decoded audio (float32, 64 KiB per second).
Optionally (--transcribe) also transcribe-with-tags at 1 and 5 min.
"""

import argparse
from pathlib import Path

import common

TARGET = 0.05
FLAT_MB = 64  # "flat": growth beyond the decoded audio rises by at most this much


def child(args) -> None:
    import torch

    from whisper_at.audio_io import load_audio

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant == "patched":
        import patches

        patches.apply()
    model = common.load_at(args.model)
    after_load = common.peak_rss_mb()
    with common.phase_peak() as decode:
        decode_s, audio = common.timed(lambda: load_audio(args.audio))
    if args.mode == "tag":
        model.tag(audio[: 5 * common.SAMPLE_RATE], batch_size=args.batch_size)  # warm-up

        def run():
            return model.tag(audio, batch_size=args.batch_size)
    else:

        def run():
            torch.manual_seed(0)
            return model.transcribe(audio, fp16=False)

    with common.phase_peak() as phase:
        wall, _ = common.timed(run)
    common.emit(
        {
            "wall": wall,
            "decode_s": decode_s,
            "after_load": after_load,
            "peak": common.peak_rss_mb(),
            "decode_growth": decode["growth"],
            "run_growth": phase["peak"] - decode["start"],
            "audio_mb": audio.nbytes / 2**20,
        }
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, repeats=3, models=("tiny", "base"))
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 30])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument(
        "--transcribe",
        action="store_true",
        help="also transcribe (with tags) inputs of at most --transcribe_max min",
    )
    parser.add_argument("--transcribe_max", type=float, default=5)
    parser.add_argument(
        "--patched",
        action="store_true",
        help="also run tagging with the memory fixes of patches.py / PATCHES.md",
    )
    parser.add_argument("--variant", default="current", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="tag", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--audio", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    common.apply_common_args(args)
    if args.quick:
        args.minutes = [5 / 60, 10 / 60]
        args.transcribe_max = 0

    paths = {m: common.make_audio(round(m * 60, 3)) for m in args.minutes}
    print(f"# bench_scaling: {args.minutes} min; batch_size={args.batch_size}; {common.machine()}")
    runs = {}
    variants = ["current", "patched"] if args.patched else ["current"]
    jobs = [("tag", v, m) for v in variants for m in args.minutes]
    if args.transcribe:
        jobs += [("transcribe", "current", m) for m in args.minutes if m <= args.transcribe_max]
    for name in args.models:
        for r in range(args.repeats):
            for mode, variant, minutes in jobs if r % 2 == 0 else jobs[::-1]:
                cmd = [
                    "--child",
                    "--mode",
                    mode,
                    "--variant",
                    variant,
                    "--model",
                    name,
                    "--audio",
                    str(paths[minutes]),
                    "--batch_size",
                    str(args.batch_size),
                    "--threads",
                    str(args.threads),
                ]
                runs.setdefault((name, mode, variant, minutes), []).append(
                    common.run_child(Path(__file__), cmd)
                )

    def med(key, field):
        return common.median([run[field] for run in runs[key]])

    rows = []
    for key in runs:
        name, mode, variant, minutes = key
        wall = med(key, "wall")
        rows.append(
            [
                name,
                mode,
                variant,
                f"{minutes:.3g}",
                wall,
                minutes * 60 / wall,
                wall / minutes,
                med(key, "after_load"),
                med(key, "peak"),
                med(key, "audio_mb"),
                med(key, "decode_growth"),
                med(key, "run_growth"),
                med(key, "run_growth") - med(key, "audio_mb"),
            ]
        )
    print(f"\n## fresh process per run (medians of {args.repeats})\n")
    print(
        common.table(
            [
                "model",
                "mode",
                "variant",
                "minutes",
                "wall s",
                "x real time",
                "s per minute",
                "RSS after load MiB",
                "peak RSS MiB",
                "audio f32 MiB",
                "decode growth MiB",
                "growth over load MiB",
                "growth - audio MiB",
            ],
            rows,
        )
    )

    summary = []
    short, long = min(args.minutes), max(args.minutes)
    for name in args.models:
        for variant in variants:
            t_short, t_long = (med((name, "tag", variant, m), "wall") for m in (short, long))
            ratio = t_long / (t_short * long / short)
            extra_short, extra_long = (
                med((name, "tag", variant, m), "run_growth")
                - med((name, "tag", variant, m), "audio_mb")
                for m in (short, long)
            )
            flat = extra_long - extra_short <= FLAT_MB
            summary.append(
                f"{name}{' patched' if variant == 'patched' else ''} {long:.3g}-min / "
                f"({long / short:.3g} x {short:.3g}-min) = x{ratio:.3f} "
                f"({'met' if abs(ratio - 1) <= TARGET else 'MISSED'}), "
                f"growth beyond audio {extra_short:.0f} -> {extra_long:.0f} MiB "
                f"({'flat' if flat else 'NOT flat'})"
            )
    print(f"\nSUMMARY bench_scaling: {'; '.join(summary)} (target time within {TARGET:.0%})")


if __name__ == "__main__":
    main()
