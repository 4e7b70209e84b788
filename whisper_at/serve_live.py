"""The "Live" tab of ``whisper-at serve``: live captions with sound events from the browser's
microphone (docs/serve.md#live).

The page (``assets/serve_live.js`` in a ``gr.HTML``) captures the microphone with the Web Audio
API and sends it to the server as 16-bit PCM at the browser's rate, a request every quarter of
a second, each waiting for the one before (Gradio's server functions: nothing is lost or
reordered, unlike Gradio's streaming ``gr.Audio``, which drops chunks whenever the server is
slow). Each recording has its own :class:`~whisper_at.live.LiveTranscriber` on a model of the
server's :class:`ModelCache`, fed with the audio resampled to 16 kHz by a worker thread that
holds the model's lock during each pass, so that requests return at once. The page shows the
committed captions (SDH cues: speech lines and ``[sound]`` lines, as ``whisper-at live`` prints
them), the words not yet in a cue with the tentative tail, and the sound events going on.
Stopping commits the tail; a recording is freed then, or ``IDLE`` seconds after its page stopped
sending (closed, reloaded, offline).
"""

import base64
import html
import inspect
import secrets
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from whisper.audio import SAMPLE_RATE
from whisper.utils import format_timestamp

from .live import Lag, LiveCaptions, LiveTranscriber, Segment, Sound, Tentative, Word
from .serve_models import ModelCache, is_multilingual, model_label, one_line

STEP = 1.0  # s of audio between two passes
MAX_WAITING = 120.0  # s of audio kept for a model busy elsewhere (a long file): then dropped
IDLE = 30.0  # s without a request after which a recording is freed (its page is gone)
MAX_LINES = 500  # caption lines kept for a page that has not fetched them
GATE = 0.5  # speech probability threshold of the speech gate
LAG_SHOWN = 10.0  # s of audio for which the status line says the server fell behind
MAX_RECORDINGS = 16  # at once on a server (each has a thread and up to 25 s of audio)
SCRIPT = Path(__file__).parent / "assets" / "serve_live.js"


class Resampler:
    """Mono chunks (int16 PCM or float) at ``rate`` to 16 kHz float32, continuous across chunks
    (libswresample through PyAV)."""

    def __init__(self, rate: int):
        self.rate = int(rate)
        self.resampler = None
        if self.rate != SAMPLE_RATE:
            import av

            self.resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    def __call__(self, data: Optional[np.ndarray]) -> np.ndarray:
        """Samples at 16 kHz for ``data``; None: the last ones, at the end of the stream."""
        if data is not None and np.issubdtype(data.dtype, np.integer):
            data = data.astype(np.float32) / -np.iinfo(data.dtype).min
        if self.resampler is None:
            return np.zeros(0, np.float32) if data is None else data.astype(np.float32)
        frame = None
        if data is not None:
            import av

            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[None], np.float32),
                                               format="flt", layout="mono")  # fmt: skip
            frame.sample_rate = self.rate
        out = [f.to_ndarray().reshape(-1) for f in self.resampler.resample(frame)]
        return np.concatenate([np.zeros(0, np.float32), *out]).astype(np.float32)


