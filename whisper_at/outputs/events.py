"""Tag rows as labels and sound events: the content of ``.tags.json``, ``.tags.tsv`` and
``.events.tsv`` (rules in docs/outputs.md)."""

from typing import Dict, List, NamedTuple, Sequence, Tuple

import torch
from whisper.utils import format_timestamp

from ..gate import SPEECH_NAMES
from ..labels import NUM_CLASSES, label_index, label_names, parse_at_label

MUSIC_NAMES = ("Music", "Scary music")  # instruments, genres and moods: one [Music] caption


class TagOptions(NamedTuple):
    """How tag logits become labels, events and captions (the ``--at_*`` options)."""

    top_k: int = 5
    threshold: float = -1.0
    language: str = "follow_asr"
    speech_events: bool = False
    sdh_repeat: bool = False  # SDH: caption a sound on every cue it overlaps (whisper-at 1.0)
    sdh_continues: float = 60.0  # SDH: "[... continues]" this long after its caption; 0: never


def span(first: str, last: str) -> range:
    return range(label_index(first), label_index(last) + 1)


def event_classes(speech_events: bool = False) -> List[int]:
    """Classes of the sound-event timeline: all but the speech classes unless asked for."""
    speech = set() if speech_events else set(span(*SPEECH_NAMES))
    return [i for i in range(NUM_CLASSES) if i not in speech]


def row_times(n_rows: int, at_time_res: float, duration: float) -> List[Tuple[float, float]]:
    """(start, end) seconds of each tag row, to the ms; the last ends with the audio."""
    end = round(duration, 3)
    return [(round(k * at_time_res, 3), min(round((k + 1) * at_time_res, 3), end))
            for k in range(n_rows)]


def active_classes(
    audio_tag: torch.Tensor, include: Sequence[int], top_k: int, threshold: float
) -> List[List[Tuple[int, float]]]:
    """Per row, the top_k classes of ``include`` with logit > threshold: [(class, logit)]."""
    include_t = torch.as_tensor(list(include), dtype=torch.long)
    values = audio_tag.detach().float().cpu()[:, include_t]
    masked = torch.where(values > threshold, values, torch.full_like(values, -float("inf")))
    top, order = torch.sort(masked, dim=1, descending=True, stable=True)
    k = min(top_k, include_t.numel())
    rows = []
    for logits, classes in zip(top[:, :k].tolist(), include_t[order[:, :k]].tolist()):
        rows.append([(c, v) for c, v in zip(classes, logits) if v != -float("inf")])
    return rows


def sound_events(
    audio_tag: torch.Tensor, at_time_res: float, duration: float, options: TagOptions
) -> List[dict]:
    """Merge consecutive rows in which a class is active into events, sorted by start time:
    ``{"start", "end", "index", "label" (English), "peak" (max logit)}``."""
    rows = active_classes(
        audio_tag, event_classes(options.speech_events), options.top_k, options.threshold
    )
    times = row_times(len(rows), at_time_res, duration)
    names = label_names("en")
    open_events: Dict[int, dict] = {}
    events = []
    for (start, end), active in zip(times, rows):
        for index in set(open_events) - {c for c, _ in active}:
            events.append(open_events.pop(index))
        for index, logit in active:
            event = open_events.setdefault(
                index, {"start": start, "end": end, "index": index, "label": names[index]}
            )
            event["end"] = end
            event["peak"] = round(max(event.get("peak", -float("inf")), logit), 4)
    events.extend(open_events.values())
    return sorted(events, key=lambda e: (e["start"], -e["peak"], e["index"]))


def label_language(result: dict, options: TagOptions) -> str:
    if options.language == "follow_asr":
        return result.get("language") or "en"
    return options.language


def tags_document(result: dict, audio_path: str, duration: float, options: TagOptions) -> dict:
    """Content of ``<name>.tags.json``."""
    audio_tag, res = result["audio_tag"], result["at_time_res"]
    names = label_names("en")
    rows = active_classes(audio_tag, range(NUM_CLASSES), options.top_k, -float("inf"))
    chunks = [
        {"start": start, "end": end, "top": [
            {"index": c, "label": names[c], "logit": round(v, 4)} for c, v in top
        ]}
        for (start, end), top in zip(row_times(len(rows), res, duration), rows)
    ]
    parsed = parse_at_label(
        result, label_language(result, options), options.top_k, options.threshold
    )
    events = sound_events(audio_tag, res, duration, options)
    return {"audio": audio_path, "duration": round(duration, 3), "at_time_res": res,
            "language": result.get("language"), "top_k": options.top_k,
            "threshold": options.threshold, "chunks": chunks, "parsed": parsed, "events": events}


def tags_tsv_rows(result: dict, duration: float, options: TagOptions) -> List[tuple]:
    """(start ms, end ms, label, logit) for the parse_at_label view of every row."""
    parsed = parse_at_label(
        result, label_language(result, options), options.top_k, options.threshold
    )
    times = row_times(len(parsed), result["at_time_res"], duration)
    return [
        (round(1000 * start), round(1000 * end), label, f"{logit:.4f}")
        for (start, end), chunk in zip(times, parsed)
        for label, logit in chunk["audio tags"]
    ]


def events_tsv_rows(events: List[dict], language: str) -> List[tuple]:
    names = label_names(language)
    return [(round(1000 * e["start"]), round(1000 * e["end"]), names[e["index"]],
             f"{e['peak']:.4f}") for e in events]


def write_tsv(path: str, header: Sequence[str], rows: List[tuple]):
    with open(path, "w", encoding="utf-8") as f:
        for row in [tuple(header)] + rows:
            print(*(str(v).replace("\t", " ") for v in row), sep="\t", file=f)


def event_lines(result: dict, duration: float, options: TagOptions) -> List[str]:
    """The console view of the tags (``whisper-at --verbose True``): a line per row, its time
    span and the classes ``parse_at_label`` keeps ("-": none; rows not analysed say so)."""
    parsed = parse_at_label(
        result, label_language(result, options), options.top_k, options.threshold
    )
    analysed = ~result["audio_tag"].isnan().all(dim=1)
    lines = []
    for (start, end), chunk, seen in zip(row_times(len(parsed), result["at_time_res"], duration),
                                         parsed, analysed.tolist()):  # fmt: skip
        tags = ", ".join(label for label, _ in chunk["audio tags"]) or "-"
        span = f"[{format_timestamp(start)} --> {format_timestamp(end)}]"
        lines.append(f"{span} {tags if seen else '(not analysed)'}")
    return lines
