"""Every backend on one recording: wall, real-time factor, peak RSS and tag-row agreement.

The same >= 60 s recording (the speech/music/noise mix of common.make_audio), tiny.en, CPU,
``--threads`` threads, each library with its own default decoding (openai-whisper: greedy with
temperature fallback; faster-whisper and whisperX: 5 beams; transformers: the checkpoint's
generation config, greedy), a seeded random TL-TR head. Each configuration runs in a fresh
process (whisperX's in .venv-whisperx, which tests/install.sh builds: whisperX pins torch 2.8):
load, one warm-up call on 5 s, then ``--repeats`` timed calls (median). Peak RSS is the
process's, model loading included. The ratios to the same library without tags are also measured
in one process per library, the configurations run in alternating order (median of the
per-round ratios), which a busy machine disturbs less. Tag rows are compared with
``whisper_at.transcribe``'s (max |logit difference| over the rows both tag, median over rows,
and the share of rows with the same top-5 classes); "text" says whether the transcript equals
the same library's without tags.

    python benchmarks/bench_backends.py [--repeats 3] [--threads 2]
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import common

WHISPERX_PYTHON = common.REPO / ".venv-whisperx" / "bin" / "python"
# name -> (interpreter, the configuration without tags it is compared with, if any)
CONFIGS = {
    "openai-whisper": ("main", None),
    "whisper_at": ("main", "openai-whisper"),
    "faster-whisper": ("main", None),
    "whisper_at.faster one_pass": ("main", "faster-whisper"),
    "whisper_at.faster exact": ("main", "faster-whisper"),
    "whisperX": ("whisperx", None),
    "whisperX + tags exact": ("whisperx", "whisperX"),
    "whisperX + tags one_pass": ("whisperx", "whisperX"),
    "transformers pipeline": ("main", None),
    "transformers pipeline + tags": ("main", "transformers pipeline"),
    "model.tag float32": ("main", None),
    "model.tag auto": ("main", "model.tag float32"),
}
REFERENCE = "whisper_at"


QUICK = ("openai-whisper", "whisper_at", "faster-whisper", "whisper_at.faster one_pass")


def _runner(name: str, threads: int):
    """(warm-up call, timed call) for one configuration; each returns (text, tags or None)."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    tiny, (layers, width) = common.MODELS["tiny"][0], common.MODELS["tiny"][1:]
    head = common.random_head_state(layers, width)
    ct2 = str(common.testkit.ct2_dir(common.cache_dir(), tiny))
    if name in ("openai-whisper", "whisper_at") or name.startswith("model.tag"):
        import whisper

        model = common.load_plain("tiny") if name == "openai-whisper" else common.load_at("tiny")
        if name.startswith("model.tag"):
            kind = name.split()[-1]
            return lambda audio: ("", model.tag(audio, at_compute_type=kind)["audio_tag"])

        import whisper_at

        run = whisper.transcribe if name == "openai-whisper" else whisper_at.transcribe

        def transcribe(audio):
            torch.manual_seed(0)
            result = run(model, audio, fp16=False, language="en")
            return result["text"], result.get("audio_tag")

        return transcribe
    if "faster" in name:
        import faster_whisper

        import whisper_at.faster as faster

        if name == "faster-whisper":
            model = faster_whisper.WhisperModel(ct2, compute_type="int8", cpu_threads=threads)
        else:
            model = faster.WhisperModel(ct2, compute_type="int8", cpu_threads=threads,
                                        at_head=head, at_encoder=name.split()[-1])  # fmt: skip

        def transcribe(audio):
            segments, info = model.transcribe(audio, language="en")
            text = "".join(s.text for s in segments)
            return text, getattr(info, "audio_tag", None)

        return transcribe
    if name.startswith("whisperX"):
        import whisperx

        from whisper_at.integrations.whisperx import enable_tagging

        pipeline = whisperx.load_model(ct2, "cpu", compute_type="int8", language="en",
                                       vad_method="pyannote", threads=threads)  # fmt: skip
        if "tags" in name:
            enable_tagging(pipeline, ct2, at_head=head, at_encoder=name.split()[-1])

        def transcribe(audio):
            result = pipeline.transcribe(audio, batch_size=4)
            return "".join(s["text"] for s in result["segments"]), result.get("audio_tag")

        return transcribe
    from transformers import (
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
        pipeline,
    )

    from whisper_at.integrations.transformers import enable_tagging

    path = common.testkit.hf_dir(common.cache_dir(), tiny)
    net = WhisperForConditionalGeneration.from_pretrained(path).float().eval()
    asr = pipeline("automatic-speech-recognition", model=net, device="cpu",
                   tokenizer=WhisperTokenizerFast.from_pretrained(path),
                   feature_extractor=WhisperFeatureExtractor.from_pretrained(path))  # fmt: skip
    if name.endswith("tags"):
        enable_tagging(asr, at_head=head)

    def transcribe(audio):
        result = asr(np.array(audio), chunk_length_s=30, batch_size=4)
        return result["text"], result.get("audio_tag")

    return transcribe


def child(name: str, audio_path: str, repeats: int, threads: int, out: str) -> None:
    import numpy as np

    audio = common.load_wav(Path(audio_path))
    run = _runner(name, threads)
    run(audio[: 5 * common.SAMPLE_RATE])
    times = []
    for _ in range(repeats):
        seconds, (text, tags) = common.timed(lambda: run(audio))
        times.append(seconds)
    if tags is not None:
        np.save(out, tags.float().numpy())
    common.emit({"wall": common.median(times), "text": text, "tags": tags is not None,
                 "rss": common.peak_rss_mb()})  # fmt: skip