class LiveSession:
    """One recording: its transcriber, fed by a worker thread (passes hold the model's lock),
    and what the page has still to show. ``lock`` guards it; the worker alone uses the
    transcriber."""

    def __init__(self, model, model_lock: threading.Lock, name: str, rate: int,
                 gate: Optional[float], english: bool, on_end=None):  # fmt: skip
        self.live = LiveTranscriber(model, STEP, language="en" if english else None,
                                    at_speech_gate=gate)  # fmt: skip
        self.model_lock, self.name, self.on_end = model_lock, name, on_end
        self.lock = threading.Condition()
        self.captions = LiveCaptions(show=self._show)
        self.resampler = Resampler(rate)
        self.waiting: List[np.ndarray] = []  # 16 kHz audio the worker has not taken yet
        self.stopping = self.ended = self.fetched = False
        self.failure: Optional[str] = None  # why the recording ended, if not stopped
        self.seq = 0  # the next request's number
        self.heard = 0  # samples received (16 kHz)
        self.dropped = 0.0  # s of audio dropped while the model was busy elsewhere
        self.unordered = 0  # requests that did not come in order
        self.lines: List[str] = []  # caption lines the page has not fetched yet
        self.words: List[Word] = []  # committed words not yet in a written cue
        self.tentative = ""
        self.sounds: Dict[Tuple[int, float], Sound] = {}  # going on now
        self.notes: List[str] = [f"speech gate {gate:g}"] if gate is not None else []
        self.lag: Optional[Lag] = None  # the last time the transcriber fell behind
        self.used = time.monotonic()
        self.worker = threading.Thread(target=self._work, name="whisper-at-live", daemon=True)
        self.worker.start()

    def _show(self, line: str):
        self.lines += line.splitlines()
        del self.lines[:-MAX_LINES]

    def add(self, seq: int, pcm: np.ndarray):
        """Request ``seq`` of the page: its samples, left for the worker."""
        with self.lock:
            self.used = time.monotonic()
            if self.stopping:
                return
            self.unordered += seq != self.seq  # (the page sends them one after another)
            self.seq = seq + 1
            samples = self.resampler(pcm)
            self.heard += len(samples)
            self.waiting.append(samples)
            excess = sum(map(len, self.waiting)) - round(MAX_WAITING * SAMPLE_RATE)
            if excess > 0:  # the model has been busy for minutes: the oldest audio goes
                self.waiting = [np.concatenate(self.waiting)[excess:]]
                self.dropped += excess / SAMPLE_RATE
            self.lock.notify_all()

    def stop(self):
        """End of the recording: the rest is fed and the tail committed (waits for it)."""
        with self.lock:
            self.used = time.monotonic()
            if not self.stopping:
                self.waiting.append(self.resampler(None))
                self.stopping = True
                self.lock.notify_all()
            while not self.ended:
                self.lock.wait(timeout=1.0)

    def _take(self) -> Optional[Tuple[np.ndarray, bool]]:
        """(audio, last) for the worker; None when the page has gone quiet for IDLE s."""
        with self.lock:
            while not (self.waiting or self.stopping):
                if time.monotonic() - self.used > IDLE:
                    return None
                self.lock.wait(timeout=1.0)
            audio = np.concatenate(self.waiting) if self.waiting else np.zeros(0, np.float32)
            self.waiting = []
            return audio, self.stopping

    def _work(self):
        """Passes until the end of the recording; then the page has IDLE s to fetch the end."""
        try:
            while not self.ended:
                taken = self._take()
                if taken is None:
                    with self.lock:
                        self._end(f"no audio for {IDLE:g} s")
                    break
                audio, last = taken
                with self.model_lock:
                    events = self.live.feed(audio, catch_up=True) if len(audio) else []
                    if last:
                        events += self.live.finish()
                with self.lock:
                    self._apply(events)
                    if last:
                        self.captions.close()
                        self._end()
        except Exception as e:  # shown on the page; the recording ends
            with self.lock:
                self._end(f"error: {one_line(e)}")
        with self.lock:
            while self.ended and not self.fetched and time.monotonic() - self.used <= IDLE:
                self.lock.wait(timeout=1.0)
            self.live = self.captions = None  # the transcriber's audio goes now
        if self.on_end is not None:
            self.on_end(self)

    def _end(self, failure: Optional[str] = None):
        self.words, self.tentative, self.sounds = [], "", {}
        self.ended = self.stopping = True
        self.failure = failure
        self.lock.notify_all()

    def _apply(self, events: list):
        for event in events:
            if isinstance(event, Segment):
                self.words += event.words
            elif isinstance(event, Tentative):
                self.tentative = event.text
            elif isinstance(event, Sound) and event.end is None:
                self.sounds[(event.index, event.start)] = event
            elif isinstance(event, Sound):
                self.sounds.pop((event.index, event.start), None)
            elif isinstance(event, Lag):
                self.lag = event
        self.captions.add(events)
        self.captions.settle(*self.live.settled)
        if self.captions.last is not None:
            self.words = [w for w in self.words if w.end > self.captions.last[1]]

    def view(self) -> dict:
        """What the page shows: new caption ``lines`` (taken), ``now``, ``sounds``, ``status``."""
        with self.lock:
            waiting = sum(map(len, self.waiting)) / SAMPLE_RATE
            if self.ended:
                status = (f"Ended ({self.failure}): the captions above are all there are"
                          if self.failure else "Stopped: the captions are complete (model "
                          f"{model_label(self.name)})")  # fmt: skip
                self.fetched = True
                self.lock.notify_all()
            else:
                status = (f"Listening: {self.heard / SAMPLE_RATE:.1f} s, model "
                          f"{model_label(self.name)}")  # fmt: skip
                if waiting > 2 * STEP:
                    status += f"; {waiting:.1f} s of audio waiting for the model"
            lag = self.lag
            if lag and not self.ended and self.heard / SAMPLE_RATE - lag.time < LAG_SHOWN:
                status += (f"; behind real time at {lag.time:.1f} s: {lag.behind:.1f} s of audio "
                           "done in one pass")  # fmt: skip
            if self.dropped:
                status += f"; {self.dropped:.1f} s of audio dropped (the model was busy)"
            if self.unordered:
                status += f"; {self.unordered} audio request(s) out of order"
            status += "".join(f"; {note}" for note in self.notes)
            now = " ".join(filter(None, ["".join(w.text for w in self.words).strip(),
                                         self.tentative]))  # fmt: skip
            sounds = [f"{s.label} (from {format_timestamp(s.start)})" +
                      (f": {s.caption}" if s.caption else "")
                      for s in sorted(self.sounds.values(), key=lambda s: s.start)]  # fmt: skip
            lines, self.lines = self.lines, []
            return {"status": status, "lines": lines, "now": now, "sounds": "\n".join(sounds),
                    "ended": self.ended}  # fmt: skip


