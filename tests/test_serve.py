"""``whisper-at serve``: a real server process, driven by headless Chromium and gradio_client.

The server runs ``python -m whisper_at.serve`` with real tiny.en weights and the seeded random
head on a free loopback port. Needs gradio, gradio_client, playwright (the Python package) and a
Chromium: Debian's (``apt-get install -y chromium``) or any other on PATH that runs and is not a
snap, else Playwright's own build (on Ubuntu, whose chromium packages are snap shims:
``python -m playwright install --with-deps chromium``). tests/install.sh sets up either.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from contextlib import contextmanager
from pathlib import Path

import pytest

from whisper_at.labels import label_names

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_DURATION = 70  # seconds: long_speech_wav (67 s) is accepted, the 75 s tone is not
TAG = re.compile(r"(.+?) \((-?\d+\.\d+)\)(?: \| |$)")


def _chromium(playwright) -> str:
    """The Chromium to drive: one on PATH that runs (not a snap), else Playwright's own."""
    path = shutil.which("chromium")
    real = os.path.realpath(path) if path else ""  # a snap: /snap/... or /usr/bin/snap itself
    if path and not (path.startswith("/snap/") or real.startswith("/snap/")
                     or os.path.basename(real) == "snap"):
        if subprocess.run([path, "--version"], capture_output=True, timeout=60).returncode == 0:
            return path
    if os.path.exists(playwright.chromium.executable_path):
        return playwright.chromium.executable_path
    pytest.fail("no Chromium: run tests/install.sh (Debian: apt-get install -y chromium; Ubuntu: "
                "python -m playwright install --with-deps chromium)", pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"server not ready after {timeout} s:\n{log.read_text()[-3000:]}")


