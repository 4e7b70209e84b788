"""Overhead of tagging during transcription: whisper_at.transcribe vs openai-whisper's.

Same weights, same audio (a ~66 s speech + music + noise mix, as a float32 array), same options
(fp16=False, default temperature fallback). Wall time: both models in this process, A/B runs
alternated, medians. Peak RSS: each variant transcribes once in a fresh interpreter (alternated,
medians). Also times the TL-TR head alone per 30 s window and the pooling tap in the encoder.
Targets: wall ratio <= 1.01, peak-RSS ratio <= 1.02.
"""

import argparse
import importlib
import time
from pathlib import Path

import common

WALL_TARGET, RSS_TARGET = 1.01, 1.02


def child(args) -> None:
    """One cold transcription in a fresh process; prints peak RSS figures as JSON."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child == "plain":
        import whisper

        model, fn = common.load_plain(args.model), whisper.transcribe
    else:
        import whisper_at

        model, fn = common.load_at(args.model), whisper_at.transcribe
    loaded = common.peak_rss_mb()
    audio = common.load_wav(Path(args.audio))
    options = {"fp16": False}
    if args.language:
        options["language"] = args.language
    with common.phase_peak() as phase:
        wall, _ = common.timed(lambda: fn(model, audio, **options))
    common.emit(
        {
            "peak": common.peak_rss_mb(),
            "after_load": loaded,
            "run_growth": phase["growth"],
            "wall": wall,
        }
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def micro(fn, repeats: int) -> float:
    """Median seconds of fn() over repeats calls (after one warm-up call)."""
    fn()
    return common.median([common.timed(fn)[0] for _ in range(repeats)])


class Stopwatch:
    """Accumulates the wall time spent inside wrapped callables (not re-entrant per name)."""

    def __init__(self):
        self.totals = {}

    def wrap(self, owner, attr: str, name: str):
        original = getattr(owner, attr)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start

        own = attr in vars(owner)  # else it comes from the class: restore by deleting
        setattr(owner, attr, wrapper)
        return lambda: setattr(owner, attr, original) if own else delattr(owner, attr)


def attribution(at, plain, audio, options) -> dict:
    """Where one transcription's wall time goes, for both models (seconds)."""
    import torch
    import whisper
    from whisper.audio import log_mel_spectrogram

    import whisper_at
    from whisper_at import tagging

    at_transcribe = importlib.import_module("whisper_at.transcribe")  # the module, not the function

    out = {}
    for key, model, fn in (
        ("openai-whisper", plain, whisper.transcribe),
        ("whisper_at", at, whisper_at.transcribe),
    ):
        watch = Stopwatch()
        undo = [watch.wrap(model.encoder, "forward", "encoder")]
        if key == "whisper_at":
            undo += [
                watch.wrap(model.at_model, "forward_chunks", "head"),
                watch.wrap(tagging.ChunkTagger, "add_window", "tagger (with head)"),
                watch.wrap(tagging.ChunkTagger, "finish", "tagger (with head)"),
                watch.wrap(at_transcribe._WindowLocator, "locate", "locate window"),
                watch.wrap(model, "_encode", "encode + window cache"),
            ]
        torch.manual_seed(0)
        start = time.perf_counter()
        try:
            fn(model, audio, **options)
        finally:
            for restore in undo[::-1]:
                restore()
        total = time.perf_counter() - start
        out[key] = {"total": total, **watch.totals}
    out["log-mel"] = common.timed(lambda: log_mel_spectrogram(audio, at.dims.n_mels))[0]
    return out


def components(at, plain, audio, repeats: int) -> dict:
    """Head per window, pooling per window, and the encoder with/without the tap."""
    import torch
    from whisper.audio import N_FRAMES, log_mel_spectrogram, pad_or_trim

    from whisper_at.model import _pool

    dims = at.dims
    mel = pad_or_trim(log_mel_spectrogram(audio, dims.n_mels), N_FRAMES)[None]
    n_iter = repeats * 3 if repeats > 1 else 1
    with torch.no_grad():
        features, pooled = at.embed_audio_with_layers(mel)
        chunks = pooled[0].unfold(1, 25, 25).permute(1, 0, 3, 2)  # 3 rows of 10 s
        head = micro(lambda: at.at_model.forward_chunks(chunks), n_iter * 10)
        blocks = torch.randn(dims.n_audio_layer, 1, 1500, dims.n_audio_state)
        pool = micro(lambda: torch.stack([_pool(b) for b in blocks], dim=1), n_iter * 10)
        times = common.alternate(
            {
                "bare": lambda: plain.encoder(mel),
                "hooked": lambda: at.encoder(mel),
                "tap": lambda: at.embed_audio_with_layers(mel),
            },
            n_iter,
        )
    return {"head": head, "pool": pool, **{k: common.median(v) for k, v in times.items()}}


