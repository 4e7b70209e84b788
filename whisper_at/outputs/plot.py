"""``<name>.events.png``: transcript segments and the strongest sound events over time.

Needs matplotlib (``pip install 'whisper-at[plot]'``); drawn with its object API on an Agg
canvas, so pyplot's global state and the user's backend are left alone.
"""

import os
from typing import List

import torch

from ..labels import label_names
from .events import event_classes

MAX_ROWS = 10  # sound classes shown
WIDTH = 12.0  # inches
DPI = 110


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _classes(result: dict, events: List[dict], speech_events: bool) -> List[int]:
    """The classes to show: those with events, strongest first, else the highest logits."""
    peaks = {}
    for event in events:
        peaks[event["index"]] = max(peaks.get(event["index"], -float("inf")), event["peak"])
    if peaks:
        return sorted(peaks, key=lambda c: -peaks[c])[:MAX_ROWS]
    include = event_classes(speech_events)
    best = torch.nan_to_num(result["audio_tag"][:, include].float(), nan=-float("inf"))
    best = best.amax(dim=0) if best.numel() else torch.zeros(len(include))
    return [include[i] for i in best.argsort(descending=True)[: min(5, MAX_ROWS)].tolist()]


def _fit(text: str, seconds: float, seconds_per_char: float) -> str:
    room = int(seconds / seconds_per_char)
    if len(text) <= room:
        return text
    return text[: max(room - 1, 0)] + "…" if room > 1 else ""


def plot_timeline(path: str, result: dict, events: List[dict], duration: float, options, title):
    """Draw the transcript (top) and a heat map of the chosen classes' probabilities with
    their event intervals outlined (bottom); saves a PNG at path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    classes = _classes(result, events, options.speech_events)
    res = result["at_time_res"]
    logits = result["audio_tag"].float()
    n_rows = logits.shape[0]
    end = max(duration, 1e-3)
    height = 1.9 + 0.32 * max(len(classes), 2)
    fig = Figure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, height_ratios=[0.9, 0.32 * max(len(classes), 2)],
                            width_ratios=[60, 1])
    speech_ax = fig.add_subplot(grid[0, 0])
    sound_ax = fig.add_subplot(grid[1, 0], sharex=speech_ax)
    bar_ax = fig.add_subplot(grid[1, 1])
    fig.suptitle(f"{os.path.basename(title)}: transcript and sound events", fontsize=11)

    seconds_per_char = end / (WIDTH * 0.85 * 72 / 8 / 0.62)  # 8 pt text, ~0.62 em per char
    for i, segment in enumerate(result.get("segments", [])):
        start, stop, lane = segment["start"], segment["end"], i % 2
        speech_ax.broken_barh([(start, stop - start)], (lane + 0.1, 0.8), color="#cfe3f7",
                              edgecolor="#4a7fb5", linewidth=0.6)
        text = _fit(segment["text"].strip(), stop - start, seconds_per_char)
        speech_ax.text(start + end * 0.003, lane + 0.5, text, va="center", fontsize=8,
                       clip_on=True)
    if not result.get("segments"):
        speech_ax.text(end / 2, 1, "(no speech)", ha="center", va="center", color="gray")
    speech_ax.set_ylim(2, 0)
    speech_ax.set_yticks([1])
    speech_ax.set_yticklabels(["speech"])
    speech_ax.tick_params(axis="y", length=0)
    speech_ax.tick_params(labelbottom=False)

    names = label_names("en")
    if classes:
        probs = torch.sigmoid(logits[:, classes]).T.numpy()
        image = sound_ax.imshow(probs, aspect="auto", cmap="viridis", vmin=0, vmax=1,
                                interpolation="nearest", extent=(0, n_rows * res, len(classes), 0))
        fig.colorbar(image, cax=bar_ax, label="probability")
        row_of = {c: i for i, c in enumerate(classes)}
        for event in events:
            if event["index"] in row_of:
                sound_ax.add_patch(Rectangle(
                    (event["start"], row_of[event["index"]] + 0.06), event["end"] - event["start"],
                    0.88, fill=False, edgecolor="#ff5a36", linewidth=1.6))
    sound_ax.set_yticks([i + 0.5 for i in range(len(classes))])
    sound_ax.set_yticklabels([names[c][:30] for c in classes], fontsize=9)
    sound_ax.set_xlim(0, end)
    sound_ax.set_xlabel(f"time (s); tag rows of {res:g} s; outlined: events "
                        f"(top {options.top_k}, logit > {options.threshold:g})")
    fig.savefig(path, format="png")
