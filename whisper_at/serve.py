"""``whisper-at serve``: a web page to transcribe audio and see its sound events (Gradio).

Upload or record audio, choose a model and options; the page shows the timestamped transcript,
the sound-event timeline the CLI writes (``<name>.events.png``), a per-chunk tag table and the
CLI's output files to download; the Live tab captions the browser's microphone as it goes
(serve_live.py). Each model loads once per server, on first use (the ``--model`` at start-up), with
either backend (``--backend``; serve_models.py), and serves one request at a time; other requests
wait in the queue.
Needs ``pip install 'whisper-at[demo]'`` (gradio and matplotlib). See docs/serve.md.
"""

import argparse
import atexit
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import List, Optional

import torch
import whisper
from whisper.audio import SAMPLE_RATE
from whisper.tokenizer import LANGUAGES
from whisper.utils import format_timestamp

from .formats import weights
from .labels import parse_at_label, supported_languages
from .outputs import TagOptions, row_times, write_outputs
from .serve_live import build_live_tab
from .serve_models import BACKENDS, ModelCache, is_multilingual, model_label, transcribe_audio
from .serve_models import one_line as _one_line

PROG = "whisper-at serve"
DOWNLOADS = ("txt", "srt", "vtt", "sdh.srt", "tags.json")  # the files offered for download
WRITER_ARGS = {"highlight_words": False, "max_line_count": None, "max_line_width": None,
               "max_words_per_line": None}
KEEP_OUTPUTS = 3600  # seconds a request's output files are kept


def official_models() -> List[str]:
    """openai-whisper model names that have an official Whisper-AT head."""
    return [name for name in whisper.available_models() if name in weights.HEAD_URLS]


