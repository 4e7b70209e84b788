"""Transcribe and tag one file with the faster-whisper backend — docs/faster.md as a script.

    python examples/faster_quickstart.py examples/speech.wav          # FW's tiny.en + head
    python examples/faster_quickstart.py AUDIO --model /models/faster-whisper-tiny.en \\
        --at_head tiny.en_ori.pth --vad_filter
"""

import argparse

import whisper_at
from whisper_at.faster import WhisperModel


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio")
    parser.add_argument("--model", default="tiny.en", help="FW model name or CTranslate2 dir")
    parser.add_argument("--at_head", default=None, help="local head file (offline use)")
    parser.add_argument("--vad_filter", action="store_true", help="FW's Silero VAD")
    args = parser.parse_args()

    model = WhisperModel(args.model, device="cpu", compute_type="int8", at_head=args.at_head)
    segments, info = model.transcribe(args.audio, vad_filter=args.vad_filter, at_time_res=10)
    for segment in segments:  # lazy, as in faster-whisper: decoding happens here
        print(f"[{segment.start:.1f}s -> {segment.end:.1f}s]{segment.text}")
    for chunk in whisper_at.parse_at_label(info, top_k=3):  # tags: once segments are consumed
        tags = ", ".join(f"{label} ({logit:.1f})" for label, logit in chunk["audio tags"])
        print(f"{chunk['time']['start']:g}s-{chunk['time']['end']:g}s: {tags}")


if __name__ == "__main__":
    main()