@contextmanager
def serving(args, log: Path):
    """URL of ``python -m whisper_at.serve <args>`` on a free loopback port, until the end."""
    pytest.importorskip("gradio", reason="pip install 'whisper-at[demo]'")
    port = _free_port()
    cmd = [sys.executable, "-m", "whisper_at.serve", *map(str, args), "--host", "127.0.0.1",
           "--port", str(port), "--max_duration", str(MAX_DURATION), "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(REPO), GRADIO_ANALYTICS_ENABLED="False")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_ready(proc, url, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(tiny_en_pt, tiny_head_file, tmp_path_factory):
    """URL of a running ``whisper-at serve`` with tiny.en and the random head."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with serving(["--model", tiny_en_pt, "--at_head", tiny_head_file], log) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """A text file named .mp3, a WAV of 0 samples, and a 75 s tone (over --max_duration)."""
    folder = tmp_path_factory.mktemp("bad")
    (folder / "notes.mp3").write_text("These are meeting notes, not audio.\n")
    with wave.open(str(folder / "empty.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    tone = folder / "tone75.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(tone), "synth",
                    str(MAX_DURATION + 5), "sine", "440", "vol", "0.3"], check=True)
    return folder


def _tags(cell: str):
    """[(label, logit)] from a tag-table cell."""
    return [(label, float(logit)) for label, logit in TAG.findall(cell)] if cell != "-" else []


@contextmanager
def _browser(tmp_path: Path, extra_args=()):
    """Headless Debian chromium driven by Playwright (its own browser download is not used)."""
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=_chromium(p),
            args=CHROMIUM_ARGS + list(extra_args), headless=True,
            viewport={"width": 1280, "height": 900})
        try:
            yield browser
        finally:
            browser.close()


def test_browser_upload_transcribe_and_errors(server, bad_files, speech_wav, tmp_path):
    with _browser(tmp_path) as browser:
        page = browser.new_page()
        page.set_default_timeout(60_000)
        requests = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(server)
        upload = page.locator("input[type=file]").first
        submit = page.get_by_role("button", name="Transcribe")

        submit.click()  # nothing uploaded or recorded
        page.get_by_text("No audio: upload a file or record something first.").wait_for()
        upload.set_input_files(str(bad_files / "notes.mp3"))
        submit.click()
        page.get_by_text("Cannot decode audio file notes.mp3").wait_for()

        page.reload()  # a fresh page; the same server
        upload.set_input_files(str(speech_wav))
        submit.click()
        transcript = page.get_by_label("Transcript")
        page.wait_for_function(
            "el => el.value.includes('garden')", arg=transcript.element_handle())
        text = transcript.input_value().lower()
        assert text.startswith("[00:00.000 -->")
        assert all(word in text for word in ("favorite", "color", "green", "books"))

        cell = page.locator("#tag-table [role=gridcell]")
        cell.nth(2).wait_for()
        cells = [text.strip() for text in cell.all_inner_texts()]
        assert len(cells) == 3 and cells[:2] == ["00:00.000", "00:05.418"]
        tags = _tags(cells[2])
        assert tags and all(label in label_names("en") for label, _ in tags)
        link = page.locator("a[download='speech.sdh.srt']")
        link.wait_for()
        sdh = page.request.get(link.get_attribute("href")).text()
        assert "garden" in sdh and "-->" in sdh
        timeline = page.locator("img[src*='speech.events.png']")
        timeline.wait_for()
        page.wait_for_function("img => img.complete && img.naturalWidth > 1000",
                               arg=timeline.element_handle())
        outside = [u for u in requests if not u.startswith((server, f"blob:{server}"))]
        assert not outside, f"the page loads from elsewhere: {outside}"
        for close in page.locator(".toast-close").all():
            close.click()
        # the README's picture is refreshed on request; otherwise the shot goes to tmp
        shot = REPO / "docs" / "serve.png" if os.environ.get("WHISPER_AT_SCREENSHOT") else None
        page.screenshot(path=str(shot or tmp_path / "serve.png"), full_page=True)
        assert (shot or tmp_path / "serve.png").stat().st_size > 20_000


def test_api_transcribe_tags_and_downloads(client, speech_wav, speech_text):
    from gradio_client import handle_file

    info, text, plot, table, files = client.predict(audio=handle_file(str(speech_wav)),
                                                    api_name="/transcribe")
    assert "speech.wav" in info and "English" in info
    assert "favorite color is green" in text.lower() and "garden" in text.lower()
    assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = sorted(Path(f).name for f in files)
    assert names == sorted(f"speech.{k}" for k in ("txt", "srt", "vtt", "sdh.srt", "tags.json"))
    by_kind = {Path(f).name[len("speech."):]: Path(f) for f in files}
    assert "garden" in by_kind["srt"].read_text() and "garden" in by_kind["sdh.srt"].read_text()
    document = json.loads(by_kind["tags.json"].read_text())
    assert document["audio"] == "speech.wav" and document["at_time_res"] == 10
    rows = table["data"]
    assert len(rows) == len(document["parsed"]) == 1
    parsed = [(label, round(logit, 2)) for label, logit in document["parsed"][0]["audio tags"]]
    assert _tags(rows[0][2]) == parsed and 0 < len(parsed) <= 5


def test_api_tag_options(client, speech_wav):
    from gradio_client import handle_file

    _, _, _, table, _ = client.predict(
        audio=handle_file(str(speech_wav)), at_time_res=2, top_k=2, threshold=-1e9,
        label_language="zh", api_name="/transcribe")
    rows = table["data"]
    assert [row[:2] for row in rows] == [["00:00.000", "00:02.000"], ["00:02.000", "00:04.000"],
                                         ["00:04.000", "00:05.418"]]
    for row in rows:
        tags = _tags(row[2])
        assert len(tags) == 2 and all(label in label_names("zh") for label, _ in tags)
        assert tags[0][1] >= tags[1][1]


def test_api_bad_input_then_good(client, bad_files, speech_wav):
    from gradio_client import handle_file

    bad = [
        ({"audio": bad_files / "notes.mp3"}, "Cannot decode audio file notes.mp3"),
        ({"audio": bad_files / "empty.wav"}, "empty.wav is empty"),
        ({"audio": bad_files / "tone75.wav"},
         f"tone75.wav is 75.0 s long; this server takes audio of at most {MAX_DURATION} s"),
        ({"audio": speech_wav, "at_time_res": 31}, "Value 31 is greater than maximum value 30"),
    ]
    for inputs, message in bad:
        inputs["audio"] = handle_file(str(inputs["audio"]))
        with pytest.raises(Exception, match=re.escape(message)):
            client.predict(**inputs, api_name="/transcribe")
    _, text, _, table, _ = client.predict(audio=handle_file(str(speech_wav)),
                                          api_name="/transcribe")
    assert "garden" in text.lower() and table["data"]


def test_api_long_file_progress_and_queue(client, long_speech_wav, speech_wav):
    """A 67 s file reports transcription progress; a request sent meanwhile waits its turn."""
    from gradio_client import handle_file

    long_job = client.submit(audio=handle_file(str(long_speech_wav)), api_name="/transcribe")
    short_job = client.submit(audio=handle_file(str(speech_wav)), api_name="/transcribe")
    progress = []
    deadline = time.time() + 120
    while not long_job.done() and time.time() < deadline:
        progress += long_job.status().progress_data or []
        time.sleep(0.1)
    frames = [unit for unit in progress if unit.unit == "frames"]
    assert frames and frames[0].length > 6000
    assert any(0 < unit.index < unit.length for unit in frames)
    _, text, _, table, _ = long_job.result(timeout=60)
    assert len(table["data"]) == 7  # ceil(67.3 / 10) rows
    assert "garden" in text.lower() and "morning" in text.lower()
    assert "garden" in short_job.result(timeout=60)[1].lower()



def test_handler_english_only_model_without_head(tiny_en_pt, speech_wav, tmp_path):
    """In process: a model without a head gives the transcript only, with warnings saying so;
    an English-only model transcribes as English whatever language is chosen."""
    from whisper_at.serve import ModelCache, make_handler

    run = make_handler(ModelCache({}, "cpu", None), 0, str(tmp_path))
    with pytest.warns(UserWarning) as caught:
        info, text, plot, table, files = run(str(speech_wav), str(tiny_en_pt), "transcribe",
                                             "fr", 10, 5, -1, "follow_asr")
    messages = [str(w.message) for w in caught]
    assert "tiny.en.pt is English-only: transcribing as English." in messages
    assert "tiny.en.pt has no audio-tagging head: transcript only." in messages
    assert "English" in info and "garden" in text.lower()
    assert plot is None and table == []
    assert sorted(Path(f).name for f in files) == ["speech.srt", "speech.txt", "speech.vtt"]


def test_browser_speech_gate_checkbox(server, speech_wav, tmp_path):
    """The "Speech gate" checkbox reaches transcribe: the info line reports the gate."""
    with _browser(tmp_path) as browser:
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.goto(server)
        page.locator("input[type=file]").first.set_input_files(str(speech_wav))
        page.get_by_text("Speech gate", exact=True).click()  # open the accordion
        page.get_by_label("Skip non-speech (speech gate)").check()
        page.get_by_role("button", name="Transcribe").click()
        page.get_by_text("speech gate 0.5: skipped").wait_for()


def test_handler_speech_gate_skips_the_non_speech(tiny_en_pt, speech_head_file, gate_wav,
                                                  speech_wav, tmp_path):
    """In process, with the speech head trained by the tests: the gate skips the tone and
    noise of the gate audio, and the transcript keeps the speech."""
    from whisper_at.serve import ModelCache, make_handler

    path, parts = gate_wav
    cache = ModelCache({str(tiny_en_pt): str(speech_head_file)}, "cpu", None)
    run = make_handler(cache, 0, str(tmp_path))
    off = run(str(speech_wav), str(tiny_en_pt), "transcribe", "en", 10, 5, -1, "follow_asr")
    on = run(str(path), str(tiny_en_pt), "transcribe", "en", 10, 5, -1, "follow_asr", True, 0.5)
    assert "speech gate" not in off[0] and "garden" in off[1]
    # 30 s to a margin before the speech at 71.5 s
    assert re.search(r"speech gate 0\.5: skipped 4[01]\.\d s in 1 stretch\(es\), dropped 0 "
                     r"segment\(s\), held \d+ to the speech", on[0]), on[0]
    starts = [line[1:10] for line in on[1].splitlines()]
    assert starts and all(s < "00:22.600" or s >= "01:10.000" for s in starts), on[1]
    assert "library" in on[1].lower() and "stella" in on[1].lower()
    assert len(on[3]) == 10  # the tag table still has every row, skipped ones too
