"""Transcribe and tag one file — the README's quick start as a script.

    python examples/quickstart.py examples/speech.wav        # official tiny + head (downloads)
    python examples/quickstart.py AUDIO --model /models/tiny.en.pt --at_head tiny.en_ori.pth
"""

import argparse

import whisper_at as whisper


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio")
    parser.add_argument("--model", default="tiny", help="name, .pt file, CTranslate2 or HF dir")
    parser.add_argument("--at_head", default=None, help="local head file (offline use)")
    args = parser.parse_args()

    model = whisper.load_model(args.model, at_head=args.at_head)
    result = model.transcribe(args.audio, at_time_res=10, fp16=False)
    print(result["text"].strip())
    for chunk in whisper.parse_at_label(result, top_k=3):
        tags = ", ".join(f"{label} ({logit:.1f})" for label, logit in chunk["audio tags"])
        start, end = chunk["time"]["start"], chunk["time"]["end"]
        print(f"{start:g}s-{end:g}s: {tags}")


if __name__ == "__main__":
    main()
