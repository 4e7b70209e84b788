"""``whisper-at --backend faster-whisper`` (and ``whisper-at batch --backend faster-whisper``).

openai-whisper's options (as its CLI parsed them) become faster-whisper's ``transcribe``
arguments; results go through :func:`~whisper_at.faster.to_whisper_result`, so the output files
and batch records are the ones the openai-whisper backend makes (openai-whisper's writers +
ours).
"""

from typing import List, Optional

import ctranslate2
import numpy as np
from whisper.audio import SAMPLE_RATE
from whisper.tokenizer import TO_LANGUAGE_CODE
from whisper.utils import format_timestamp

from .. import outputs
from ..options import clip_points, describe_failure, error, print_events, report
from . import BatchedInferencePipeline, WhisperModel, to_whisper_result

# openai-whisper's name -> faster-whisper's
RENAMED = {"logprob_threshold": "log_prob_threshold"}
# no faster-whisper counterpart: fp16 (compute_type decides), carry_initial_prompt (False here:
# options.backend_options refuses True), the others are the CLI's
DROPPED = ("fp16", "carry_initial_prompt", "verbose", "device", "model_dir", "audio")
# options for which openai-whisper's None means "off", where FW needs a number
NUMBER_DEFAULTS = {"beam_size": 1, "best_of": 1, "patience": 1.0, "length_penalty": 1.0}
CLIP_SECONDS = 30.0  # the batched pipeline decodes the first 30 s of each clip only
CUT_SEARCH = 8.0  # a longer clip is cut at the quietest moment of the last 8 s of each piece
CUT_FRAME = 1600  # samples (0.1 s) per energy frame; energy is compared over 3 frames (0.3 s)


def fw_options(args: dict, backend: dict) -> dict:
    """openai-whisper's transcribe options (and the backend's) as faster-whisper's."""
    options = {}
    for name, value in args.items():
        if name in DROPPED:
            continue
        if name in NUMBER_DEFAULTS and value is None:
            value = NUMBER_DEFAULTS[name]
        if name == "suppress_tokens":
            value = [int(t) for t in value.split(",")] if value else []
        if name == "language" and value:  # openai-whisper takes names too ("French")
            value = TO_LANGUAGE_CODE.get(value.lower(), value.lower())
        options[RENAMED.get(name, name)] = value
    vad_filter = backend.get("vad_filter")
    if vad_filter is None:  # FW's defaults: off, but on for the batched pipeline given no clips
        vad_filter = bool(backend.get("batch_size")) and not clip_points(
            options.get("clip_timestamps", "0"))  # fmt: skip
    options["vad_filter"] = vad_filter
    options["at_fill_gaps"] = backend.get("at_fill_gaps", False)
    if backend.get("batch_size"):
        options["batch_size"] = backend["batch_size"]
    return options


def load_model(name: str, device: Optional[str], model_dir: Optional[str], backend: dict):
    """The tagging FW model the options describe (errors raise)."""
    device, _, index = (device or "auto").partition(":")
    return WhisperModel(
        name, device=device if device in ("cpu", "cuda") else "auto",
        device_index=int(index) if index.isdigit() else 0,
        compute_type=backend.get("compute_type", "default"),
        cpu_threads=backend.get("threads") or 0, download_root=model_dir,
        at_head=backend.get("at_head"), at_low_compute=backend.get("at_low_compute", False),
        at_encoder=backend.get("at_encoder", "one_pass"),
        at_head_mirror=backend.get("at_head_mirror"), at_download_root=model_dir,
        at_compute_type=backend.get("at_compute_type", "auto"),
    )  # fmt: skip


