"""Speech gate sweep: speech lost, words invented over non-speech, WER, boundary timing and time.

Files (benchmarks/gate_sweep.py): speech A, then ~40 s of non-speech (440 Hz tone, white
noise, plucked-string music or digital silence), then speech B; A ends and B starts e = r s
into a 10 s tag row, e in {0, 1, 2, 5, 8, 9.5}. Speech: espeak-ng (en-us, en-gb+f2; sentences
the speech head never heard) and recorded human speech (five LibriVox utterances shipped as
test data in pocketsphinx's sdist). Head: the TL-TR head for tiny.en that the test suite trains
(testkit.speech_head), so tiny.en only.

Backends and rows: openai-whisper's decoding through whisper_at (no gate; ``at_speech_gate``
P) and the faster-whisper backend, whisper_at.faster one pass (no gate; AT gate P; FW's own
Silero ``vad_filter``; both). ``--margin S`` passes ``at_gate_margin=S`` to the gated rows.
Targets of every gated cell (file x backend x row), against the same backend's ungated row
("vad_filter" for "vad_filter + AT gate"): WER <= ungated + 0.01 and <= 1.5 x the backend's
ungated WER on the speech alone (A + B without the non-speech); no speech words lost to the
gate; no words over the non-speech; A's last segment ends and B's first starts within 1 s of
the true speech times. Cells that miss are listed after "MISSED:".
"""

import argparse
import importlib.util
import inspect
import sys
import time
from collections import defaultdict

import common
import gate_sweep
import testkit


def _decoder_counter(calls):
    return lambda *_: calls.append(1)


class WhisperBackend:
    """openai-whisper's transcribe through whisper_at; decoder calls = text decoder forward
    passes."""

    name = "openai-whisper"

    def __init__(self, head, thresholds, margin):
        import whisper_at

        self.model = whisper_at.load_model(str(common.checkpoint("tiny")), device="cpu",
                                           at_head=str(head)).eval()
        self.rows = {"no gate": {}}
        self.rows.update({f"AT gate {p:g}": {"at_speech_gate": p, **margin} for p in thresholds})
        self.base = {row: "no gate" for row in self.rows if row != "no gate"}

    def run(self, audio, options):
        import torch

        import whisper_at

        calls = []
        handle = self.model.decoder.register_forward_hook(_decoder_counter(calls))
        try:
            torch.manual_seed(0)
            result = whisper_at.transcribe(self.model, audio, language="en", fp16=False,
                                           **options)
        finally:
            handle.remove()
        segments = [(s["start"], s["end"], s["text"]) for s in result["segments"]]
        return segments, result.get("at_gate") or {}, len(calls)


class FasterBackend:
    """whisper_at.faster.WhisperModel (one pass) on the CTranslate2 tiny.en; decoder calls =
    windows that reach faster-whisper's generate_with_fallback (a window the gate skips does
    not)."""

    name = "faster-whisper"

    def __init__(self, head, thresholds, margin, cpu_threads=0):
        from whisper_at.faster import WhisperModel

        self.model = WhisperModel(str(testkit.ct2_dir(common.cache_dir(), "tiny.en")),
                                  device="cpu", cpu_threads=cpu_threads, at_head=str(head))
        self.rows = {"no gate": {}}
        self.rows.update({f"AT gate {p:g}": {"at_speech_gate": p, **margin} for p in thresholds})
        self.rows["vad_filter"] = {"vad_filter": True}
        self.rows.update({f"vad_filter + AT gate {p:g}": {"vad_filter": True, "at_speech_gate": p,
                                                          **margin} for p in thresholds})
        self.base = {row: "vad_filter" if row.startswith("vad_filter +") else "no gate"
                     for row in self.rows if row != "no gate"}

    def run(self, audio, options):
        import ctranslate2
        import faster_whisper
        import torch

        calls, original = [], faster_whisper.WhisperModel.generate_with_fallback

        def counting(*args, **kwargs):
            calls.append(1)
            return original(*args, **kwargs)

        faster_whisper.WhisperModel.generate_with_fallback = counting
        try:
            torch.manual_seed(0)
            ctranslate2.set_random_seed(0)
            segments, info = self.model.transcribe(audio, language="en", **options)
            segments = [(s.start, s.end, s.text) for s in segments]
        finally:
            faster_whisper.WhisperModel.generate_with_fallback = original
        return segments, getattr(info, "at_gate", None) or {}, len(calls)


