"""Where live audio comes from: the microphone (sounddevice), stdin (raw 16 kHz mono s16le, or
a container ffmpeg decodes), or a file or URL read through ffmpeg, optionally paced at real
time. Each source is read by a thread into a queue of int16 chunks; problems become
:class:`SourceError` with a one-line message."""

import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from typing import BinaryIO, Iterator, Optional

import numpy as np
from whisper.audio import SAMPLE_RATE

from ..audio_io import _ffmpeg_error

CHUNK = SAMPLE_RATE // 10  # samples per chunk read (0.1 s)
PACE_SLACK = 3.0  # s of delivery no faster than real time after which a live source is paced
START_BURST = 6.0  # s: a live stream's start may come at once (ffmpeg reads up to ~5 s of a
# stream from a URL before it decodes any); a source that gets further ahead is not live
BACKLOG = 64  # chunks queued at most from a source that is not live (it waits for the reader)
MAGIC = (b"RIFF", b"OggS", b"fLaC", b"ID3", b"\x1a\x45\xdf\xa3", b"FORM", b"caff")
END = None  # queued after the last chunk


class SourceError(RuntimeError):
    """The source cannot be read (one line)."""


def is_container(head: bytes) -> bool:
    """Whether stdin starts like an audio file (WAV, Ogg, FLAC, MP3, Matroska/WebM, AIFF, CAF,
    MP4) rather than raw PCM."""
    mp3 = len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0
    return head.startswith(MAGIC) or mp3 or head[4:8] == b"ftyp"


