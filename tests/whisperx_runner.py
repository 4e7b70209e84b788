"""Runs whisperX with and without whisper-at's tags; run by tests/test_whisperx.py with the
Python of the whisperX environment that tests/install.sh builds (.venv-whisperx: whisperX pins
an older torch than the main test environment).

    python tests/whisperx_runner.py CT2_DIR HEAD AUDIO OUT_DIR

Writes OUT_DIR/results.json (the results, tags as lists) and OUT_DIR/<name>.npy (tag arrays).
Everything offline: the model is a local CTranslate2 directory, and whisperX's pyannote VAD
model ships inside its package.
"""

import json
import os
import sys

import numpy as np
import torch


def main(ct2_dir: str, head: str, audio_path: str, out_dir: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import whisperx
    from whisperx.diarize import Segment as SegmentX
    from whisperx.vads.vad import Vad

    import whisper_at
    from whisper_at.integrations.whisperx import enable_tagging

    torch.set_num_threads(2)
    audio = whisperx.load_audio(audio_path)
    results = {"torch": torch.__version__, "whisperx_duration": len(audio) / 16000}

    def load(**kwargs):
        return whisperx.load_model(ct2_dir, "cpu", compute_type="int8", language="en",
                                   vad_method="pyannote", threads=2, **kwargs)  # fmt: skip

    def keep(name, result):
        entry = {"segments": [{k: v for k, v in s.items()} for s in result["segments"]],
                 "language": result["language"], "keys": sorted(result)}  # fmt: skip
        if "audio_tag" in result:
            np.save(os.path.join(out_dir, f"{name}.npy"), result["audio_tag"].numpy())
            entry["at_time_res"] = result["at_time_res"]
            entry["audio_tag_type"] = type(result["audio_tag"]).__name__
        if "at_gate" in result:
            entry["at_gate"] = result["at_gate"]
        results[name] = entry

    pipeline = load()
    keep("plain", pipeline.transcribe(audio, batch_size=4))
    enable_tagging(pipeline, ct2_dir, at_head=head)
    keep("tagged", pipeline.transcribe(audio_path, batch_size=4))
    keep("single", pipeline.transcribe(audio, batch_size=1))
    keep("filled", pipeline.transcribe(audio, batch_size=4, at_fill_gaps=True))
    keep("gated", pipeline.transcribe(audio, batch_size=4, at_speech_gate=0.5,
                                      at_segment_info=True))  # fmt: skip
    try:
        enable_tagging(pipeline, ct2_dir, at_head=head)
    except ValueError as e:
        results["again"] = str(e)
    try:
        enable_tagging(pipeline.model, ct2_dir, at_head=head)
    except TypeError as e:
        results["not_a_pipeline"] = str(e)

    # whisperX's diarization step on the tagged result: speakers assigned, tags kept
    tagged = pipeline.transcribe(audio, batch_size=4)
    import pandas as pd

    half = len(audio) / 16000 / 2
    turns = pd.DataFrame({"start": [0.0, half], "end": [half, 2 * half],
                          "speaker": ["SPEAKER_00", "SPEAKER_01"]})  # fmt: skip
    diarized = whisperx.assign_word_speakers(turns, tagged)
    results["diarized"] = {"speakers": [s.get("speaker") for s in diarized["segments"]],
                           "has_tags": "audio_tag" in diarized}  # fmt: skip

    # windows placed exactly on whisper_at.tag's grid (0, 30, 60 s ...): a VAD that keeps
    # everything in 30 s chunks
    class Everything(Vad):
        def __init__(self):
            super().__init__(0.5)

        @staticmethod
        def preprocess_audio(audio):
            return torch.from_numpy(audio).unsqueeze(0)

        def __call__(self, audio, **kwargs):
            total = audio["waveform"].shape[-1] / 16000
            edges = list(np.arange(0, total, 30.0)) + [total]
            return [SegmentX(a, b, "UNKNOWN") for a, b in zip(edges, edges[1:])]

    grid = enable_tagging(load(vad_model=Everything()), ct2_dir, at_head=head)
    keep("grid", grid.transcribe(audio, batch_size=4))
    keep("grid_gated", grid.transcribe(audio, batch_size=4, at_speech_gate=0.5))

    results["version"] = whisper_at.__version__
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:])