def margin_options(margin, functions) -> dict:
    """{"at_gate_margin": margin} when given and every transcribe function takes it."""
    if margin is None:
        return {}
    for fn in functions:
        if "at_gate_margin" not in inspect.signature(fn).parameters:
            sys.exit(f"--margin: {fn.__module__}.{fn.__qualname__} takes no at_gate_margin")
    return {"at_gate_margin": margin}


def _runner(backend, audio, options, row, results):
    def go():
        results[row] = backend.run(audio, options)

    return go


def measure(backend, files, alone, repeats, alone_rows):
    """cells[(backend, row, file)] and the speech-alone scores alone_cells[(backend, row,
    source)] of the rows ``alone_rows`` (None: all)."""
    cells, alone_cells = {}, {}
    for source, (path, truth) in alone.items():
        audio = common.load_wav(path)
        for row, options in backend.rows.items():
            if alone_rows is not None and row not in alone_rows:
                continue
            segments, _, _ = backend.run(audio, options)
            alone_cells[(backend.name, row, source)] = gate_sweep.score(segments, truth)
    for i, (name, (path, truth)) in enumerate(files.items()):
        started = time.perf_counter()
        audio, results = common.load_wav(path), {}

        times = common.alternate({r: _runner(backend, audio, o, r, results)
                                  for r, o in backend.rows.items()}, repeats)
        for row in backend.rows:
            segments, gate, calls = results[row]
            cell = gate_sweep.score(segments, truth)
            cell.update(wall=common.median(times[row]), decoder=calls,
                        skipped=sum(b - a for a, b in gate.get("skipped", [])))
            cells[(backend.name, row, name)] = cell
        print(f"# {backend.name} {i + 1}/{len(files)} {name}: "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return cells, alone_cells


def _pooled(cells):
    spoken = sum(c["spoken"] for c in cells)
    return f"{sum(c['edits'] for c in cells) / spoken:.3f}" if spoken else "-"


def _err(value):
    return "none" if value is None else f"{value:+.2f}"


def _max_abs(values):
    known = [abs(v) for v in values if v is not None]
    text = f"{max(known):.2f}" if known else "-"
    none = len(values) - len(known)
    return text + (f" ({none} none)" if none else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, repeats=3, models=("tiny",))
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5])
    parser.add_argument("--margin", type=float, default=None,
                        help="at_gate_margin (s) for the gated rows (default: not passed)")
    parser.add_argument("--sources", nargs="+", default=gate_sweep.SOURCES,
                        choices=gate_sweep.SOURCES)
    parser.add_argument("--kinds", nargs="+", default=gate_sweep.KINDS, choices=gate_sweep.KINDS)
    parser.add_argument("--offsets", type=float, nargs="+", default=gate_sweep.OFFSETS)
    parser.add_argument("--backends", nargs="+", default=["openai-whisper", "faster-whisper"],
                        choices=["openai-whisper", "faster-whisper"])
    parser.add_argument("--no_faster", action="store_true", help="openai-whisper backend only")
    args = common.parse_args(parser)
    if args.models != ["tiny"]:
        parser.error("the speech head is trained for tiny.en: --models tiny")
    if args.quick:  # two files, one backend
        args.sources, args.kinds, args.offsets = ["en-us"], ["tone"], [1.0, 9.5]
        args.backends = ["openai-whisper"]
    if args.no_faster or not importlib.util.find_spec("faster_whisper"):
        args.backends = [b for b in args.backends if b != "faster-whisper"]
    started = time.perf_counter()
    print(f"# bench_gate (sweep); {common.machine()}")
    import whisper_at

    print(f"# whisper_at: {whisper_at.__file__}")
    print(f"# repeats {args.repeats}; thresholds {args.thresholds}; margin "
          f"{'not passed' if args.margin is None else args.margin}; audio recipe "
          f"{gate_sweep.recipe_key()}")
    files = gate_sweep.sweep(args.sources, args.kinds, args.offsets)
    alone = {s: gate_sweep.alone_file(s) for s in args.sources}
    print("\n## files (true speech times)\n")
    for name, (_, truth) in files.items():
        print(f"- {name}: {gate_sweep.layout(truth)}")
    for source, (_, truth) in alone.items():
        print(f"- {source} speech alone: {truth['seconds']:.1f} s, {len(truth['pieces'])} pieces")

    head = testkit.speech_head(common.cache_dir(), common.checkpoint("tiny"))
    cells, alone_cells, backends = {}, {}, []
    for name in args.backends:
        if name == "openai-whisper":
            margin = margin_options(args.margin, [whisper_at.transcribe])
            backend = WhisperBackend(head, args.thresholds, margin)
        else:
            from whisper_at.faster import WhisperModel

            margin = margin_options(args.margin, [WhisperModel.transcribe])
            backend = FasterBackend(head, args.thresholds, margin, args.threads)
        alone_rows = ["no gate"] if args.quick else None  # the targets' baseline only
        more, more_alone = measure(backend, files, alone, args.repeats, alone_rows)
        cells.update(more)
        alone_cells.update(more_alone)
        backends.append(backend)
        del backend

    # targets: every gated row against its ungated row; vad_filter (FW's Silero, no AT gate)
    # is checked too, as a reference, and kept out of the MISSED list
    missed = {}
    for b in backends:
        for row, base in b.base.items():
            for name, (_, truth) in files.items():
                alone_wer = alone_cells[(b.name, "no gate", truth["source"])]["wer"]
                missed[(b.name, row, name)] = gate_sweep.misses(
                    cells[(b.name, row, name)], cells[(b.name, base, name)], alone_wer)

    print("\n## per file (errors in s: A's last segment end - A's end, B's first segment "
          "start - B's start; wall: median)\n")
    table = []
    for name in files:
        for b in backends:
            for row in b.rows:
                c, base = cells[(b.name, row, name)], b.base.get(row)
                lost_gate = max(0, c["lost"] - cells[(b.name, base, name)]["lost"]) if base else "-"
                miss = missed.get((b.name, row, name))
                table.append(["tiny", name, b.name, row, f"{c['wer']:.3f}",
                              f"{c['lost']}/{c['spoken']}", lost_gate, c["in_non_speech"],
                              _err(c["a_end_err"]), _err(c["b_start_err"]), c["decoder"],
                              f"{c['skipped']:.1f}", c["wall"],
                              "-" if miss is None else len(miss)])
    print(common.table(["model", "file", "backend", "row", "WER", "words lost", "lost to gate",
                        "words over non-speech", "A end err", "B start err", "decoder calls",
                        "skipped s", "wall s", "targets missed"], table))

    print("\n## summary over the files (WER pooled: edits / spoken words; speech-alone WER: "
          "the same row on A + B alone)\n")
    table, walls = [], {}
    for b in backends:
        for row in b.rows:
            mine = [cells[(b.name, row, n)] for n in files]
            alone_scores = [alone_cells[(b.name, row, s)] for s in args.sources
                          if (b.name, row, s) in alone_cells]
            spoken = sum(c["spoken"] for c in mine)
            walls[(b.name, row)] = sum(c["wall"] for c in mine)
            base = b.base.get(row)
            lost_gate = sum(max(0, c["lost"] - cells[(b.name, base, n)]["lost"])
                            for c, n in zip(mine, files)) if base else "-"
            checked = [missed[(b.name, row, n)] for n in files if (b.name, row, n) in missed]
            table.append([
                "tiny", b.name, row, len(mine), f"{sum(c['edits'] for c in mine) / spoken:.3f}",
                _pooled(alone_scores),
                f"{sum(c['lost'] for c in mine)}/{spoken}", lost_gate,
                sum(c["in_non_speech"] for c in mine), _max_abs([c["a_end_err"] for c in mine]),
                _max_abs([c["b_start_err"] for c in mine]), sum(c["decoder"] for c in mine),
                f"{sum(c['skipped'] for c in mine):.1f}", walls[(b.name, row)],
                f"{sum(map(bool, checked))}/{len(checked)}" if checked else "-"])
    print(common.table(["model", "backend", "row", "files", "WER", "speech-alone WER",
                        "words lost", "lost to gate", "words over non-speech",
                        "max |A end err|", "max |B start err|", "decoder calls", "skipped s",
                        "wall s (sum)", "cells missing a target"], table))

    groups = {"offset e = r": lambda t: f"{t['e']:g}", "non-speech": lambda t: t["kind"],
              "speech": lambda t: t["source"]}
    targets = {"WER vs ungated": "ungated", "WER vs alone": "speech-alone",
               "lost": "lost to the gate", "over non-speech": "over non-speech",
               "boundary": " s off", "no segment": "no segment"}
    print("\n## cells missing a target, by offset, kind, speech and target (vad_filter: "
          "reference, FW's Silero without the AT gate)\n")
    for title, key in groups.items():
        values = list(dict.fromkeys(key(t) for _, t in files.values()))
        table = []
        for b in backends:
            for row in [r for r in b.rows if any(k[:2] == (b.name, r) for k in missed)]:
                counts = defaultdict(lambda: [0, 0])
                for name, (_, truth) in files.items():
                    count = counts[key(truth)]
                    count[0] += bool(missed[(b.name, row, name)])
                    count[1] += 1
                table.append(["tiny", b.name, row] + [f"{counts[v][0]}/{counts[v][1]}"
                                                       for v in values])
        print(common.table(["model", "backend", "row"] + [f"{title} {v}" for v in values],
                           table) + "\n")
    table = []
    for b in backends:
        for row in [r for r in b.rows if any(k[:2] == (b.name, r) for k in missed)]:
            lists = [missed[(b.name, row, n)] for n in files]
            table.append(["tiny", b.name, row] + [sum(any(text in m for m in miss)
                                                      for miss in lists)
                                                  for text in targets.values()])
    print(common.table(["model", "backend", "row"] + list(targets), table))

    print("\nMISSED:")
    gated = [(k, v) for k, v in missed.items() if v and k[1] != "vad_filter"]
    for (backend, row, name), miss in gated:
        print(f"- {backend} | {row} | {name}: {'; '.join(miss)}")
    if not gated:
        print("- none")
    print(f"\n# run time {time.perf_counter() - started:.0f} s")

    summary = []
    for b in backends:
        for row, base in b.base.items():
            if "AT gate" not in row:
                continue
            mine = [cells[(b.name, row, n)] for n in files]
            ref = [cells[(b.name, base, n)] for n in files]
            spoken = sum(c["spoken"] for c in mine)
            summary.append(
                f"{b.name} {row}: wall x{walls[(b.name, row)] / walls[(b.name, base)]:.3f} of "
                f"{base}, WER {sum(c['edits'] for c in ref) / spoken:.3f} -> "
                f"{sum(c['edits'] for c in mine) / spoken:.3f}, words over non-speech "
                f"{sum(c['in_non_speech'] for c in ref)} -> "
                f"{sum(c['in_non_speech'] for c in mine)}, missed "
                f"{sum(bool(missed[(b.name, row, n)]) for n in files)}/{len(files)} cells")
    print(f"\nSUMMARY bench_gate: tiny {'; '.join(summary)}")


if __name__ == "__main__":
    main()