class LiveSessions:
    """The recordings going on, by the id :meth:`start` gives the page; the server functions
    of the Live tab's page."""

    def __init__(self, cache: ModelCache, choices: List[str]):
        self.cache, self.choices = cache, set(choices)
        self.sessions: Dict[str, LiveSession] = {}
        self.lock = threading.Lock()

    def __len__(self) -> int:
        with self.lock:
            return len(self.sessions)

    def _ended(self, session: LiveSession):
        """A recording's worker has ended: stopped, failed or abandoned."""
        with self.lock:
            for key in [k for k, s in self.sessions.items() if s is session]:
                del self.sessions[key]

    def live_start(self, args: list) -> dict:
        """[model, speech gate (bool), the browser's sample rate] -> {"id"} or {"error"}."""
        name, gate, rate = args
        if name not in self.choices:
            return {"error": f"unknown model {name!r}"}
        if not 8000 <= int(rate) <= 192000:
            return {"error": f"unsupported sample rate {rate!r}"}
        if len(self) >= MAX_RECORDINGS:
            return {"error": f"this server already has {MAX_RECORDINGS} recordings going on: "
                    "try again later"}  # fmt: skip
        try:
            model, model_lock = self.cache.get(name)
        except Exception as e:
            return {"error": f"cannot load model {model_label(name)}: {one_line(e)}"}
        note = ""
        if gate and not getattr(model, "has_at_head", False):
            gate, note = False, f"{model_label(name)} has no audio-tagging head: no speech gate"
        try:
            session = LiveSession(model, model_lock, name, int(rate), GATE if gate else None,
                                  not is_multilingual(model), self._ended)  # fmt: skip
        except (TypeError, ValueError) as e:
            return {"error": f"cannot start: {one_line(e)}"}
        if note:
            session.notes.append(note)
        key = secrets.token_urlsafe(16)
        with self.lock:
            self.sessions[key] = session
        return {"id": key}

    def _session(self, key: str) -> Optional[LiveSession]:
        with self.lock:
            return self.sessions.get(key)

    def live_push(self, args: list) -> dict:
        """[id, request number, base64 of 16-bit little-endian mono PCM] -> what to show."""
        key, seq, pcm = args
        session = self._session(key)
        if session is None:
            return {"error": "this recording has ended (stopped, or idle too long)"}
        session.add(int(seq), np.frombuffer(base64.b64decode(pcm), "<i2"))
        return session.view()

    def live_stop(self, args: list) -> dict:
        """[id] -> the last of the captions: the tail is committed."""
        session = self._session(args[0])
        if session is None:
            return {"error": "this recording has ended (stopped, or idle too long)"}
        session.stop()
        return session.view()


