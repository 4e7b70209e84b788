"""whisper_at.live and ``whisper-at live``: real tiny.en (int8 CTranslate2 and the OpenAI
checkpoint), the speech head the tests train, espeak-ng speech and sox tones and noise."""

from pathlib import Path

import numpy as np
import pytest
import testkit

from whisper_at.live import Lag, LiveTranscriber, Segment, Skipped, Sound, Tentative
from whisper_at.research.noise import word_error_rate

RATE = 16000
SPEECH = testkit.SENTENCES[1:3]  # about 9 s with the pause


@pytest.fixture(scope="module")
def fw_speech(ct2_tiny_en_dir: Path, speech_head_file: Path):
    """faster-whisper tiny.en int8 with the trained speech head."""
    from whisper_at.faster import WhisperModel

    return WhisperModel(str(ct2_tiny_en_dir), compute_type="int8", cpu_threads=2,
                        at_head=str(speech_head_file))  # fmt: skip


@pytest.fixture(scope="module")
def speech_audio(tmp_path_factory) -> np.ndarray:
    """Two espeak-ng sentences, 1 s of silence after each (~11 s)."""
    work = tmp_path_factory.mktemp("live_speech")
    parts = []
    for i, text in enumerate(SPEECH):
        parts += [testkit.read_wav(testkit.espeak(text, work / f"{i}.wav")), np.zeros(RATE)]
    return np.concatenate(parts).astype(np.float32)


