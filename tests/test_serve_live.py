"""``whisper-at serve --backend faster-whisper`` and its Live tab: a real server process with
tiny.en (int8 CTranslate2) and the speech head the tests train; headless Chromium records from a
fake capture device that plays a wav of espeak-ng speech and a sox tone (the browser's own
microphone path: getUserMedia, Web Audio, the page's requests). Needs what tests/test_serve.py
needs (gradio, gradio_client, playwright, a Chromium)."""

import base64
import os
import re
from pathlib import Path

import numpy as np
import pytest
import testkit
from test_serve import REPO, _browser, serving

RATE = 16000
SPEECH = testkit.SENTENCES[0:2]
CUE = re.compile(r"^\[(\d\d):(\d\d\.\d\d\d) --> (\d\d):(\d\d\.\d\d\d)\] (.*)$")


def _words(text: str) -> set:
    return set(re.findall(r"[a-z']+", text.lower()))


def _cues(text: str) -> list:
    """(start s, end s, text) of the caption lines."""
    cues = []
    for line in text.splitlines():
        match = CUE.match(line)
        if match:
            m1, s1, m2, s2, said = match.groups()
            cues.append((int(m1) * 60 + float(s1), int(m2) * 60 + float(s2), said))
    return cues


@pytest.fixture(scope="module")
def live_wav(tmp_path_factory) -> Path:
    """0.5 s of silence, SPEECH (1 s of silence after each sentence), 6 s of a 440 Hz tone, 2 s
    of silence (~22 s)."""
    work = tmp_path_factory.mktemp("serve_live")
    parts = [np.zeros(RATE // 2, np.float32)]
    for i, text in enumerate(SPEECH):
        parts += [testkit.read_wav(testkit.espeak(text, work / f"s{i}.wav")),
                  np.zeros(RATE, np.float32)]  # fmt: skip
    parts += [testkit.read_wav(testkit.synth(work / "tone.wav", 6, "sine", "440", "vol", "0.3")),
              np.zeros(2 * RATE, np.float32)]  # fmt: skip
    testkit.write_wav(work / "live.wav", np.concatenate(parts))
    return work / "live.wav"


@pytest.fixture(scope="module")
def fw_server(ct2_tiny_en_dir, speech_head_file, tmp_path_factory):
    """URL of ``whisper-at serve --backend faster-whisper`` with tiny.en and the speech head."""
    log = tmp_path_factory.mktemp("serve_fw") / "server.log"
    args = ["--backend", "faster-whisper", "--compute_type", "int8", "--model", ct2_tiny_en_dir,
            "--at_head", speech_head_file, "--models"]  # fmt: skip
    with serving(args, log) as url:
        yield url


def test_file_tab_with_faster_whisper(fw_server, speech_wav):
    """The file tab runs on the faster-whisper backend: transcript, tags and downloads."""
    from gradio_client import Client, handle_file

    client = Client(fw_server, verbose=False)
    info, text, plot, table, files = client.predict(audio=handle_file(str(speech_wav)),
                                                    api_name="/transcribe")  # fmt: skip
    assert "speech.wav" in info and "English" in info and "tiny.en" in info
    assert "favorite color is green" in text.lower() and "garden" in text.lower()
    assert len(table["data"]) == 1 and "Speech" in table["data"][0][2]
    assert Path(plot).read_bytes()[:4] == b"\x89PNG"
    assert sorted(Path(f).name for f in files) == sorted(
        f"speech.{k}" for k in ("txt", "srt", "vtt", "sdh.srt", "tags.json"))


def test_live_tab_microphone_captions_and_sounds(fw_server, live_wav, tmp_path):
    """Record the fake microphone in the Live tab with the speech gate: the spoken sentences
    appear as committed captions, the tone as a [sound] line after them, and stopping ends
    the recording with everything committed."""
    fake_microphone = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                       f"--use-file-for-fake-audio-capture={live_wav}%noloop"]  # fmt: skip
    with _browser(tmp_path, fake_microphone) as browser:
        page = browser.new_page()
        page.set_default_timeout(120_000)
        page.goto(fw_server)
        page.get_by_role("tab", name="Live").click()
        page.get_by_label("No captions in non-speech (speech gate)").check()
        page.get_by_role("button", name="Record").click()
        page.get_by_text("Listening: ").wait_for()
        captions = page.locator("#live-captions")
        # the second sentence committed, then a sound-only line settled after it
        page.wait_for_function(
            r"el => /garden|books/i.test(el.value) && /\] \[[^\]]+\]$/m.test("
            r"el.value.split(/garden|books/i).pop())", arg=captions.element_handle())
        # the docs' picture is refreshed on request; otherwise the shot goes to tmp
        shot = (REPO / "docs" / "serve-live.png" if os.environ.get("WHISPER_AT_SCREENSHOT")
                else tmp_path / "serve-live.png")  # fmt: skip
        page.screenshot(path=str(shot), full_page=True)
        page.get_by_role("button", name="Stop").click()
        page.get_by_text("Stopped: the captions are complete").wait_for()
        text = captions.input_value()
        assert page.get_by_role("button", name="Record").is_enabled()
    cues = _cues(text)
    assert cues and len(cues) == len(text.splitlines()), text
    speech = [c for c in cues if not c[2].startswith("[")]
    said = _words(" ".join(c[2] for c in speech))
    reference = _words(" ".join(SPEECH))
    assert len(said & reference) >= 0.7 * len(reference), (sorted(reference - said), text)
    assert all(a[0] <= b[0] for a, b in zip(speech, speech[1:])), text  # in order
    sounds = [c for c in cues if c[2].startswith("[") and c[0] >= speech[-1][1] - 0.5]
    assert sounds, text  # the tone, after the speech
    assert sounds[0][0] <= speech[-1][1] + 3, text  # where the tone starts (±1 s, lead-in)


def _push(sessions, key: str, audio: np.ndarray, seconds: float = 0.25) -> list:
    """Send ``audio`` (16 kHz) as the page does, in pieces of ``seconds``; the views."""
    step = int(seconds * RATE)
    views = []
    for seq, at in enumerate(range(0, len(audio), step)):
        pcm = (np.clip(audio[at : at + step], -1, 1) * 32767).astype("<i2").tobytes()
        views.append(sessions.live_push([key, seq, base64.b64encode(pcm).decode()]))
    return views


def test_recordings_are_freed(ct2_tiny_en_dir, speech_head_file, live_wav, monkeypatch):
    """In process: a recording's transcriber is freed once the page has its last captions, or
    when the page stops sending (closed); requests for it then get a message."""
    from whisper_at import serve_live
    from whisper_at.serve_models import ModelCache

    name = str(ct2_tiny_en_dir)
    cache = ModelCache({name: str(speech_head_file)}, "cpu", None, backend="faster-whisper",
                       compute_type="int8")  # fmt: skip
    sessions = serve_live.LiveSessions(cache, [name])
    assert sessions.live_start(["small", False, RATE]) == {"error": "unknown model 'small'"}
    audio = testkit.read_wav(live_wav)

    key = sessions.live_start([name, True, RATE])["id"]
    session = sessions._session(key)
    views = _push(sessions, key, audio[: 12 * RATE])
    end = sessions.live_stop([key])
    session.worker.join()
    assert len(sessions) == 0 and session.live is None
    assert end["ended"] and end["status"].startswith("Stopped: the captions are complete")
    lines = [line for view in views + [end] for line in view["lines"]]
    said = _words(" ".join(c[2] for c in _cues("\n".join(lines))))
    reference = _words(" ".join(SPEECH))
    assert len(said & reference) >= 0.7 * len(reference), lines
    assert "ended" in sessions.live_push([key, 99, ""])["error"]

    monkeypatch.setattr(serve_live, "IDLE", 0.5)
    key = sessions.live_start([name, False, 48000])["id"]  # resampled from 48 kHz
    session = sessions._session(key)
    _push(sessions, key, np.zeros(3 * RATE, np.float32))
    session.worker.join()  # nothing more comes: the page is gone
    assert len(sessions) == 0 and session.live is None
    assert "ended" in sessions.live_stop([key])["error"]


def test_resampler_is_continuous_across_chunks():
    from whisper_at.serve_live import Resampler

    t = np.arange(48000 * 2) / 48000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    resample = Resampler(48000)
    out = np.concatenate([resample(tone[i : i + 4096]) for i in range(0, len(tone), 4096)]
                         + [resample(None)])  # fmt: skip
    assert abs(len(out) - 2 * RATE) <= 1
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(out)) / RATE)
    assert np.abs(out[100:-100] - expected[100:-100]).max() < 1e-3
