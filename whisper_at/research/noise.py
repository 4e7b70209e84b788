"""``whisper-at noise-study``: WER of Whisper on speech mixed with noise at exact SNRs.

The paper's Figure 1 (upper) and Figure 2: LibriSpeech utterances mixed with ESC-50 sounds of each
class at -20..20 dB SNR. SNR is power based: the noise (looped or trimmed to the speech's length)
is scaled so that 10 log10(P_speech / P_noise) equals the target exactly. Utterance i is mixed
with clip i (mod n) of every noise class, so every class is tested on the same speech.

References: a ``.txt`` beside each audio file, LibriSpeech ``*.trans.txt`` files under the speech
folder, or ``--transcripts FILE`` (lines ``<file stem> <text>``). Noise classes: ``--noise_labels``
(ESC-50 CSV: ``category``), else the sub-folder of each noise file, else the file name. Texts are
normalised with Whisper's ``EnglishTextNormalizer`` before scoring with jiwer.
"""

import argparse
import glob
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..audio_io import load_audio
from ..options import positive_int
from .common import clip_id, list_audio, load_backbone, plot_lines, write_json
from .labelsets import read_labels


def fit_length(noise: np.ndarray, n: int) -> np.ndarray:
    """``noise`` repeated or trimmed to ``n`` samples."""
    if len(noise) == 0:
        raise ValueError("empty noise clip")
    return np.tile(noise, -(-n // len(noise)))[:n]


def snr_db(signal: np.ndarray, noise: np.ndarray) -> float:
    """10 log10 of the ratio of mean powers."""
    signal, noise = np.asarray(signal, np.float64), np.asarray(noise, np.float64)
    return float(10 * np.log10(np.mean(signal**2) / np.mean(noise**2)))


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr: float) -> np.ndarray:
    """``speech`` plus ``noise`` (fitted to its length) scaled to ``snr`` dB; float32."""
    speech = np.asarray(speech, np.float64)
    noise = fit_length(np.asarray(noise, np.float64), len(speech))
    p_speech, p_noise = np.mean(speech**2), np.mean(noise**2)
    if p_speech == 0 or p_noise == 0:
        raise ValueError("cannot set an SNR with a silent speech or noise clip")
    scale = np.sqrt(p_speech / (p_noise * 10 ** (snr / 10)))
    return (speech + scale * noise).astype(np.float32)


def snr_key(snr: float) -> str:
    """The report's key of an SNR: '-10', '2.5'."""
    return f"{snr:g}"


def read_references(speech_dir: str, transcripts: Optional[str] = None) -> Dict[str, str]:
    """Reference texts by file stem: ``transcripts`` lines, LibriSpeech ``*.trans.txt`` files,
    and ``.txt`` files beside the audio (in increasing priority)."""
    refs = {}
    lists = glob.glob(os.path.join(speech_dir, "**", "*.trans.txt"), recursive=True)
    for path in ([transcripts] if transcripts else []) + sorted(lists):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    key, _, text = line.strip().partition(" ")
                    refs[os.path.splitext(key.strip())[0]] = text.strip()
    for rel in list_audio(speech_dir):
        beside = os.path.join(speech_dir, clip_id(rel) + ".txt")
        if os.path.exists(beside):
            with open(beside, encoding="utf-8") as f:
                refs[os.path.basename(clip_id(rel))] = f.read().strip()
    return refs


def noise_classes(noise_dir: str, labels: Optional[str] = None) -> Dict[str, List[str]]:
    """Noise files (paths) by class name."""
    table = read_labels(labels) if labels else None
    classes = defaultdict(list)
    for rel in list_audio(noise_dir):
        if table is not None:
            found, _ = table.lookup(rel)
            if not found:
                continue
            name = table.class_names[found[0]]
        else:
            name = os.path.dirname(rel) or clip_id(rel)
        classes[name].append(os.path.join(noise_dir, rel))
    if not classes:
        raise ValueError(f"no noise clips found in {noise_dir}")
    return dict(sorted(classes.items()))


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER (total edits / total reference words) after Whisper's English normalizer."""
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    normalize = EnglishTextNormalizer()
    pairs = [(normalize(r), normalize(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r.strip()]
    if not pairs:
        raise ValueError("no reference has words after normalisation")
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


def noise_study(
    model,
    speech: Dict[str, np.ndarray],
    references: Dict[str, str],
    noises: Dict[str, List[np.ndarray]],
    snrs: Sequence[float],
    **transcribe_options,
) -> dict:
    """Transcribe every utterance clean and mixed with every noise class at every SNR."""
    import whisper
    from tqdm import tqdm

    options = dict(verbose=None, fp16=model.device.type == "cuda", **transcribe_options)
    names = sorted(speech)

    def run(audio: np.ndarray) -> str:
        return whisper.transcribe(model, audio, **options)["text"].strip()

    total = len(names) * (1 + len(noises) * len(snrs))
    bar = tqdm(total=total, unit="utt", disable=None)
    clean = [run(speech[n]) for n in names]
    bar.update(len(names))
    refs = [references[n] for n in names]
    report = {"utterances": len(names), "snrs": list(snrs), "classes": list(noises)}
    report["clean"] = word_error_rate(refs, clean)
    per_class = {name: {} for name in noises}
    hyps_by_snr = defaultdict(list)
    transcripts = [
        {"speech": n, "noise": None, "snr": None, "text": t} for n, t in zip(names, clean)
    ]
    for snr in snrs:
        for noise_name, clips in noises.items():
            hyps = []
            for i, name in enumerate(names):
                hyps.append(run(mix_at_snr(speech[name], clips[i % len(clips)], snr)))
                transcripts.append(
                    {"speech": name, "noise": noise_name, "snr": snr, "text": hyps[-1]}
                )
                bar.update(1)
            per_class[noise_name][snr_key(snr)] = word_error_rate(refs, hyps)
            hyps_by_snr[snr].extend(hyps)
    bar.close()
    report["wer"] = {snr_key(s): word_error_rate(refs * len(noises), hyps_by_snr[s]) for s in snrs}
    report["per_class"] = per_class
    report["transcripts"] = transcripts
    return report


def plot_study(report: dict, path: str, title: str = "Noise-robust ASR", max_classes: int = 10):
    """WER against SNR: over all noise, per class (up to ``max_classes``), and clean."""
    snrs = report["snrs"]
    series = {"all noise": [100 * report["wer"][snr_key(s)] for s in snrs]}
    if len(report["per_class"]) <= max_classes:
        for name, by_snr in report["per_class"].items():
            series[name] = [100 * by_snr[snr_key(s)] for s in snrs]
    series["clean speech"] = [100 * report["clean"]] * len(snrs)
    thin = [n for n in series if n != "all noise"]
    plot_lines(path, snrs, series, "SNR (dB)", "WER (%)", title, thin)


def _join_snrs(argv: List[str]) -> List[str]:
    """``--snrs -20,-10`` as ``--snrs=-20,-10`` (argparse takes "-20,-10" for an option)."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--snrs":
            out[i : i + 2] = [f"--snrs={out[i + 1]}"]
            break
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="whisper-at noise-study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("speech_dir")
    parser.add_argument("noise_dir")
    parser.add_argument("--model", default="large-v1", help="Whisper name or checkpoint path")
    parser.add_argument("--snrs", default="-20,-10,0,10,20", help="comma-separated SNRs in dB")
    parser.add_argument("--transcripts", help="file of '<file stem> <reference text>' lines")
    parser.add_argument("--noise_labels", help="ESC-50-style CSV giving each noise file a class")
    parser.add_argument("--max_speech", type=positive_int, help="use only the first N utterances")
    parser.add_argument("--language", default="en")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument(
        "--fallback_step",
        type=float,
        default=0.2,
        help="temperature increment on fallback, as whisper's CLI (0: none)",
    )
    parser.add_argument("--out", default="noise_study.json", help="report (JSON)")
    parser.add_argument("--plot", nargs="?", const="", help="save a WER-vs-SNR plot (path)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(_join_snrs(sys.argv[1:] if argv is None else argv))

    snrs = [float(s) for s in args.snrs.split(",") if s.strip()]
    references = read_references(args.speech_dir, args.transcripts)
    files = [r for r in list_audio(args.speech_dir) if os.path.basename(clip_id(r)) in references]
    if not files:
        raise SystemExit(f"no audio with a reference transcript in {args.speech_dir}")
    files = files[: args.max_speech] if args.max_speech else files
    speech = {
        os.path.basename(clip_id(r)): load_audio(os.path.join(args.speech_dir, r)) for r in files
    }
    noises = {
        name: [load_audio(p) for p in paths]
        for name, paths in noise_classes(args.noise_dir, args.noise_labels).items()
    }
    temperature = args.temperature
    if args.fallback_step:
        temperature = tuple(np.arange(args.temperature, 1.0 + 1e-6, args.fallback_step))
    model = load_backbone(args.model, args.device)
    report = noise_study(
        model, speech, references, noises, snrs, language=args.language, temperature=temperature
    )
    report["model"] = args.model
    write_json(report, args.out)
    print(f"clean: WER {100 * report['clean']:.1f}%")
    for snr in snrs:
        print(f"SNR {snr:+g} dB: WER {100 * report['wer'][snr_key(snr)]:.1f}%")
    if args.plot is not None:
        path = args.plot or os.path.splitext(args.out)[0] + ".png"
        plot_study(report, path, f"Noise-robust ASR ({os.path.basename(args.model)})")
        print(f"plot saved to {path}", file=sys.stderr)
    return 0
