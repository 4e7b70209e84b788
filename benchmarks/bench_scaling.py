"""Scaling of tagging with audio length: 1, 5 and 30 minutes.

Memory: each run is a fresh interpreter: load the model, decode the WAV (whisper_at's loader:
ffmpeg), then ``model.tag`` on the waveform; peak RSS, and RSS growth over the loaded model split
into decoding and tagging. Time: one interpreter per model tags every length in alternating
order (after one warm-up round), medians: a fresh process runs its first minutes of encoder
calls ~10% slower than a warmed one (glibc's malloc raises its mmap threshold only once a large
block has been freed), which would make a short input look dearer per minute than a long one.
Targets: 30-min time within 5% of 30x the 1-min time; memory flat apart from the decoded audio
(float32, 64 KiB per second): the log-mel is made window by window (whisper_at.mel), so tagging
holds one window at a time whatever the length.
Optionally (--transcribe) also transcribe-with-tags at 1 and 5 min.
"""

import argparse
import os
from pathlib import Path

import common

TARGET = 0.05
# "flat": growth beyond the decoded audio rises by at most this much from the shortest input to
# the longest; identical runs differ by up to ~25 MiB here (allocator), whereas holding the whole
# log-mel of 30 min would add ~57 MiB and the layer features of all its windows ~220 MiB (tiny)
FLAT_MB = 32


def child(args) -> None:
    import torch

    from whisper_at.audio_io import load_audio

    if args.threads:
        torch.set_num_threads(args.threads)
    model = common.load_at(args.model)
    if args.mode == "timing":
        audios = {path: load_audio(path) for path in args.audio.split(os.pathsep)}
        runs = {path: (lambda a=audio: model.tag(a, batch_size=args.batch_size))
                for path, audio in audios.items()}  # fmt: skip
        times = common.alternate(runs, 1 + args.repeats)
        return common.emit({path: common.median(t[1:]) for path, t in times.items()})
    after_load = common.peak_rss_mb()
    with common.phase_peak() as decode:
        decode_s, audio = common.timed(lambda: load_audio(args.audio))
    if args.mode == "tag":
        model.tag(audio[: 60 * common.SAMPLE_RATE], batch_size=args.batch_size)  # warm-up

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
            "tag_start": phase["start"] - decode["start"],
            "tag_growth": phase["growth"],
            "audio_mb": audio.nbytes / 2**20,
        }
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, repeats=3, models=("tiny", "base"))
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 30])
    parser.add_argument(
        "--batch_size", type=int, default=None, help="tag's batch_size (default: its own)"
    )
    parser.add_argument(
        "--transcribe",
        action="store_true",
        help="also transcribe (with tags) inputs of at most --transcribe_max min",
    )
    parser.add_argument("--transcribe_max", type=float, default=5)
    parser.add_argument("--mode", default="tag", help=argparse.SUPPRESS)
    common.add_child_args(parser)
    args = common.parse_args(parser, child)
    if args is None:  # a --child process: done
        return
    if args.quick:
        args.minutes = [5 / 60, 10 / 60]
        args.transcribe_max = 0

    paths = {m: common.make_audio(round(m * 60, 3)) for m in args.minutes}
    print(
        f"# bench_scaling: {args.minutes} min; batch_size={args.batch_size or 'default'}; "
        f"{common.machine()}"
    )
    common_args = ["--threads", str(args.threads)]
    if args.batch_size:
        common_args += ["--batch_size", str(args.batch_size)]
    timing = {}
    for name in args.models:
        audio = os.pathsep.join(str(paths[m]) for m in args.minutes)
        cmd = ["--child", "--mode", "timing", "--model", name, "--audio", audio, *common_args]
        cmd += ["--repeats", str(args.repeats)]
        walls = common.run_child(Path(__file__), cmd)
        timing.update({(name, m): walls[str(paths[m])] for m in args.minutes})
    runs = {}
    jobs = [("tag", m) for m in args.minutes]
    if args.transcribe:
        jobs += [("transcribe", m) for m in args.minutes if m <= args.transcribe_max]
    for name in args.models:
        for r in range(args.repeats):
            for mode, minutes in jobs if r % 2 == 0 else jobs[::-1]:
                cmd = ["--child", "--mode", mode, "--model", name, "--audio", str(paths[minutes])]
                runs.setdefault((name, mode, minutes), []).append(
                    common.run_child(Path(__file__), cmd + common_args)
                )

    rows = [
        [name, f"{m:.3g}", wall, m * 60 / wall, wall / m] for (name, m), wall in timing.items()
    ]
    print(f"\n## tagging time, one warmed process per model (medians of {args.repeats})\n")
    print(common.table(["model", "minutes", "wall s", "x real time", "s per minute"], rows))

    def med(key, field):
        return common.median([run[field] for run in runs[key]])

    rows = []
    for key in runs:
        name, mode, minutes = key
        wall = med(key, "wall")
        rows.append(
            [
                name,
                mode,
                f"{minutes:.3g}",
                wall,
                minutes * 60 / wall,
                wall / minutes,
                med(key, "after_load"),
                med(key, "peak"),
                med(key, "audio_mb"),
                med(key, "decode_growth"),
                med(key, "tag_start"),
                med(key, "tag_growth"),
                med(key, "run_growth"),
                med(key, "run_growth") - med(key, "audio_mb"),
            ]
        )
    print(f"\n## memory: a fresh process per run (medians of {args.repeats})\n")
    print(
        common.table(
            [
                "model",
                "mode",
                "minutes",
                "wall s",
                "x real time",
                "s per minute",
                "RSS after load MiB",
                "peak RSS MiB",
                "audio f32 MiB",
                "decode growth MiB",
                "held after decode MiB",
                "tag-phase growth MiB",
                "growth over load MiB",
                "growth - audio MiB",
            ],
            rows,
        )
    )

    summary = []
    short, long = min(args.minutes), max(args.minutes)
    for name in args.models:
        t_short, t_long = timing[name, short], timing[name, long]
        ratio = t_long / (t_short * long / short)
        extra = {
            m: med((name, "tag", m), "run_growth") - med((name, "tag", m), "audio_mb")
            for m in args.minutes
        }
        flat = extra[long] - extra[short] <= FLAT_MB
        growth = " -> ".join(f"{extra[m]:.0f}" for m in sorted(args.minutes))
        summary.append(
            f"{name} {long:.3g}-min / ({long / short:.3g} x {short:.3g}-min) = x{ratio:.3f} "
            f"({'met' if abs(ratio - 1) <= TARGET else 'MISSED'}), "
            f"growth beyond audio {growth} MiB ({'flat' if flat else 'NOT flat'})"
        )
    print(f"\nSUMMARY bench_scaling: {'; '.join(summary)} (target time within {TARGET:.0%})")


if __name__ == "__main__":
    main()