def looks_like_float(head: bytes) -> bool:
    """Raw 32-bit float samples read as 16-bit: the upper half of a float in [-1, 1] (not 0)
    has a sign-and-exponent byte of 0x38..0x3f or 0xb8..0xbf (|x| >= 2^-15); in 16-bit PCM
    every other sample would have to lie near +-16000."""
    pairs = np.frombuffer(head[: len(head) // 4 * 4], "<u4")
    pairs = pairs[pairs != 0]
    if len(pairs) < 100:
        return False
    high = (pairs >> 24) & 0x7F
    return float(np.mean((high >= 0x38) & (high <= 0x3F))) > 0.95


class Source:
    """Chunks of int16 samples from a reader thread; ``live``: may arrive at real-time pace;
    ``steady``: does, by construction (a microphone; a source we pace, ``--realtime``). A live
    source never waits to queue a chunk (a microphone would lose audio); one that is not, or
    turns out not to be (a file piped in or downloaded arrives in a burst), waits while
    ``BACKLOG`` chunks are queued, so memory stays bounded however long it is."""

    def __init__(self, name: str, live: bool, steady: bool = False):
        self.name, self.live, self.steady = name, live or steady, steady
        self.queue: "queue.Queue" = queue.Queue(maxsize=0 if self.live else BACKLOG)
        self.error: Optional[str] = None
        self.closed = threading.Event()
        self.begun: Optional[float] = None  # when the first samples arrived
        self.received = 0
        self.ahead = False  # it once delivered more than real time allows: a file, not live

    def paced(self) -> bool:
        """Whether the audio arrives at real-time pace (so that audio waiting means the
        consumer is behind): a live source that has been delivering for PACE_SLACK seconds and
        never more than the time elapsed since its first samples plus START_BURST (a file piped
        into stdin arrives in a burst: it is not live); a steady source from the start."""
        if self.steady:
            return True
        if not self.live or self.begun is None or self.ahead:
            return False
        return time.monotonic() - self.begun >= PACE_SLACK

    def put(self, chunk) -> bool:
        """Queue a chunk; False once the source is closed."""
        while not self.closed.is_set():
            try:
                self.queue.put(chunk, timeout=0.1)
                if chunk is not END:
                    now = time.monotonic()
                    self.begun = now if self.begun is None else self.begun
                    self.received += len(chunk)
                    self.ahead |= self.received / SAMPLE_RATE > now - self.begun + START_BURST
                    if self.ahead and not self.steady:  # not live after all: bounded from now
                        self.queue.maxsize = BACKLOG
                return True
            except queue.Full:
                continue
        return False

    def fail(self, message: str):
        self.error = message
        self.put(END)

    def chunks(self) -> Iterator[list]:
        """Lists of the chunks waiting (at least one), until the end; raises SourceError."""
        while True:
            batch = [self.queue.get()]
            while True:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            ended = any(c is END for c in batch)
            batch = [c for c in batch if c is not END]
            if batch:
                yield batch
            if ended:
                if self.error:
                    raise SourceError(self.error)
                return

    def close(self):
        self.closed.set()


def _read_pcm(source: Source, stream: BinaryIO, realtime: bool, head: bytes = b"") -> str:
    """Read s16le from ``stream`` into ``source`` (paced at real time if asked) until its end
    or the source closes; the problem, if any ("": none)."""
    start, sent, pending = time.monotonic(), 0, head
    while not source.closed.is_set():
        data = stream.read(CHUNK * 2)
        pending += data
        cut = len(pending) // 2 * 2
        if cut and (len(pending) >= CHUNK * 2 or not data):
            samples = np.frombuffer(pending[:cut], "<i2").copy()
            pending = pending[cut:]
            if realtime:
                time.sleep(max(0.0, start + sent / SAMPLE_RATE - time.monotonic()))
            sent += len(samples)
            source.put(samples)
        if not data:
            break
    if pending:
        return (f"{source.name}: raw PCM ended mid-sample (an odd number of bytes): expected "
                "16 kHz mono 16-bit little-endian (s16le)")  # fmt: skip
    return ""


def _finish(source: Source, problem: str):
    if problem:
        source.fail(problem)
    else:
        source.put(END)


def _pcm_reader(source: Source, stream: BinaryIO, realtime: bool, head: bytes):
    _finish(source, _read_pcm(source, stream, realtime, head))


def _ffmpeg(name: str, stdin: bool = False) -> subprocess.Popen:
    if shutil.which("ffmpeg") is None:
        raise SourceError(f"reading {name} needs ffmpeg on PATH (or raw 16 kHz s16le on stdin)")
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-loglevel",
        "error",
        "-analyzeduration",
        "1000000",
        "-i",
        "pipe:0" if stdin else name,
        "-f",
        "s16le",
        "-ac",
        "1",
        "-acodec",
        "pcm_s16le",
        "-ar",
        str(SAMPLE_RATE),
        "-",
    ]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _ffmpeg_reader(source: Source, proc: subprocess.Popen, realtime: bool, label: str):
    stderr: list = []
    drain = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    drain.start()
    try:
        problem = _read_pcm(source, proc.stdout, realtime)
    finally:
        if source.closed.is_set():
            proc.kill()
        proc.wait()
        drain.join()
    if proc.returncode != 0 and not source.closed.is_set():
        problem = _ffmpeg_error(label, stderr[0] if stderr else b"")
        problem = problem.replace("cannot decode audio file", "cannot read")
    _finish(source, problem)


def _feed_stdin(proc: subprocess.Popen, head: bytes, stream: BinaryIO):
    try:
        proc.stdin.write(head)
        while data := stream.read(1 << 16):
            proc.stdin.write(data)
    except (BrokenPipeError, OSError):
        pass
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass


def _start(target, *args) -> None:
    threading.Thread(target=target, args=args, daemon=True).start()


def open_stdin(realtime: bool = False, stream: Optional[BinaryIO] = None) -> Source:
    """``-``: raw 16 kHz mono s16le, or an audio container (decoded by ffmpeg)."""
    stream = stream or sys.stdin.buffer
    head = stream.read(2 * SAMPLE_RATE)  # 1 s of s16le
    if is_container(head):
        source = Source("stdin", live=True, steady=realtime)
        proc = _ffmpeg("stdin", stdin=True)
        _start(_feed_stdin, proc, head, stream)
        _start(_ffmpeg_reader, source, proc, realtime, "stdin")
        return source
    if looks_like_float(head):
        raise SourceError("stdin looks like 32-bit float samples: send 16 kHz mono 16-bit "
                          "little-endian PCM (ffmpeg ... -f s16le -ac 1 -ar 16000 -) or a "
                          "container such as WAV")  # fmt: skip
    source = Source("stdin", live=True, steady=realtime)
    _start(_pcm_reader, source, stream, realtime, head)
    return source


def open_file(name: str, realtime: bool = False) -> Source:
    """A file or URL, decoded by ffmpeg; ``realtime``: paced at real time. A URL may be a live
    stream (internet radio, a stream server): it counts as real-time paced once it has
    delivered for ``PACE_SLACK`` s no faster than real time (its first seconds may come at
    once), as stdin does."""
    url = "://" in name
    if not url and not os.path.isfile(name):
        raise SourceError(f"audio file not found: {name}")
    source = Source(name, live=realtime or url, steady=realtime)
    proc = _ffmpeg(name)
    _start(_ffmpeg_reader, source, proc, realtime, name)
    return source


def _sounddevice():
    try:
        import sounddevice
    except (ImportError, OSError) as e:  # OSError: the library is there, PortAudio is not
        detail = "" if isinstance(e, ImportError) else f" ({' '.join(str(e).split())})"
        raise SourceError("microphone input needs sounddevice and PortAudio: pip install "
                          f"'whisper-at[live]'{detail}; or give a file, URL or - for stdin"
                          ) from None  # fmt: skip
    return sounddevice


def open_microphone(device=None) -> Source:
    """The default (or named) input device, 16 kHz mono int16, via sounddevice."""
    sounddevice = _sounddevice()
    source = Source("microphone", live=True, steady=True)

    def callback(data, frames, when, status):
        source.put(data[:, 0].copy())

    try:
        sounddevice.check_input_settings(device=device, channels=1, dtype="int16",
                                         samplerate=SAMPLE_RATE)  # fmt: skip
        stream = sounddevice.InputStream(device=device, channels=1, dtype="int16",
                                         samplerate=SAMPLE_RATE, blocksize=CHUNK,
                                         callback=callback)  # fmt: skip
        stream.start()
    except Exception as e:
        raise SourceError(f"no usable microphone: {' '.join(str(e).split())}") from None
    closing = source.close

    def close():
        closing()
        stream.stop()
        stream.close()

    source.close = close
    return source


def check_source(name: Optional[str]):
    """Problems found before a model is loaded: a missing file, microphone library or ffmpeg."""
    if name is None:
        _sounddevice()
    elif name != "-" and "://" not in name and not os.path.isfile(name):
        raise SourceError(f"audio file not found: {name}")
    elif name != "-" and shutil.which("ffmpeg") is None:
        raise SourceError(f"reading {name} needs ffmpeg on PATH")


def open_source(name: Optional[str], realtime: bool = False, device=None) -> Source:
    if name is None:
        return open_microphone(device)
    if name == "-":
        return open_stdin(realtime)
    return open_file(name, realtime)
