"""faster-whisper backend: FW + sound-event tags vs FW alone, whisper_at and openai-whisper.

CPU, int8 CTranslate2 models (the test suite's tiny.en and multilingual base), >= 60 s of speech
(the speech/music/noise mix), greedy decoding unless --beam_size. Variants, timed in alternating
order in one process (medians; the first round warms up): FW alone; FW + tags in one pass (the
torch encoder feeds FW's decoder) and exact (FW's encoder for the text + the torch encoder for
the tags); the batched pipeline with and without tags; whisper_at.transcribe; openai-whisper.
CPU seconds (user + system of the process) beside wall time: on a shared machine torch's
threads suffer more from other load than CTranslate2's. Peak RSS: one cold run per fresh
process. The one-pass text is compared with FW's (word error
rate, jiwer); the exact text must be FW's.
Targets: one pass <= 1.10x FW alone; one pass >= 4x faster than whisper_at.transcribe on tiny
(greedy); exact <= 1.35x FW alone.
"""

import argparse
import os
from pathlib import Path

import common

ONE_PASS_TARGET, EXACT_TARGET, SPEEDUP_TARGET = 1.10, 1.35, 4.0
VARIANTS = ["fw", "one_pass", "exact", "batched", "batched_tags", "whisper_at", "openai-whisper"]
QUICK_RSS = ["fw", "one_pass"]


def fw_dir(model: str) -> str:
    return str(common.testkit.fw_dir(common.cache_dir(), common.MODELS[model][0]))


def head_state(model: str) -> dict:
    state = common.random_head_state(*common.MODELS[model][1:])
    return {f"at_model.{k}": v for k, v in state.items()}


def runner(kind: str, model: str, args):
    """A no-argument function transcribing ``audio`` with variant ``kind``; returns text."""
    beam = {"beam_size": args.beam_size}
    if kind in ("whisper_at", "openai-whisper"):
        if kind == "whisper_at":
            import whisper_at

            net, fn = common.load_at(model), whisper_at.transcribe
        else:
            import whisper

            net, fn = common.load_plain(model), whisper.transcribe
        options = {"fp16": False, "beam_size": args.beam_size if args.beam_size > 1 else None}
        return lambda audio: fn(net, audio, **options)["text"]

    import faster_whisper

    import whisper_at.faster as fwat

    directory = fw_dir(model)
    options = dict(device="cpu", compute_type="int8", cpu_threads=args.cpu_threads)
    if kind in ("fw", "batched"):
        net = faster_whisper.WhisperModel(directory, **options)
    else:
        mode = "exact" if kind == "exact" else "one_pass"
        net = fwat.WhisperModel(directory, **options, at_head=head_state(model), at_encoder=mode,
                                at_compute_type=args.at_compute_type)
    if kind == "batched":
        net = faster_whisper.BatchedInferencePipeline(net)
    elif kind == "batched_tags":
        net = fwat.BatchedInferencePipeline(net)
    extra = {"batch_size": args.batch_size} if kind.startswith("batched") else {}

    def run(audio):
        segments, info = net.transcribe(audio, **beam, **extra)
        text = "".join(segment.text for segment in segments)
        if kind in ("one_pass", "exact", "batched_tags"):
            assert info.audio_tag is not None
        return text

    return run


