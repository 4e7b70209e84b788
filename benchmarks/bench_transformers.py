"""transformers integration: the ASR pipeline with sound-event tags vs without.

CPU, the test suite's tiny.en in transformers' layout (tests/testkit.hf_dir), float32, >= 60 s
of the speech/music/noise mix, greedy decoding unless --num_beams (the pipeline's own default
is 5 beams). Two ways of running long audio through the pipeline: chunked (``chunk_length_s=30``,
its default 5 s strides, ``--batch_size`` chunks per generate) and unchunked (transformers'
sequential long-form generate). Each is timed on one pipeline object with
``whisper_at.integrations.transformers.enable_tagging`` on and off, in alternating order
(medians of the per-repetition ratios; the first round warms up). The text must be the same.
Target: tags <= 1.05x the pipeline alone.
"""

import argparse

import common

TARGET = 1.05
MODES = {"chunked": {"chunk_length_s": 30}, "unchunked": {}}


def measure(model: str, audio, args) -> dict:
    from transformers import (
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
        pipeline,
    )

    from whisper_at.integrations.transformers import disable_tagging, enable_tagging

    path = common.testkit.hf_dir(common.cache_dir(), common.MODELS[model][0])
    net = WhisperForConditionalGeneration.from_pretrained(path).float().eval()
    asr = pipeline("automatic-speech-recognition", model=net, device="cpu",
                   tokenizer=WhisperTokenizerFast.from_pretrained(path),
                   feature_extractor=WhisperFeatureExtractor.from_pretrained(path))  # fmt: skip
    head = common.random_head_state(*common.MODELS[model][1:])
    results = {}
    for mode, options in MODES.items():
        options = dict(options, generate_kwargs={"num_beams": args.num_beams})
        if mode == "chunked":
            options["batch_size"] = args.batch_size
        texts = {}

        def run(tags: bool, options=options, texts=texts):
            def go():
                if tags:
                    enable_tagging(asr, at_head=head)
                else:
                    disable_tagging(asr)
                result = asr(audio.copy(), **options)
                texts.setdefault(tags, result["text"])
                assert ("audio_tag" in result) == tags
            return go

        times = common.alternate({"plain": run(False), "tags": run(True)}, args.repeats + 1)
        times = {kind: value[1:] for kind, value in times.items()}
        results[mode] = {
            "plain": common.median(times["plain"]),
            "tags": common.median(times["tags"]),
            "paired": common.paired_ratio(times["tags"], times["plain"]),
            "same_text": texts[True] == texts[False],
        }
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, seconds=60, repeats=3, models=("tiny",))
    parser.add_argument("--num_beams", type=int, default=1, help="1: greedy (default)")
    parser.add_argument("--batch_size", type=int, default=1, help="chunks per generate call")
    args = common.parse_args(parser)
    print(f"# bench_transformers; {common.machine()}; num_beams {args.num_beams}; "
          f"chunked batch_size {args.batch_size}")
    rows, summary = [], []
    for model in args.models:
        if common.MODELS[model][0].split(".")[-1] != "en":
            raise SystemExit(f"bench_transformers needs an English-only model, not {model}")
        audio_path = common.make_audio(args.seconds)
        seconds = common.wav_seconds(audio_path)
        res = measure(model, common.load_wav(audio_path), args)
        parts = []
        for mode, r in res.items():
            ratio = r["tags"] / r["plain"]
            rows.append([model, f"{seconds:.0f}", mode, r["plain"], r["tags"], ratio, r["paired"],
                         "same" if r["same_text"] else "DIFFERS"])  # fmt: skip
            verdict = "met" if r["paired"] <= TARGET else "MISSED"
            parts.append(f"{mode} x{r['paired']:.3f} ({verdict})")
        summary.append(f"{model} " + ", ".join(parts))
    print("\n## wall time of the pipeline (medians; tags vs none)\n")
    print(common.table(["model", "seconds", "mode", "pipeline s", "+ tags s", "ratio",
                        "paired ratio", "text"], rows))  # fmt: skip
    print(f"\nSUMMARY bench_transformers: {'; '.join(summary)} (target: tags <= {TARGET}x)")


if __name__ == "__main__":
    main()