def offline_theme():
    """Gradio's default theme with the system's fonts instead of web fonts: works offline."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def read_audio(path: Optional[str], max_duration: float):
    """Decoded samples of an upload or recording; a gr.Error a person can read otherwise."""
    import gradio as gr

    from .audio_io import load_audio

    if not path:
        raise gr.Error("No audio: upload a file or record something first.")
    name = os.path.basename(path)
    try:
        audio = load_audio(path)
    except Exception as e:
        message = _one_line(e).replace(path, name)
        raise gr.Error(f"{message[:1].upper()}{message[1:]}. Upload an audio or video file "
                       "(wav, mp3, flac, ogg, m4a, ...).") from e
    if audio.size == 0:
        raise gr.Error(f"{name} is empty: no audio was recorded or decoded.")
    duration = audio.shape[-1] / SAMPLE_RATE
    if 0 < max_duration < duration:
        raise gr.Error(f"{name} is {duration:.1f} s long; this server takes audio of at most "
                       f"{max_duration:g} s.")
    return audio, duration


def transcript_text(result: dict) -> str:
    """One ``[start --> end] text`` line per segment, as ``whisper --verbose True`` prints."""
    return "\n".join(
        f"[{format_timestamp(s['start'])} --> {format_timestamp(s['end'])}] {s['text'].strip()}"
        for s in result["segments"]
    )


def tag_table(result: dict, duration: float, options: TagOptions) -> List[List[str]]:
    """Rows of [start, end, "label (logit) | ..."], one per ``audio_tag`` row."""
    if result.get("audio_tag") is None:
        return []
    parsed = parse_at_label(result, options.language, options.top_k, options.threshold)
    times = row_times(len(parsed), result["at_time_res"], duration)
    return [
        [format_timestamp(start), format_timestamp(end),
         " | ".join(f"{label} ({logit:.2f})" for label, logit in chunk["audio tags"]) or "-"]
        for (start, end), chunk in zip(times, parsed)
    ]


def gate_summary(result: dict) -> str:
    """What the speech gate did, for the info line ("" without a gate)."""
    report = result.get("at_gate")
    if report is None:
        return ""
    skipped = sum(end - start for start, end in report["skipped"])
    return (f"; speech gate {report['threshold']:g}: skipped {skipped:.1f} s in "
            f"{len(report['skipped'])} stretch(es), dropped {len(report['dropped_segments'])} "
            f"segment(s), held {len(report['moved_segments'])} to the speech")


def _prune(root: str, max_age: float = KEEP_OUTPUTS):
    """Remove the output directories of requests older than max_age seconds."""
    for entry in os.scandir(root):
        try:
            if time.time() - entry.stat().st_mtime > max_age:
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:  # removed by another request meanwhile
            pass


def make_handler(cache: ModelCache, max_duration: float, output_root: str):
    """The page's submit function (also the ``/transcribe`` API endpoint)."""
    import gradio as gr

    def run(audio, model, task, language, at_time_res, top_k, threshold, label_language,
            speech_gate=False, gate_threshold=0.5, progress=gr.Progress(track_tqdm=True)):
        progress(0, desc="decoding audio")
        samples, duration = read_audio(audio, max_duration)
        progress(0, desc=f"loading {model_label(model)}")
        try:
            loaded, lock = cache.get(model)
        except Exception as e:
            raise gr.Error(f"cannot load model {model_label(model)}: {_one_line(e)}") from e
        language = None if language == "auto" else language
        if not is_multilingual(loaded) and language not in (None, "en"):
            gr.Warning(f"{model_label(model)} is English-only: transcribing as English.")
            language = "en"
        at_time_res = round(round(float(at_time_res) / 0.4) * 0.4, 1)
        if loaded.has_at_head and at_time_res != 10:
            gr.Warning("The tagging heads were trained on 10 s chunks; tags at "
                       f"{at_time_res:g} s may be less accurate.")
        options = TagOptions(top_k=int(top_k), threshold=float(threshold),
                             language=label_language)
        gate = {}
        if speech_gate and loaded.has_at_head:
            gate = {"at_speech_gate": float(gate_threshold)}
        elif speech_gate:
            gr.Warning(f"{model_label(model)} has no audio-tagging head: no speech gate.")
        progress(0, desc=f"transcribing with {model_label(model)}")
        try:
            with lock:
                result = transcribe_audio(loaded, samples, at_time_res, task, language, gate)
        except Exception as e:
            raise gr.Error(f"transcription failed: {_one_line(e)}") from e
        progress(1, desc="writing outputs")
        _prune(output_root)
        out_dir = tempfile.mkdtemp(dir=output_root)
        name = os.path.basename(audio)
        written = write_outputs(result, name, out_dir, "all", WRITER_ARGS, options, duration)
        base = os.path.join(out_dir, os.path.splitext(name)[0])
        plot = base + ".events.png"
        files = [p for p in (f"{base}.{kind}" for kind in DOWNLOADS) if p in written]
        if result.get("audio_tag") is None:
            gr.Warning(f"{model_label(model)} has no audio-tagging head: transcript only.")
        info = (f"**{name}**: {duration:.1f} s, language "
                f"{LANGUAGES.get(result['language'], result['language']).title()}, model "
                f"{model_label(model)}{gate_summary(result)}")
        return (info, transcript_text(result), plot if plot in written else None,
                tag_table(result, duration, options), files)

    return run


