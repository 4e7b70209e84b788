"""Tagging only: ``model.tag`` vs the bare encoder forward on the same windows.

For each model: ``model.tag`` (log-mel, encoder with the pooling tap, TL-TR head) against a
plain openai-whisper encoder run on the same batched 30 s windows, alternated in one process,
for batch sizes 1, 2, 4, 8; x real time; speed-up over ``transcribe`` (with tags) on the same
audio; and ``window_seconds=10`` (encoder on 10 s windows): its speed and how far its tags are
from the 30 s path's; and the encoder's precision (``at_compute_type``: float32, auto, bfloat16,
batch 1, on the first ``--precision_seconds`` of the audio): wall time of each against float32,
alternated in one process, and how far its tags are from float32's. Target: tag / bare encoder
<= 1.10.
"""

import argparse
from contextlib import contextmanager

import common

TARGET = 1.10
BATCH_SIZES = (1, 2, 4, 8)
PRECISIONS = ("float32", "auto", "bfloat16")


def windows(model, audio, window_seconds: int):
    """The log-mel windows ``tag`` encodes, [n, n_mels, frames]."""
    import torch

    from whisper_at.mel import MelWindows

    mel = MelWindows(audio, model.dims.n_mels, window_seconds * 100)
    return torch.stack([window for _, window in mel])