def pairs(audio_path: str, repeats: int, threads: int, names) -> None:
    """Wall of each configuration in one process, run in alternating order; emits the median
    of the per-round ratios to the first (robust to load that drifts between rounds)."""
    audio = common.load_wav(Path(audio_path))
    runs = {name: _runner(name, threads) for name in names}
    for run in runs.values():
        run(audio[: 5 * common.SAMPLE_RATE])
    times = common.alternate({name: (lambda run=run: run(audio)) for name, run in runs.items()},
                             repeats)  # fmt: skip
    first = names[0]
    common.emit({name: common.paired_ratio(times[name], times[first]) for name in names[1:]})


GROUPS = [  # configurations timed against each other in one process (the first: without tags)
    ["openai-whisper", "whisper_at"],
    ["faster-whisper", "whisper_at.faster one_pass", "whisper_at.faster exact"],
    ["whisperX", "whisperX + tags exact", "whisperX + tags one_pass"],
    ["transformers pipeline", "transformers pipeline + tags"],
    ["model.tag float32", "model.tag auto"],
]


def agreement(tags, reference) -> tuple:
    """(median over rows of max |logit difference|, share of rows with equal top-5 sets) over
    the rows both tag."""
    import numpy as np

    rows = [k for k in range(min(len(tags), len(reference)))
            if not np.isnan(tags[k]).any() and not np.isnan(reference[k]).any()]  # fmt: skip
    if not rows:
        return float("nan"), float("nan")
    diff = [float(np.abs(tags[k] - reference[k]).max()) for k in rows]
    same = [set(np.argsort(-tags[k])[:5]) == set(np.argsort(-reference[k])[:5]) for k in rows]
    return float(np.median(diff)), sum(same) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", choices=list(CONFIGS), help="configurations to run")
    parser.add_argument("--child", nargs=4, metavar=("NAME", "AUDIO", "REPEATS", "OUT"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 5 s of audio, one repeat, openai-whisper and "
                        "faster-whisper with and without tags")  # fmt: skip
    parser.add_argument("--pairs", nargs="+", help=argparse.SUPPRESS)  # AUDIO REPEATS NAME...
    args = parser.parse_args()
    if args.child:
        name, audio, repeats, out = args.child
        return child(name, audio, int(repeats), args.threads, out)
    if args.pairs:
        return pairs(args.pairs[0], int(args.pairs[1]), args.threads, args.pairs[2:])
    import numpy as np

    audio = common.make_audio(5 if args.quick else 0)
    duration = common.wav_seconds(audio)
    names = args.only or list(QUICK if args.quick else CONFIGS)
    if args.quick:
        args.repeats = 1
    if REFERENCE not in names:
        names = [REFERENCE, *names]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            python = sys.executable if CONFIGS[name][0] == "main" else str(WHISPERX_PYTHON)
            if not os.path.exists(python):
                print(f"{name}: skipped, {python} is missing (run tests/install.sh)",
                      file=sys.stderr)  # fmt: skip
                continue
            out = os.path.join(tmp, f"{len(results)}.npy")
            cmd = [python, __file__, "--threads", str(args.threads), "--child", name,
                   str(audio), str(args.repeats), out]  # fmt: skip
            results[name] = dict(common.run_child_cmd(cmd), npy=out)
            print(f"{name}: {results[name]['wall']:.2f} s", file=sys.stderr, flush=True)
        paired = {}
        for group in GROUPS:
            group = [name for name in group if name in results]
            if len(group) > 1:
                python = sys.executable if CONFIGS[group[0]][0] == "main" else str(WHISPERX_PYTHON)
                cmd = [python, __file__, "--threads", str(args.threads), "--pairs", str(audio),
                       str(args.repeats), *group]  # fmt: skip
                paired.update(common.run_child_cmd(cmd))
                print(f"paired: {group}", file=sys.stderr, flush=True)
        reference = np.load(results[REFERENCE]["npy"])
        rows = []
        for name, r in results.items():
            plain = CONFIGS[name][1]
            same = "" if plain not in results or not r["text"] else \
                str(r["text"] == results[plain]["text"])  # fmt: skip
            diff, top5 = agreement(np.load(r["npy"]), reference) if r["tags"] else ("", "")
            ratio = r["wall"] / results[plain]["wall"] if plain in results else ""
            rows.append(["tiny", name, r["wall"], duration / r["wall"], ratio,
                         paired.get(name, ""), r["rss"], diff, top5, same])  # fmt: skip
    print(f"{duration:.1f} s recording, tiny.en, CPU, {args.threads} threads, "
          f"median of {args.repeats}; {common.machine()}")  # fmt: skip
    print(common.table(["model", "configuration", "wall s", "x real time", "vs without tags",
                        "paired (one process, alternated)",
                        "peak RSS MiB", "tag diff (median row max)", "top-5 rows equal",
                        "text unchanged"], rows))  # fmt: skip
    ratios = " ".join(f"{name.replace(' ', '_')} x{ratio:.3f}" for name, ratio in paired.items())
    print(f"SUMMARY bench_backends: tiny {ratios} (paired wall with tags / without)")


if __name__ == "__main__":
    main()