def build_demo(
    model: str = "small",
    at_head: Optional[str] = None,
    models: Optional[List[str]] = None,
    max_duration: float = 3600,
    device: Optional[str] = None,
    download_root: Optional[str] = None,
    cache: Optional[ModelCache] = None,
):
    """The page as a ``gr.Blocks``: ``model`` (with ``at_head``, if given) is the default
    choice, then ``models`` (default: the official models with a Whisper-AT head)."""
    import gradio as gr

    choices = [model] + [m for m in (official_models() if models is None else models)
                         if m != model]
    cache = cache or ModelCache({model: at_head} if at_head else {}, device, download_root)
    output_root = tempfile.mkdtemp(prefix="whisper-at-serve-")
    atexit.register(shutil.rmtree, output_root, ignore_errors=True)
    languages = [("auto-detect", "auto")] + sorted(
        (name.title(), code) for code, name in LANGUAGES.items())
    label_languages = [("as detected in speech", "follow_asr")] + [
        (LANGUAGES.get(code, code).title(), code) for code in supported_languages()]

    with gr.Blocks(title="Whisper-AT", analytics_enabled=False,
                   delete_cache=(KEEP_OUTPUTS, KEEP_OUTPUTS)) as demo:
        gr.Markdown("## Whisper-AT: speech transcription and sound events\n"
                    "Upload or record audio; Whisper transcribes it and tags the AudioSet sound "
                    "events heard in each chunk.")
        with gr.Tab("File", id="file"):
            with gr.Row():
                with gr.Column(scale=1):
                    audio = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                     label="Audio")
                    model_box = gr.Dropdown([(model_label(m), m) for m in choices], value=model,
                                            label="Model")
                    task = gr.Radio(["transcribe", "translate"], value="transcribe", label="Task")
                    language = gr.Dropdown(languages, value="auto", label="Spoken language")
                    with gr.Accordion("Sound-event tags", open=True):
                        time_res = gr.Slider(0.4, 30, value=10, step=0.4,
                                             label="Seconds per tag row (at_time_res)")
                        top_k = gr.Slider(1, 20, value=5, step=1, label="Top-k tags per row")
                        threshold = gr.Number(-1, label="Logit threshold (-1: p > 0.27)")
                        label_language = gr.Dropdown(label_languages, value="follow_asr",
                                                     label="Label language")
                    with gr.Accordion("Speech gate", open=False):
                        speech_gate = gr.Checkbox(False, label="Skip non-speech (speech gate)",
                                                  elem_id="speech-gate")
                        gate_threshold = gr.Slider(0, 1, value=0.5, step=0.05,
                                                   label="Speech probability threshold")
                    submit = gr.Button("Transcribe", variant="primary")
                with gr.Column(scale=2):
                    info = gr.Markdown()
                    transcript = gr.Textbox(label="Transcript", lines=8, max_lines=20)
                    table = gr.Dataframe(headers=["start", "end", "tags (logit)"],
                                         label="Tags per chunk", interactive=False, wrap=True,
                                         elem_id="tag-table",
                                         column_widths=["15%", "15%", "70%"])
                    files = gr.File(label="Downloads", file_count="multiple", interactive=False)
            plot = gr.Image(label="Sound-event timeline", type="filepath", interactive=False)
            submit.click(
                make_handler(cache, max_duration, output_root),
                [audio, model_box, task, language, time_res, top_k, threshold, label_language,
                 speech_gate, gate_threshold],
                [info, transcript, plot, table, files],
                api_name="transcribe",
                concurrency_limit=len(choices),  # the models' own locks allow one request each
            )
        with gr.Tab("Live", id="live"):
            build_live_tab(cache, choices, model)
    return demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="A web page (Gradio) to transcribe audio and see its sound events.")
    add = parser.add_argument
    add("--model", default="small", metavar="NAME_OR_PATH",
        help="model offered first, loaded at start-up: a name or a checkpoint (default: small)")
    add("--at_head", default=None, metavar="PATH",
        help="Whisper-AT head file for --model (default: its official head, downloaded)")
    add("--at_head_mirror", default=None, metavar="URL_OR_DIR",
        help="where official heads are looked for first: a base URL or a directory holding "
             "<name>_ori.pth (default: $WHISPER_AT_HEAD_MIRROR)")
    add("--models", nargs="*", default=None, metavar="NAME_OR_PATH",
        help="other models to offer, loaded on first use (default: the official models with a "
             "head; the option alone: --model only)")
    add("--host", default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1; 0.0.0.0: all)")
    add("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    add("--max_duration", type=float, default=3600, metavar="SECONDS",
        help="longest audio accepted (default: 3600; 0: no limit)")
    add("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add("--backend", choices=BACKENDS, default="openai-whisper",
        help="ASR engine of every model: openai-whisper, or faster-whisper (CTranslate2; "
        "models: faster-whisper names or CTranslate2 directories)")
    add("--compute_type", default="default",
        help="faster-whisper: CTranslate2 compute type (int8, float16, float32, ...)")
    add("--model_dir", default=None, metavar="DIR",
        help="where official models and heads are downloaded (default: ~/.cache/whisper)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the server until interrupted; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(f"{PROG}: error: needs gradio: pip install 'whisper-at[demo]'", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.backend == "openai-whisper" and args.compute_type != "default":
        print(f"{PROG}: error: --compute_type needs --backend faster-whisper", file=sys.stderr)
        return 2
    cache = ModelCache({args.model: args.at_head} if args.at_head else {}, device, args.model_dir,
                       args.at_head_mirror, args.backend, args.compute_type)
    try:
        cache.get(args.model)
    except Exception as e:
        print(f"{PROG}: error: cannot load model {args.model}: {_one_line(e)}", file=sys.stderr)
        return 2
    demo = build_demo(args.model, args.at_head, args.models, args.max_duration, device,
                      args.model_dir, cache)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that atexit cleans up
    demo.queue().launch(server_name=args.host, server_port=args.port, theme=offline_theme(),
                        show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