@contextmanager
def short_positions(encoder, frames: int):
    """Slice a plain encoder's positional embedding for windows shorter than 30 s."""
    full = encoder.positional_embedding
    encoder.positional_embedding = full[: frames // 2]
    try:
        yield
    finally:
        encoder.positional_embedding = full


def bare_encoder(plain, mels, batch_size: int):
    """Run the plain encoder over mels in batches, as ``tag`` batches them."""
    import torch

    def go():
        with torch.no_grad(), short_positions(plain.encoder, mels.shape[-1]):
            for i in range(0, len(mels), batch_size):
                plain.encoder(mels[i : i + batch_size])

    return go


def tag_diff(model, audio, batch_size: int) -> dict:
    """How far the 10 s path is from the 30 s path: tag logits (mean |diff|, top-1 agreement,
    correlation) and, head-independent, the pooled features the head reads (relative L2
    difference per layer, first and last layer)."""
    import torch

    r30 = model.tag(audio, batch_size=batch_size, return_audio_features=True)
    r10 = model.tag(audio, batch_size=batch_size, window_seconds=10, return_audio_features=True)
    n = min(len(r30["audio_tag"]), len(r10["audio_tag"]))
    a, b = r30["audio_tag"][:n], r10["audio_tag"][:n]
    # row k of the 30 s path: window k // 3, pooled frames 25 * (k % 3) ... + 25
    f30 = r30["audio_features_for_at"]  # [windows, layers, 75, d]
    f30 = f30.unflatten(2, (3, 25)).transpose(1, 2).flatten(0, 1)[:n]  # [rows, layers, 25, d]
    f10 = r10["audio_features_for_at"][:n]  # [rows, layers, 25, d]

    def rel(rows):  # relative L2 difference per layer
        a_, b_ = f30[rows], f10[rows]
        return ((a_ - b_) ** 2).sum(dim=(0, 2, 3)).sqrt() / (a_**2).sum(dim=(0, 2, 3)).sqrt()

    per_layer = rel(slice(None))
    # rows 0, 3, 6, ... start a 30 s window: same positions (0-10 s), only the context differs
    aligned = slice(None, None, 3)
    return {
        "mad": (a - b).abs().mean().item(),
        "scale": a.std().item(),
        "top1": (a.argmax(-1) == b.argmax(-1)).float().mean().item(),
        "corr": torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item(),
        "feat_first": per_layer[0].item(),
        "feat_last": per_layer[-1].item(),
        "feat_last_aligned": rel(aligned)[-1].item(),
        "top1_aligned": (a[aligned].argmax(-1) == b[aligned].argmax(-1)).float().mean().item(),
    }


def precision(model, audio, repeats: int) -> dict:
    """model.tag at each at_compute_type (batch 1): median wall seconds (alternated) and
    agreement with float32's tags (testkit.logit_agreement: max / mean |dlogit|, top-1, top-5)."""
    import testkit

    variants = {c: (lambda c=c: model.tag(audio, batch_size=1, at_compute_type=c))
                for c in PRECISIONS}  # fmt: skip
    tags = {c: fn()["audio_tag"] for c, fn in variants.items()}  # also the warm-up
    times = common.alternate(variants, repeats)
    return {c: {"s": common.median(times[c]), "paired": common.paired_ratio(times[c],
                                                                            times["float32"]),
                **testkit.logit_agreement(tags["float32"], tags[c])}
            for c in PRECISIONS}  # fmt: skip


def bench_model(name: str, args, audio) -> dict:
    import torch

    import whisper_at

    at = common.load_at(name)
    plain = common.plain_from_at(at)
    seconds = len(audio) / common.SAMPLE_RATE
    mels30 = windows(at, audio, 30)
    mels10 = windows(at, audio, 10)
    sweep = {}
    for batch_size in args.batch_sizes:
        variants = {
            "tag": lambda b=batch_size: at.tag(audio, batch_size=b),
            "bare": bare_encoder(plain, mels30, batch_size),
        }
        if args.repeats > 1:
            for fn in variants.values():
                fn()  # warm-up
        times = common.alternate(variants, args.repeats)
        sweep[batch_size] = {key: common.median(value) for key, value in times.items()}

    batch = max(args.batch_sizes)
    variants10 = {
        "tag": lambda: at.tag(audio, batch_size=batch, window_seconds=10),
        "bare": bare_encoder(plain, mels10, batch),
    }
    if args.repeats > 1:
        for fn in variants10.values():
            fn()
    times10 = common.alternate(variants10, args.repeats)
    at10 = {key: common.median(value) for key, value in times10.items()}
    diff = tag_diff(at, audio, batch)

    def transcribe():
        torch.manual_seed(0)
        whisper_at.transcribe(at, audio, fp16=False)

    transcribe_s = common.median(
        [common.timed(transcribe)[0] for _ in range(args.transcribe_repeats)]
    )
    short = audio[: int(args.precision_seconds * common.SAMPLE_RATE)]
    return {
        "model": name,
        "seconds": seconds,
        "windows": (len(mels30), len(mels10)),
        "sweep": sweep,
        "at10": at10,
        "diff": diff,
        "transcribe": transcribe_s,
        "precision": precision(at, short, args.repeats),
        "precision_seconds": len(short) / common.SAMPLE_RATE,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, seconds=240, repeats=3)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--transcribe_repeats", type=int, default=1)
    parser.add_argument("--precision_seconds", type=float, default=60,
                        help="audio for the at_compute_type comparison (emulated bfloat16 is "
                        "slow)")
    args = common.parse_args(parser)
    if args.quick:
        args.batch_sizes = [1]
    import torch

    from whisper_at.precision import encoder_dtype, native_bfloat16

    audio_path = common.make_audio(args.seconds)
    audio = common.load_wav(audio_path)
    print(f"# bench_tagging: {len(audio) / common.SAMPLE_RATE:.1f} s audio; {common.machine()}")
    print(
        f"# torch.get_num_threads() = {torch.get_num_threads()}, "
        f"interop threads = {torch.get_num_interop_threads()}"
    )
    native = native_bfloat16()
    auto = str(encoder_dtype(torch.device("cpu"), "auto")).replace("torch.", "")
    print(f"# native bfloat16 on this CPU (AVX512-BF16 / AMX): {'yes' if native else 'no'}; "
          f"at_compute_type auto = {auto}")
    results = [bench_model(name, args, audio) for name in args.models]

    rows = []
    for res in results:
        for batch_size, t in res["sweep"].items():
            rows.append(
                [
                    res["model"],
                    batch_size,
                    t["bare"],
                    t["tag"],
                    t["tag"] / t["bare"],
                    res["seconds"] / t["tag"],
                ]
            )
    print(f"\n## tag (30 s windows) vs bare encoder, same windows (medians of {args.repeats})\n")
    print(
        common.table(
            ["model", "batch", "bare encoder s", "tag s", "tag / encoder", "x real time"], rows
        )
    )

    rows = []
    for res in results:
        t30 = res["sweep"][max(res["sweep"])]
        t10, d = res["at10"], res["diff"]
        rows.append(
            [
                res["model"],
                "{}/{}".format(*res["windows"]),
                t30["tag"],
                t10["tag"],
                t30["tag"] / t10["tag"],
                t10["tag"] / t10["bare"],
                res["transcribe"],
                res["transcribe"] / t30["tag"],
                d["mad"],
                d["scale"],
                d["top1"],
                d["corr"],
                d["feat_first"],
                d["feat_last"],
                d["feat_last_aligned"],
                d["top1_aligned"],
            ]
        )
    print("\n## window_seconds=10 vs 30, and transcribe-with-tags vs tag (largest batch)\n")
    print(
        common.table(
            [
                "model",
                "windows 30/10",
                "tag30 s",
                "tag10 s",
                "10 s speed-up",
                "tag10 / encoder10",
                "transcribe s",
                "tag speed-up vs transcribe",
                "mean |dlogit|",
                "logit std",
                "top-1 agree",
                "corr",
                "feature rel. diff layer 1",
                "feature rel. diff last layer",
                "same, rows at a 30 s window start",
                "top-1 agree, those rows",
            ],
            rows,
        )
    )

    rows = []
    for res in results:
        for compute_type, p in res["precision"].items():
            rows.append([res["model"], compute_type, f"{res['precision_seconds']:.0f}", p["s"],
                         p["s"] / res["precision"]["float32"]["s"], p["paired"], p["max"],
                         p["mean"], p["top1"], p["topk_overlap"], p["topk_same"]])
    print(f"\n## at_compute_type: model.tag (batch 1) vs float32 (medians of {args.repeats}; "
          f"auto = {auto} here)\n")
    print(
        common.table(
            ["model", "at_compute_type", "audio s", "tag s", "wall / float32",
             "paired ratio", "max |dlogit|", "mean |dlogit|", "top-1 agree", "top-5 overlap",
             "rows with same top-5"],
            rows,
        )
    )

    summary = []
    for res in results:
        bf16 = res["precision"]["bfloat16"]
        worst = max(t["tag"] / t["bare"] for t in res["sweep"].values())
        t30 = res["sweep"][max(res["sweep"])]
        summary.append(
            f"{res['model']} tag/encoder max x{worst:.3f} "
            f"({'met' if worst <= TARGET else 'MISSED'})"
            f", {res['seconds'] / t30['tag']:.0f}x real time"
            f", x{res['transcribe'] / t30['tag']:.1f} faster than transcribe"
            f", 10 s windows x{t30['tag'] / res['at10']['tag']:.2f} faster"
            f" (top-1 agree {res['diff']['top1']:.2f}, "
            f"last-layer feature diff {res['diff']['feat_last']:.0%})"
            f", bfloat16 wall x{bf16['paired']:.2f} of float32"
            f" ({'native' if native else 'emulated'}; max |dlogit| {bf16['max']:.3f}, "
            f"top-5 overlap {bf16['topk_overlap']:.2f})"
        )
    print(f"\nSUMMARY bench_tagging: {'; '.join(summary)} (target tag/encoder <= {TARGET})")


if __name__ == "__main__":
    main()