@pytest.fixture(scope="module")
def mixed_audio(tmp_path_factory):
    """(audio, tone onset s, tone end s): a sentence, 0.5 s of silence, 5 s of a 440 Hz tone,
    4 s of white noise, 2 s of digital silence."""
    work = tmp_path_factory.mktemp("live_mixed")
    speech = testkit.read_wav(testkit.espeak(testkit.SENTENCES[3], work / "s.wav"))
    tone = testkit.read_wav(testkit.synth(work / "tone.wav", 5, "sine", "440", "vol", "0.3"))
    noise = testkit.read_wav(testkit.synth(work / "noise.wav", 4, "whitenoise", "vol", "0.05"))
    onset = (len(speech) + RATE // 2) / RATE
    audio = np.concatenate([speech, np.zeros(RATE // 2), tone, noise, np.zeros(2 * RATE)])
    return audio.astype(np.float32), onset, onset + 5


def _chunks(audio: np.ndarray, sizes):
    at, i = 0, 0
    while at < len(audio):
        yield audio[at : at + sizes[i % len(sizes)]]
        at += sizes[i % len(sizes)]
        i += 1


def _run(model, audio, sizes, **options):
    """[(seconds fed when reported, event)] of a whole stream fed in chunks of ``sizes``."""
    live = LiveTranscriber(model, **options)
    timed = []
    for chunk in _chunks(audio, sizes):
        timed += [(live.time, e) for e in live.feed(chunk)]
    return timed + [(live.time, e) for e in live.finish()], live


def _committed(timed) -> str:
    return " ".join(e.text for _, e in timed if isinstance(e, Segment))


@pytest.fixture(scope="module")
def speech_runs(fw_speech, speech_audio):
    """The speech stream fed in 0.2-1.7 s chunks of odd sizes, and in one piece."""
    odd = _run(fw_speech, speech_audio, [3277, 27000, 16001, 9000])
    whole = _run(fw_speech, speech_audio, [len(speech_audio)])
    return odd, whole


def test_chunk_sizes_give_the_same_events(speech_runs):
    (odd, live), (whole, _) = speech_runs
    assert [e for _, e in odd] == [e for _, e in whole]
    assert live.passes == int(live.time) + 1  # every whole second, then the rest at the end


def test_commits_as_it_goes_and_everything_at_the_end(fw_speech, speech_audio, speech_runs):
    (timed, live), _ = speech_runs
    segments = [(t, e) for t, e in timed if isinstance(e, Segment)]
    assert len(segments) >= 4  # committed as the stream goes, not only at the end
    assert segments[0][0] < 5.0
    words = [w for _, s in segments for w in s.words]
    assert all(a.end <= b.start + 0.1 for a, b in zip(words, words[1:]))  # in order, no repeats
    for t, s in segments:
        assert s.final and s.end <= t  # never ahead of the audio fed
    # every word committed: the stream's text is the offline transcript's, and the reference's
    offline, _ = fw_speech.transcribe(speech_audio, beam_size=1, temperature=0.0,
                                      language="en")  # fmt: skip
    offline = " ".join(s.text for s in offline)
    assert word_error_rate([offline], [_committed(timed)]) <= 0.15, (offline, _committed(timed))
    assert word_error_rate([" ".join(SPEECH)], [_committed(timed)]) <= 0.15
    tentative = [e for _, e in timed if isinstance(e, Tentative)]
    assert tentative and tentative[-1].words == ()  # the tail is cleared at the end
    assert not [e for _, e in timed if isinstance(e, (Lag, Skipped))]


def test_gate_commits_no_words_in_tone_noise_and_silence(fw_speech, mixed_audio):
    audio, onset, tone_end = mixed_audio
    timed, live = _run(fw_speech, audio, [RATE // 2], at_speech_gate=0.5)
    words = [w for _, e in timed if isinstance(e, Segment) for w in e.words]
    assert word_error_rate([testkit.SENTENCES[3]], [_committed(timed)]) <= 0.25
    assert words and all(w.end <= onset + 0.5 for w in words), words  # none in the non-speech
    skipped = [e for _, e in timed if isinstance(e, Skipped)]
    assert skipped and skipped[0].start <= tone_end and skipped[-1].end >= len(audio) / RATE - 1
    assert len(live.audio) <= 3 * RATE  # the non-speech left the buffer
    # the tone: a sound event whose start is near the truth, reported soon after it
    tone = [(t, e) for t, e in timed if isinstance(e, Sound) and e.caption == "tone"]
    assert tone, [e for _, e in timed if isinstance(e, Sound)]
    (reported, start), ended = tone[0], [e for _, e in tone if e.end is not None]
    assert abs(start.start - onset) <= 1.0, start
    assert reported - onset <= 2.5  # onset latency: the row ends, then the next step
    assert ended and abs(ended[0].end - tone_end) <= 1.5, ended


def test_no_gate_stream_of_silence_commits_nothing(fw_speech):
    timed, _ = _run(fw_speech, np.zeros(6 * RATE, np.float32), [RATE])
    assert not [e for _, e in timed if isinstance(e, Segment)]


def test_catch_up_merges_steps(fw_speech, speech_audio):
    live = LiveTranscriber(fw_speech)
    events = live.feed(speech_audio[: 6 * RATE], catch_up=True)
    assert isinstance(events[0], Lag) and events[0].merged == 6 and events[0].behind == 6.0
    assert live.passes == 1
    events += live.feed(speech_audio[6 * RATE :], catch_up=True) + live.finish()
    assert live.passes == 3
    assert word_error_rate([" ".join(SPEECH)], [_committed([(0, e) for e in events])]) <= 0.25


def test_openai_backend(tiny_speech, speech_audio):
    audio = speech_audio[: 6 * RATE]  # the first sentence
    timed, live = _run(tiny_speech, audio, [RATE], step=1.5, at_speech_gate=0.5)
    offline = tiny_speech.transcribe(audio, temperature=0.0, at_speech_gate=0.5)["text"]
    assert word_error_rate([offline], [_committed(timed)]) <= 0.15, _committed(timed)
    assert live.passes == 4  # at 1.5, 3, 4.5 and 6 s: nothing is left for finish()


def test_bad_input(fw_speech):
    live = LiveTranscriber(fw_speech)
    with pytest.raises(ValueError, match="mono"):
        live.feed(np.zeros((2, 100), np.float32))
    with pytest.raises(TypeError, match="int16"):
        live.feed(np.zeros(100, np.int32))
    live.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        live.feed(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="step"):
        LiveTranscriber(fw_speech, step=0)
    with pytest.raises(ValueError, match="at_speech_gate"):
        LiveTranscriber(fw_speech, at_speech_gate=2)