def child(args) -> None:
    """One cold transcription in a fresh process; prints its peak RSS as JSON."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    run = runner(args.child, args.model, args)
    audio = common.load_wav(Path(args.audio))
    loaded = common.peak_rss_mb()
    wall, _ = common.timed(lambda: run(audio))
    common.emit({"peak": common.peak_rss_mb(), "after_load": loaded, "wall": wall})


def measure(model: str, audio_path: Path, args) -> dict:
    import jiwer

    audio = common.load_wav(audio_path)
    runs = {kind: runner(kind, model, args) for kind in VARIANTS}
    texts, cpu = {}, {kind: [] for kind in VARIANTS}

    def keep(kind):
        def go():
            start = sum(os.times()[:2])
            texts.setdefault(kind, runs[kind](audio))
            cpu[kind].append(sum(os.times()[:2]) - start)

        return go

    times = common.alternate({kind: keep(kind) for kind in VARIANTS}, args.repeats + 1)
    times = {kind: value[1:] for kind, value in times.items()}  # the first round warms up
    load = os.getloadavg()[0]
    rss = {}
    child_args = ["--model", model, "--audio", str(audio_path), "--beam_size",
                  str(args.beam_size), "--batch_size", str(args.batch_size), "--cpu_threads",
                  str(args.cpu_threads), "--threads", str(args.threads),
                  "--at_compute_type", args.at_compute_type]  # fmt: skip
    for kind in QUICK_RSS if args.quick else VARIANTS:
        rss[kind] = common.run_child(Path(__file__), ["--child", kind, *child_args])["peak"]
    return {
        "wall": {kind: common.median(value) for kind, value in times.items()},
        "cpu": {kind: common.median(value[1:]) for kind, value in cpu.items()},
        "load": load,
        "paired": {
            kind: common.paired_ratio(times[kind], times["fw"]) for kind in VARIANTS
        },
        "rss": rss,
        "wer_one_pass": jiwer.wer(texts["fw"].strip(), texts["one_pass"].strip()),
        "wer_batched_tags": jiwer.wer(texts["batched"].strip(), texts["batched_tags"].strip()),
        "exact_identical": texts["exact"] == texts["fw"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, seconds=0, repeats=3)
    parser.add_argument("--beam_size", type=int, default=1, help="1: greedy (default)")
    parser.add_argument("--batch_size", type=int, default=8, help="batched pipeline's batch")
    parser.add_argument("--cpu_threads", type=int, default=0, help="CTranslate2 threads")
    parser.add_argument("--at_compute_type", default="auto",
                        help="the tagging encoder's precision (auto: bfloat16 where native)")
    common.add_child_args(parser, choices=VARIANTS)
    args = common.parse_args(parser, child)
    if args is None:
        return
    print(f"# bench_faster; {common.machine()}; beam_size {args.beam_size}; tagging encoder "
          f"{args.at_compute_type}")
    rows, rss_rows, summary = [], [], []
    for model in args.models:
        audio_path = common.make_audio(args.seconds)
        seconds = common.wav_seconds(audio_path)
        res = measure(model, audio_path, args)
        wall, paired = res["wall"], res["paired"]
        cpu = res["cpu"]
        for kind in VARIANTS:
            rows.append([model, f"{seconds:.0f}", kind, wall[kind], wall[kind] / wall["fw"],
                         paired[kind], cpu[kind], cpu[kind] / cpu["fw"],
                         f"{res['load']:.1f}"])  # fmt: skip
        for kind, peak in res["rss"].items():
            rss_rows.append([model, kind, peak, peak / res["rss"]["fw"]])
        one = wall["one_pass"] / wall["fw"]
        exact = wall["exact"] / wall["fw"]
        speedup = wall["whisper_at"] / wall["one_pass"]
        batched = wall["batched_tags"] / wall["batched"]

        def verdict(ok: bool) -> str:
            return "met" if ok else "MISSED"

        summary.append(
            f"{model} one-pass x{one:.3f} ({verdict(one <= ONE_PASS_TARGET)}), exact "
            f"x{exact:.3f} ({verdict(exact <= EXACT_TARGET)}, text "
            f"{'identical' if res['exact_identical'] else 'DIFFERS'}), batched+tags "
            f"x{batched:.3f}, whisper_at/one-pass x{speedup:.3f}"
            + (f" ({verdict(speedup >= SPEEDUP_TARGET)})" if model == "tiny" else "")
            + f", one-pass WER vs FW {res['wer_one_pass']:.3f}"
        )
    print("\n## wall time (medians; ratio to FW alone)\n")
    print(common.table(["model", "seconds", "variant", "wall s", "ratio", "paired ratio",
                        "cpu s", "cpu ratio", "load after"], rows))  # fmt: skip
    print("\n## peak RSS, one cold run per fresh process (MiB)\n")
    print(common.table(["model", "variant", "peak MiB", "ratio to fw"], rss_rows))
    print(
        f"\nSUMMARY bench_faster: {'; '.join(summary)} (targets: one-pass <= "
        f"{ONE_PASS_TARGET}, exact <= {EXACT_TARGET}, whisper_at/one-pass >= {SPEEDUP_TARGET})"
    )


if __name__ == "__main__":
    main()