def batched_clips(clips: str, audio: np.ndarray) -> Optional[List[dict]]:
    """openai-whisper's "start,end,start,end..." seconds as the batched pipeline's clip list
    (None for "0": the whole file; an odd count ends at the end of the file; clips end there at
    the latest, as openai-whisper's do). A clip longer
    than 30 s is cut into pieces of 30 s at most (the pipeline decodes 30 s of each clip),
    each cut in the middle of the last quiet stretch of its last 8 s, so words are not split."""
    points = clip_points(clips)
    if not points:
        return None
    duration = audio.shape[-1] / SAMPLE_RATE
    if len(points) % 2:
        points.append(duration)
    pieces = []
    for start, end in zip(points[::2], points[1::2]):
        end = min(end, duration)
        while end - start > CLIP_SECONDS:
            cut = quietest(audio, start + CLIP_SECONDS - CUT_SEARCH, start + CLIP_SECONDS)
            pieces.append({"start": start, "end": cut})
            start = cut
        if end > start:
            pieces.append({"start": start, "end": end})
    return pieces


def quietest(audio: np.ndarray, lo: float, hi: float) -> float:
    """Seconds: the middle of the latest quietest stretch of [lo, hi] in 16 kHz ``audio`` (0.3 s
    windows within 1.5x the quietest one's energy); ``hi`` when no 0.3 s fits (end of file)."""
    first = int(lo * SAMPLE_RATE) // CUT_FRAME
    frames = audio[first * CUT_FRAME: int(hi * SAMPLE_RATE) // CUT_FRAME * CUT_FRAME]
    energy = np.square(frames.reshape(-1, CUT_FRAME), dtype=np.float64).mean(axis=1)
    if energy.size < 3:
        return hi
    smooth = np.convolve(energy, np.ones(3), mode="valid")  # window k: frames k .. k+2
    quiet = smooth <= smooth.min() * 1.5 + 1e-12
    end = begin = int(np.flatnonzero(quiet)[-1])
    while begin > 0 and quiet[begin - 1]:
        begin -= 1
    return (first + (begin + end) / 2 + 1.5) * CUT_FRAME / SAMPLE_RATE


def transcribe(model, audio, options: dict, at_time_res: float, seed: Optional[int] = None,
               verbose: bool = False) -> dict:  # fmt: skip
    """openai-whisper's result dict (with tags) of one waveform; ``options`` from
    :func:`fw_options` (``batch_size``: FW's batched pipeline)."""
    options = dict(options)
    if "batch_size" in options:
        clips = batched_clips(options.get("clip_timestamps", "0"), audio)
        if clips == []:  # every clip starts after the end: nothing to batch, nothing to decode
            del options["batch_size"]
        else:
            model = BatchedInferencePipeline(model)
            options["clip_timestamps"] = clips
    if seed is not None:
        ctranslate2.set_random_seed(seed)
    segments, info = model.transcribe(audio, at_time_res=at_time_res, **options)
    return to_whisper_result(_printed(segments) if verbose else segments, info)


def transcribe_files(model, args: dict, backend: dict, output_dir: str, output_format: str,
                     writer_args: dict, options, time_res: float) -> int:  # fmt: skip
    """``whisper-at --backend faster-whisper``: transcribe and write every file; exit status."""
    verbose, audio_paths = args.get("verbose"), args["audio"]
    decode = fw_options(args, backend)
    from ..audio_io import load_audio

    done, failed = 0, []
    for audio_path in audio_paths:
        try:
            audio = load_audio(audio_path)
            if audio.size == 0:
                raise ValueError(f"{audio_path}: audio is empty (0 samples decoded)")
            result = transcribe(model, audio, decode, time_res, verbose=verbose)
            if verbose:
                print_events(result, audio.shape[-1] / SAMPLE_RATE, options)
            outputs.write_outputs(result, audio_path, output_dir, output_format, writer_args,
                                  options, duration=audio.shape[-1] / SAMPLE_RATE)  # fmt: skip
            done += 1
        except Exception as e:
            error(describe_failure(audio_path, e))
            failed.append(audio_path)
    return report(done, failed)


def _printed(segments):
    for segment in segments:
        start, end = format_timestamp(segment.start), format_timestamp(segment.end)
        print(f"[{start} --> {end}] {segment.text}", flush=True)
        yield segment
