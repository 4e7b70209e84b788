import csv
import json
import math
import os
import warnings

import numpy as np
import pytest
import torch
from whisper.tokenizer import LANGUAGES

from whisper_at.labels import (
    NUM_CLASSES,
    class_ids,
    label_index,
    label_names,
    parse_at_label,
    print_label_name,
    print_support_language,
    supported_languages,
)

ASSETS = os.path.join(os.path.dirname(__file__), "..", "whisper_at", "assets")


@pytest.fixture(scope="module")
def label_dict():
    with open(os.path.join(ASSETS, "label_name_dict.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def csv_rows():
    with open(os.path.join(ASSETS, "class_labels_indices.csv"), encoding="utf-8") as f:
        return list(csv.DictReader(f))


PEAKS = {0: 9.0, 137: 7.5, 300: 6.0, 74: 5.0, 500: 4.0, 20: 3.5, 400: 3.0}


def make_result(rows=4, res=0.4, language="en", seed=0, nan_rows=()):
    gen = torch.Generator().manual_seed(seed)
    tag = torch.randn(rows, NUM_CLASSES, generator=gen) - 3.0
    for i in range(rows):
        for c, v in PEAKS.items():
            tag[i, c] = v - 0.1 * i
    for i in nan_rows:
        tag[i] = float("nan")
    return {"text": "", "segments": [], "language": language, "at_time_res": res, "audio_tag": tag}


def reference(result, top_k=5, p_threshold=-1.0, include=range(NUM_CLASSES), language="en"):
    """Straightforward sort over the filtered classes (the documented semantics)."""
    names = label_names(language)
    out = []
    for row in result["audio_tag"].tolist():
        cand = [c for c in sorted(set(include)) if row[c] > p_threshold]
        cand.sort(key=lambda c: -row[c])
        out.append([(names[c], row[c]) for c in cand[:top_k]])
    return out


def parse_2023(result, top_k=5, p_threshold=-1, include=range(NUM_CLASSES)):
    """The 2023 algorithm (top-k first, then filter), copied for comparison."""
    names = label_names("en")
    out = []
    for i in range(result["audio_tag"].shape[0]):
        vals, idx = torch.topk(result["audio_tag"][i], k=top_k)
        tags = [
            (names[idx[j]], vals[j].item())
            for j in range(idx.shape[0])
            if vals[j] > p_threshold and idx[j] in include
        ]
        out.append(tags)
    return out


def tags_of(parsed):
    return [entry["audio tags"] for entry in parsed]


# --- label data -------------------------------------------------------------------------


def test_csv_matches_english_json(csv_rows, label_dict):
    assert len(csv_rows) == NUM_CLASSES == 527
    assert [int(r["index"]) for r in csv_rows] == list(range(NUM_CLASSES))
    # No differences found: CSV display names equal label_name_dict["en"] exactly.
    assert [r["display_name"] for r in csv_rows] == label_dict["en"]
    assert label_names("en") == label_dict["en"]


def test_every_language_has_527_names(label_dict):
    assert len(label_dict) == 85
    for lang in supported_languages():
        assert len(label_names(lang)) == NUM_CLASSES


def test_class_ids(csv_rows):
    ids = class_ids()
    assert len(ids) == NUM_CLASSES and len(set(ids)) == NUM_CLASSES
    assert ids[0] == "/m/09x0r"
    assert ids == [r["mid"] for r in csv_rows]


def test_supported_languages(label_dict):
    langs = supported_languages()
    assert langs == list(label_dict.keys())
    assert langs[0] == "en" and "zh" in langs
    # Data quirk check: every JSON code is a whisper language code (none missing today) ...
    assert set(langs) <= set(LANGUAGES)
    # ... but several whisper languages have no translation, e.g. Cantonese and Latin.
    assert "yue" not in langs and "la" not in langs


def test_label_names_languages(label_dict):
    assert label_names("zh")[0] == label_dict["zh"][0]
    assert label_names("zh") == label_dict["zh"]
    assert label_names("de")[137] == label_dict["de"][137]
    assert label_names("Chinese") == label_dict["zh"]  # whisper language names accepted
    assert label_names("ZH") == label_dict["zh"]


def test_label_names_returns_copy():
    names = label_names("en")
    names[0] = "mutated"
    assert label_names("en")[0] == "Speech"


def test_label_names_unknown_language_warns(label_dict):
    with pytest.warns(UserWarning, match="not supported"):
        assert label_names("xx") == label_dict["en"]
    with pytest.warns(UserWarning):
        assert label_names("yue") == label_dict["en"]


def test_label_index():
    assert label_index("Speech") == 0
    assert label_index("Field recording") == 526
    assert label_index("Male speech, man speaking") == 1
    assert label_index("speech") == 0
    for i in (5, 137, 300, 526):
        assert label_index(label_names("en")[i]) == i


def test_label_index_unknown_lists_near_matches():
    with pytest.raises(ValueError, match="'Speech'") as err:
        label_index("Speach")
    assert "name" in str(err.value)
    with pytest.raises(ValueError, match="Male speech, man speaking"):
        label_index("man speaking")
    with pytest.raises(ValueError, match="unknown AudioSet class"):
        label_index("zzzzqqq")


# --- parse_at_label -----------------------------------------------------------------------


def test_format_and_ordering():
    result = make_result(rows=3)
    parsed = parse_at_label(result)
    assert len(parsed) == 3
    for i, entry in enumerate(parsed):
        assert set(entry) == {"time", "audio tags"}
        tags = entry["audio tags"]
        assert len(tags) == 5
        assert all(isinstance(n, str) and isinstance(v, float) for n, v in tags)
        values = [v for _, v in tags]
        assert values == sorted(values, reverse=True)
        assert [n for n, _ in tags] == [label_names("en")[c] for c in (0, 137, 300, 74, 500)]
        assert values[0] == pytest.approx(9.0 - 0.1 * i)
    assert parsed[0]["audio tags"][0][0] == "Speech"
    assert tags_of(parsed) == reference(result)


def test_matches_2023_with_default_arguments():
    result = make_result(rows=6, seed=3)
    assert tags_of(parse_at_label(result)) == parse_2023(result)
    assert tags_of(parse_at_label(result, top_k=10, p_threshold=4.2)) == parse_2023(
        result, top_k=10, p_threshold=4.2
    )


def test_times():
    parsed = parse_at_label(make_result(rows=5, res=0.4))
    assert [e["time"] for e in parsed][3] == {"start": 1.2, "end": 1.6}
    assert parsed[2]["time"] == {"start": 0.8, "end": 1.2}
    assert str(parsed[3]["time"]["start"]) == "1.2"
    parsed = parse_at_label(make_result(rows=3, res=10))
    assert [e["time"] for e in parsed] == [
        {"start": 0, "end": 10},
        {"start": 10, "end": 20},
        {"start": 20, "end": 30},
    ]
    assert isinstance(parsed[1]["time"]["start"], int)  # 2023 default at_time_res=10 gave ints


def test_top_k_counted_after_include_filter():
    result = make_result(rows=4, seed=1)
    include = [3, 137, 20, 250, 251, 252, 253, 254, 400]
    parsed = parse_at_label(result, top_k=5, p_threshold=-10, include_class_list=include)
    expected = reference(result, top_k=5, p_threshold=-10, include=include)
    assert tags_of(parsed) == expected
    assert all(len(t) == 5 for t in tags_of(parsed))
    assert [n for n, _ in parsed[0]["audio tags"][:3]] == [
        label_names("en")[c] for c in (137, 20, 400)
    ]
    # The 2023 code took the global top 5 first, so only class 137 survived the include list.
    assert all(len(t) == 1 for t in parse_2023(result, p_threshold=-10, include=include))


def test_top_k_after_threshold_and_include_random():
    gen = torch.Generator().manual_seed(7)
    for trial in range(20):
        result = make_result(rows=3, seed=trial)
        include = torch.randperm(NUM_CLASSES, generator=gen)[: 1 + trial * 25].tolist()
        top_k = 1 + trial % 9
        thr = [-1.0, -3.0, 0.5, 5.5][trial % 4]
        parsed = parse_at_label(result, top_k=top_k, p_threshold=thr, include_class_list=include)
        assert tags_of(parsed) == reference(result, top_k, thr, include)


def test_include_class_list_forms():
    result = make_result(rows=2)
    expected = tags_of(parse_at_label(result, include_class_list=[1, 137, 300, 0]))
    for inc in (
        (1, 137, 300, 0),
        {0, 1, 137, 300},
        [0, 0, 1, 137, 137, 300],
        np.array([0, 1, 137, 300]),
        torch.tensor([0, 1, 137, 300]),
    ):
        got = tags_of(parse_at_label(result, top_k=4, include_class_list=inc))
        assert got == [t[:4] for t in expected]
    assert tags_of(parse_at_label(result, include_class_list=None)) == tags_of(
        parse_at_label(result)
    )


def test_threshold():
    result = make_result(rows=3)
    parsed = parse_at_label(result, top_k=50, p_threshold=4.5)
    for i, tags in enumerate(tags_of(parsed)):
        assert all(v > 4.5 for _, v in tags)
        expected = [c for c, v in PEAKS.items() if v - 0.1 * i > 4.5]
        assert [n for n, _ in tags] == [label_names("en")[c] for c in expected]
    assert tags_of(parse_at_label(result, p_threshold=100)) == [[], [], []]
    low = parse_at_label(result, top_k=NUM_CLASSES, p_threshold=-math.inf)
    assert all(len(t) == NUM_CLASSES for t in tags_of(low))
    assert tags_of(parse_at_label(result, p_threshold=np.float32(4.5))) == tags_of(
        parse_at_label(result, p_threshold=4.5)
    )


def test_threshold_is_strict():
    result = make_result(rows=1)
    assert "Speech" not in [n for n, _ in parse_at_label(result, p_threshold=9.0)[0]["audio tags"]]


def test_nan_rows_are_empty():
    result = make_result(rows=5, nan_rows=(1, 4))
    parsed = parse_at_label(result)
    assert len(parsed) == 5
    assert parsed[1]["audio tags"] == [] and parsed[4]["audio tags"] == []
    assert parsed[1]["time"] == {"start": 0.4, "end": 0.8}
    assert parsed[0]["audio tags"] == reference(result)[0]
    assert len(parsed[2]["audio tags"]) == 5


def test_partial_nan_never_reported():
    result = make_result(rows=2)
    result["audio_tag"][0, 0] = float("nan")
    parsed = parse_at_label(result, top_k=NUM_CLASSES, p_threshold=-math.inf)
    assert "Speech" not in [n for n, _ in parsed[0]["audio tags"]]
    assert len(parsed[0]["audio tags"]) == NUM_CLASSES - 1
    assert parsed[0]["audio tags"][0][0] == label_names("en")[137]


def test_ties_broken_by_class_index():
    tag = torch.full((1, NUM_CLASSES), -5.0)
    tag[0, [400, 10, 250]] = 2.0
    result = {"language": "en", "at_time_res": 10, "audio_tag": tag}
    names = [n for n, _ in parse_at_label(result, top_k=3)[0]["audio tags"]]
    assert names == [label_names("en")[c] for c in (10, 250, 400)]


def test_numpy_and_other_dtypes():
    result = make_result(rows=3)
    expected = tags_of(parse_at_label(result))
    as_np = dict(result, audio_tag=result["audio_tag"].numpy())
    assert tags_of(parse_at_label(as_np)) == expected
    grad = dict(result, audio_tag=result["audio_tag"].clone().requires_grad_())
    assert tags_of(parse_at_label(grad)) == expected
    half = dict(result, audio_tag=result["audio_tag"].half())
    assert [[n for n, _ in t] for t in tags_of(parse_at_label(half))] == [
        [n for n, _ in t] for t in expected
    ]


def test_zero_rows():
    result = make_result(rows=1)
    result["audio_tag"] = torch.zeros(0, NUM_CLASSES)
    assert parse_at_label(result) == []


def test_follow_asr_language(label_dict):
    result = make_result(rows=2, language="zh")
    parsed = parse_at_label(result)
    assert parsed[0]["audio tags"][0][0] == label_dict["zh"][0]
    assert [n for n, _ in parsed[1]["audio tags"]] == [
        label_dict["zh"][c] for c in (0, 137, 300, 74, 500)
    ]
    explicit = parse_at_label(result, language="ja")
    assert explicit[0]["audio tags"][0][0] == label_dict["ja"][0]
    english = parse_at_label(result, language="en")
    assert english[0]["audio tags"][0][0] == "Speech"
    # values don't depend on language
    assert [v for _, v in parsed[0]["audio tags"]] == [v for _, v in english[0]["audio tags"]]


def test_unknown_language_warns_and_uses_english():
    result = make_result(rows=1, language="yue")  # whisper language without translations
    with pytest.warns(UserWarning, match="not supported"):
        parsed = parse_at_label(result)
    assert parsed[0]["audio tags"][0][0] == "Speech"
    with pytest.warns(UserWarning, match="'xx'"):
        parse_at_label(make_result(rows=1), language="xx")
    no_lang = make_result(rows=1)
    del no_lang["language"]
    with pytest.warns(UserWarning):
        assert parse_at_label(no_lang)[0]["audio tags"][0][0] == "Speech"


def test_known_language_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_at_label(make_result(rows=1, language="zh"))
        parse_at_label(make_result(rows=1), language="fr")


@pytest.mark.parametrize("top_k", [0, -1, 2.5, True, "3", None])
def test_bad_top_k(top_k):
    with pytest.raises(ValueError, match="top_k"):
        parse_at_label(make_result(rows=1), top_k=top_k)


def test_numpy_int_top_k_ok():
    assert len(parse_at_label(make_result(rows=1), top_k=np.int64(2))[0]["audio tags"]) == 2


@pytest.mark.parametrize(
    "include", [[], [527], [-1], [0, 1000], [1.5], ["a"], "abc", 5, np.array([], dtype=int)]
)
def test_bad_include_class_list(include):
    with pytest.raises(ValueError, match="include_class_list"):
        parse_at_label(make_result(rows=1), include_class_list=include)


@pytest.mark.parametrize("thr", [float("nan"), np.nan, "x", None, [1.0]])
def test_bad_p_threshold(thr):
    with pytest.raises(ValueError, match="p_threshold"):
        parse_at_label(make_result(rows=1), p_threshold=thr)


def test_missing_audio_tag():
    result = make_result(rows=1)
    del result["audio_tag"]
    with pytest.raises(ValueError, match="audio_tag") as err:
        parse_at_label(result)
    assert "AT" in str(err.value) and "transcribe" in str(err.value)
    with pytest.raises(ValueError, match="audio_tag"):
        parse_at_label(dict(make_result(rows=1), audio_tag=None))
    with pytest.raises(ValueError, match="result"):
        parse_at_label("not a dict")


@pytest.mark.parametrize(
    "shape", [(NUM_CLASSES,), (2, NUM_CLASSES - 1), (1, 2, NUM_CLASSES), (NUM_CLASSES, 2)]
)
def test_bad_audio_tag_shape(shape):
    result = dict(make_result(rows=1), audio_tag=torch.zeros(shape))
    with pytest.raises(ValueError, match="audio_tag.*shape"):
        parse_at_label(result)


def test_bad_at_time_res():
    result = make_result(rows=1)
    del result["at_time_res"]
    with pytest.raises(ValueError, match="at_time_res"):
        parse_at_label(result)
    for res in (0, -0.4, float("nan"), "0.4"):
        with pytest.raises(ValueError, match="at_time_res"):
            parse_at_label(make_result(rows=1, res=res))


# --- 2023 printing helpers ----------------------------------------------------------------


def test_print_label_name(capsys, label_dict):
    print_label_name("zh")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == NUM_CLASSES
    assert lines[0] == f"index: 0 : {label_dict['zh'][0]}"
    print_label_name()
    assert capsys.readouterr().out.splitlines()[526] == "index: 526 : Field recording"


def test_print_support_language(capsys):
    print_support_language()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(supported_languages())
    assert lines[0] == "language code: en : english"
    assert "language code: zh : chinese" in lines