def bench_model(name: str, args, audio_path: Path) -> dict:
    import torch
    import whisper

    import whisper_at

    at = common.load_at(name)
    plain = common.plain_from_at(at)
    audio = common.load_wav(audio_path)
    options = {"fp16": False}
    if args.language:
        options["language"] = args.language

    models = {
        "openai-whisper": (plain, whisper.transcribe),
        "whisper_at": (at, whisper_at.transcribe),
    }
    results, encodes, cpu = {}, {}, {key: [] for key in models}

    def run(key):
        def go():
            start = time.process_time()
            if key in results:
                torch.manual_seed(0)
                models[key][1](models[key][0], audio, **options)
            else:  # first round: keep the result and count encoder passes
                results[key], encodes[key] = common.count_encodes(*models[key], audio, options)
            cpu[key].append(time.process_time() - start)

        return go

    # the first round warms up (unless there is only one repetition)
    warm = args.repeats > 1
    wall = common.alternate({key: run(key) for key in models}, args.repeats + warm)
    wall = {key: value[warm:] for key, value in wall.items()}
    cpu = {key: value[warm:] for key, value in cpu.items()}
    expected, actual = results["openai-whisper"], dict(results["whisper_at"])
    n_windows = len({segment["seek"] for segment in expected["segments"]}) or 1
    temps = sorted({segment["temperature"] for segment in expected["segments"]})
    parts = components(at, plain, audio, args.repeats)
    where = attribution(at, plain, audio, options)

    rss = {key: [] for key in ("plain", "at")}
    child_args = ["--model", name, "--audio", str(audio_path), "--threads", str(args.threads)]
    if args.language:
        child_args += ["--language", args.language]
    for r in range(args.rss_repeats):
        for kind in ("plain", "at") if r % 2 == 0 else ("at", "plain"):
            rss[kind].append(common.run_child(Path(__file__), ["--child", kind, *child_args]))

    def rss_median(kind, key):
        return common.median([run[key] for run in rss[kind]])

    del actual["audio_tag"], actual["at_time_res"]
    return {
        "model": name,
        "identical": actual == expected,
        "encodes": (encodes["openai-whisper"], encodes["whisper_at"]),
        "windows": n_windows,
        "temperatures": temps,
        "wall": {k: common.median(v) for k, v in wall.items()},
        "wall_paired": common.paired_ratio(wall["whisper_at"], wall["openai-whisper"]),
        "cpu_paired": common.paired_ratio(cpu["whisper_at"], cpu["openai-whisper"]),
        "wall_all": wall,
        "cpu": {k: common.median(v) for k, v in cpu.items()},
        "parts": parts,
        "where": where,
        "rss": {
            kind: {key: rss_median(kind, key) for key in ("peak", "after_load", "run_growth")}
            for kind in rss
        },
        "head_mb": sum(p.numel() * p.element_size() for p in at.at_model.parameters()) / 2**20,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, repeats=7)
    parser.add_argument("--rss_repeats", type=int, default=5, help="fresh processes per variant")
    parser.add_argument("--language", default=None, help="transcribe option (default: detect)")
    common.add_child_args(parser, choices=["plain", "at"])
    args = common.parse_args(parser, child)
    if args is None:  # a --child process: done
        return
    if args.quick:
        args.rss_repeats = 1

    audio_path = common.make_audio(args.seconds)
    seconds = common.wav_seconds(audio_path)
    print(f"# bench_overhead: {seconds:.1f} s audio, options fp16=False language={args.language}")
    print(f"# {common.machine()}")
    results = [bench_model(name, args, audio_path) for name in args.models]

    rows = []
    for res in results:
        w, c, m = res["wall"], res["cpu"], res["rss"]
        rows.append(
            [
                res["model"],
                res["windows"],
                "{}/{}".format(*res["encodes"]),
                w["openai-whisper"],
                w["whisper_at"],
                w["whisper_at"] / w["openai-whisper"],
                res["wall_paired"],
                c["whisper_at"] / c["openai-whisper"],
                res["cpu_paired"],
                m["plain"]["peak"],
                m["at"]["peak"],
                m["at"]["peak"] / m["plain"]["peak"],
                res["head_mb"],
                (m["at"]["peak"] - res["head_mb"]) / m["plain"]["peak"],
                m["plain"]["run_growth"],
                m["at"]["run_growth"],
                "yes" if res["identical"] else "NO",
            ]
        )
    print("\n## transcribe: openai-whisper vs whisper_at (medians)\n")
    print(
        common.table(
            [
                "model",
                "windows",
                "encodes plain/at",
                "wall plain s",
                "wall at s",
                "wall ratio",
                "paired wall ratio",
                "cpu ratio",
                "paired cpu ratio",
                "peak RSS plain MiB",
                "peak RSS at MiB",
                "RSS ratio",
                "head weights MiB",
                "RSS ratio beside head weights",
                "run growth plain MiB",
                "run growth at MiB",
                "same text",
            ],
            rows,
        )
    )

    rows = []
    for res in results:
        p, n = res["parts"], res["windows"]
        per_window = p["head"] + (p["tap"] - p["bare"])
        rows.append(
            [
                res["model"],
                p["head"] * 1e3,
                p["pool"] * 1e3,
                p["bare"] * 1e3,
                p["hooked"] * 1e3,
                p["tap"] * 1e3,
                (p["tap"] - p["bare"]) * 1e3,
                per_window * n / res["wall"]["openai-whisper"] * 100,
            ]
        )
    print("\n## components per 30 s window (medians, ms)\n")
    print(
        common.table(
            [
                "model",
                "head (3 rows)",
                "pool all layers",
                "encoder bare",
                "encoder hooks idle",
                "encoder + tap",
                "tap cost",
                "head+tap / transcribe %",
            ],
            rows,
        )
    )

    rows = []
    for res in results:
        plain_t, at_t = res["where"]["openai-whisper"], res["where"]["whisper_at"]
        tagger = at_t.get("tagger (with head)", 0.0)
        head = at_t.get("head", 0.0)
        encode = at_t.get("encode + window cache", 0.0)
        rows.append(
            [
                res["model"],
                plain_t["total"],
                plain_t.get("encoder", 0.0),
                plain_t["total"] - plain_t.get("encoder", 0.0),
                at_t["total"],
                at_t.get("encoder", 0.0),
                encode - at_t.get("encoder", 0.0) - tagger,
                head,
                tagger - head,
                at_t.get("locate window", 0.0),
                at_t["total"] - encode,
                res["where"]["log-mel"],
            ]
        )
    print("\n## where one transcription's time goes (s; one run each, wrapped callables)\n")
    print(
        common.table(
            [
                "model",
                "plain total",
                "plain encoder",
                "plain rest (decode...)",
                "at total",
                "at encoder",
                "at tap/cache bookkeeping",
                "at head",
                "at tagger w/o head",
                "at locate",
                "at rest (decode...)",
                "log-mel (full audio)",
            ],
            rows,
        )
    )

    summary = []
    for res in results:
        w, m = res["wall"], res["rss"]
        wall_ratio = w["whisper_at"] / w["openai-whisper"]
        rss_ratio = m["at"]["peak"] / m["plain"]["peak"]
        summary.append(
            f"{res['model']} wall x{wall_ratio:.3f} ({verdict(wall_ratio <= WALL_TARGET)})"
            f" rss x{rss_ratio:.3f} ({verdict(rss_ratio <= RSS_TARGET)};"
            f" x{(m['at']['peak'] - res['head_mb']) / m['plain']['peak']:.3f} beside the"
            f" head's {res['head_mb']:.1f} MiB of weights)"
            f" text {'identical' if res['identical'] else 'DIFFERS'}"
            f" (paired wall x{res['wall_paired']:.3f}, cpu x{res['cpu_paired']:.3f})"
        )
    print(
        f"\nSUMMARY bench_overhead: {'; '.join(summary)} "
        f"(targets wall <= {WALL_TARGET}, rss <= {RSS_TARGET})"
    )


if __name__ == "__main__":
    main()
