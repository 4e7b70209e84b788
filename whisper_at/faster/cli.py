"""``whisper-at --backend faster-whisper``: whisper_at.cli's transcription loop on FW.

openai-whisper's options (as its CLI parsed them) become faster-whisper's ``transcribe``
arguments; the results go through :func:`~whisper_at.faster.to_whisper_result`, so the output
files are the ones the openai-whisper backend writes (openai-whisper's writers + ours).
"""

from typing import List, Optional

from whisper.utils import format_timestamp

from .. import outputs
from ..cli import describe_failure, error, report
from . import BatchedInferencePipeline, WhisperModel, to_whisper_result

# openai-whisper's name -> faster-whisper's
RENAMED = {"logprob_threshold": "log_prob_threshold"}
# no faster-whisper counterpart: fp16 (compute_type decides), the others are the CLI's
DROPPED = ("fp16", "verbose", "device", "model_dir")
# options openai-whisper's None means "off" for, where FW needs a number
NUMBER_DEFAULTS = {"beam_size": 1, "best_of": 1, "patience": 1.0, "length_penalty": 1.0}


def fw_options(args: dict) -> dict:
    """openai-whisper's transcribe options as faster-whisper's."""
    options = {}
    for name, value in args.items():
        if name in DROPPED:
            continue
        if name == "carry_initial_prompt":
            if value:
                raise ValueError("--carry_initial_prompt is not supported by faster-whisper")
            continue
        if name in NUMBER_DEFAULTS and value is None:
            value = NUMBER_DEFAULTS[name]
        if name == "suppress_tokens":
            value = [int(t) for t in value.split(",")] if value else []
        options[RENAMED.get(name, name)] = value
    return options


def load(model_name: str, args: dict, backend: dict):
    """The tagging FW model; None after an error line."""
    device = args["device"] if args["device"] in ("cpu", "cuda") else "auto"
    try:
        model = WhisperModel(
            model_name, device=device, compute_type=backend["compute_type"],
            cpu_threads=backend["threads"], download_root=args["model_dir"],
            at_head=backend["at_head"], at_low_compute=backend["at_low_compute"],
            at_encoder=backend["at_encoder"],
        )  # fmt: skip
    except Exception as e:
        error(f"cannot load model {model_name}: {' '.join(str(e).split()) or type(e).__name__}")
        return None
    return model


def transcribe_files(model, args: dict, backend: dict, output_dir: str, output_format: str,
                     writer_args: dict, options, time_res: float) -> int:  # fmt: skip
    """Transcribe and write every audio file; the exit status."""
    verbose = args.get("verbose")
    try:
        decode = fw_options(args)
    except ValueError as e:
        error(str(e))
        return 2
    audio_paths: List[str] = decode.pop("audio")
    batched = bool(backend["batch_size"])
    if batched:
        model = BatchedInferencePipeline(model)
        decode["batch_size"] = backend["batch_size"]
        decode.pop("condition_on_previous_text", None)  # the batched pipeline has none
        decode.pop("hallucination_silence_threshold", None)
    decode["vad_filter"] = backend["vad_filter"]
    clips = decode.get("clip_timestamps", "0")
    from ..audio_io import load_audio

    done, failed = 0, []
    for audio_path in audio_paths:
        try:
            audio = load_audio(audio_path)
            if audio.size == 0:
                raise ValueError(f"{audio_path}: audio is empty (0 samples decoded)")
            if batched:
                decode["clip_timestamps"] = batched_clips(clips, audio.shape[-1] / 16000)
            segments, info = model.transcribe(audio, at_time_res=time_res,
                                              at_fill_gaps=backend["at_fill_gaps"], **decode)
            if verbose:
                segments = _printed(segments)
            result = to_whisper_result(segments, info)
            outputs.write_outputs(result, audio_path, output_dir, output_format, writer_args,
                                  options, duration=info.duration)  # fmt: skip
            done += 1
        except Exception as e:
            error(describe_failure(audio_path, e))
            failed.append(audio_path)
    return report(done, failed)


def batched_clips(clips: str, duration: float) -> Optional[List[dict]]:
    """openai-whisper's "start,end,start,end..." seconds as the batched pipeline's clip list
    (None for "0": the whole file; an odd count ends at the end of the file)."""
    points = [float(t) for t in clips.split(",")] if clips else []
    if points in ([], [0.0]):
        return None
    if len(points) % 2:
        points.append(duration)
    return [{"start": a, "end": b} for a, b in zip(points[::2], points[1::2])]


def _printed(segments):
    for segment in segments:
        start, end = format_timestamp(segment.start), format_timestamp(segment.end)
        print(f"[{start} --> {end}] {segment.text}", flush=True)
        yield segment