def live_html(choices: List[str], model: str) -> str:
    options = "".join(f'<option value="{html.escape(m)}"{" selected" * (m == model)}>'
                      f"{html.escape(model_label(m))}</option>" for m in choices)  # fmt: skip
    return f"""<div class="wat-live">
<p>Captions of the microphone as you speak, with the sounds heard: press <b>Record</b>, allow
the microphone, and speak; <b>Stop</b> commits the last words.</p>
<div class="wat-controls">
 <button class="wat-record lg primary">Record</button>
 <button class="wat-stop lg secondary" disabled>Stop</button>
 <button class="wat-clear lg secondary">Clear</button>
 <label>Model <select class="wat-model">{options}</select></label>
 <label><input type="checkbox" class="wat-gate"> No captions in non-speech (speech gate)</label>
</div>
<p class="wat-status" id="live-status">Press <b>Record</b> to start.</p>
<label>Captions<textarea class="wat-captions" id="live-captions" rows="12" readonly></textarea>
</label>
<label>Now (the last words may still change)
<textarea class="wat-now" id="live-now" rows="2" readonly></textarea></label>
<label>Sounds now<textarea class="wat-sounds" id="live-sounds" rows="3" readonly></textarea>
</label></div>"""


CSS = """.wat-live textarea { width: 100%; font-family: ui-monospace, monospace; }
.wat-live textarea, .wat-live select { background: var(--input-background-fill);
  color: var(--body-text-color); border: 1px solid var(--border-color-primary);
  border-radius: var(--input-radius); padding: 0.4em; }
.wat-live .wat-controls { display: flex; gap: 1em; align-items: center; flex-wrap: wrap; }
.wat-live button { padding: 0.4em 1.2em; } .wat-live label { display: block; margin: 0.4em 0; }
.wat-live .wat-controls label { display: inline; }"""


def build_live_tab(cache: ModelCache, choices: List[str], model: str) -> LiveSessions:
    """The Live tab's page, inside a ``gr.Blocks`` being built; the recordings it serves."""
    import gradio as gr

    sessions = LiveSessions(cache, choices)
    if "server_functions" not in inspect.signature(gr.HTML.__init__).parameters:
        gr.Markdown(f"The Live tab needs a newer Gradio than {gr.__version__} (gr.HTML with "
                    "server functions): `pip install -U 'gradio>=6.7,<7'`.")  # fmt: skip
        return sessions

    def live_start(args):  # Gradio marks server functions: plain functions, not methods
        return sessions.live_start(args)

    def live_push(args):
        return sessions.live_push(args)

    def live_stop(args):
        return sessions.live_stop(args)

    page = live_html(choices, model).replace("$", "&#36;").replace("{", "&#123;")  # templates
    gr.HTML(html_template=page, css_template=CSS,
            js_on_load=SCRIPT.read_text(encoding="utf-8"),
            server_functions=[live_start, live_push, live_stop], elem_id="live")  # fmt: skip
    return sessions
