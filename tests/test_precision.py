"""``at_compute_type`` for tagging only: the precision choice (``whisper_at.precision``, shared
with the faster-whisper backend) and ``model.tag`` in float32 / auto / bfloat16, on real tiny.en
weights and espeak-ng audio."""

import sys
from pathlib import Path

import pytest
import torch

from whisper_at.audio_io import as_audio
from whisper_at.mel import MelWindows
from whisper_at.precision import (
    COMPUTE_TYPES,
    autocast_dtype,
    cpuinfo_flags,
    encoder_dtype,
    native_bfloat16,
)
from whisper_at.tagging import ChunkTagger, tag

CPU, CUDA = torch.device("cpu"), torch.device("cuda")

# /proc/cpuinfo excerpts (one core each): a Sapphire Rapids Xeon (AVX512-BF16 and AMX), a Zen 4
# EPYC (AVX512-BF16, no AMX), a Zen 3 EPYC and an Ice Lake Xeon (AVX-512 without BF16)
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme de pse tsc msr avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 \
avx512_fp16 amx_bf16 amx_tile amx_int8 arch_lbr
bugs\t\t: spectre_v1 spectre_v2
"""
ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu vme de pse avx2 avx512f avx512dq avx512_bf16 avx512vbmi2 avx512_vnni
"""
ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr fma avx2 sha_ni
"""
ICE_LAKE = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu avx2 avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_vnni
bugs\t\t: spectre_v1 avx512_bf16_in_bugs_line_is_not_a_flag
"""


def test_cpu_flags_decide_auto():
    assert {"avx512_bf16", "amx_bf16", "amx_tile"} <= cpuinfo_flags(SAPPHIRE_RAPIDS)
    assert "spectre_v1" not in cpuinfo_flags(SAPPHIRE_RAPIDS)  # the bugs line is not flags
    expected = {SAPPHIRE_RAPIDS: torch.bfloat16, ZEN4: torch.bfloat16, ZEN3: torch.float32,
                ICE_LAKE: torch.float32, "": torch.float32}
    for cpuinfo, dtype in expected.items():
        native = native_bfloat16(cpuinfo)
        assert native == (dtype == torch.bfloat16), cpuinfo
        assert encoder_dtype(CPU, "auto", native_bf16=native) == dtype, cpuinfo
        # on request, whatever the CPU
        assert encoder_dtype(CPU, "bfloat16", native_bf16=native) == torch.bfloat16
        assert encoder_dtype(CPU, "float32", native_bf16=native) == torch.float32
        assert encoder_dtype(CUDA, "auto", native_bf16=native) == torch.float16
    assert encoder_dtype(CUDA, "float32") == torch.float32
    assert encoder_dtype(torch.device("mps"), "auto", native_bf16=True) == torch.float32
    assert encoder_dtype(CUDA, "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match=r"at_compute_type='float16' needs CUDA"):
        encoder_dtype(CPU, "float16")
    for bad in ("int8", "float64", "fp16", None, torch.float16):
        with pytest.raises(ValueError, match="at_compute_type must be one of"):
            encoder_dtype(CPU, bad)
    assert COMPUTE_TYPES == ("auto", "float32", "bfloat16", "float16")
    # only a precision below the weights' is autocast
    assert autocast_dtype(torch.bfloat16, torch.float32) == torch.bfloat16
    assert autocast_dtype(torch.float16, torch.float32) == torch.float16
    assert autocast_dtype(torch.float32, torch.float32) is None
    assert autocast_dtype(torch.float16, torch.float16) is None


@pytest.mark.skipif(not (sys.platform.startswith("linux") and Path("/proc/cpuinfo").is_file()),
                    reason="reads /proc/cpuinfo")
def test_this_machine_torch_and_cpuinfo_agree():
    """torch's own checks (what native_bfloat16() uses) and this machine's /proc/cpuinfo flags
    say the same (here: no native bfloat16, so "auto" is float32 on this CPU)."""
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    if not cpuinfo_flags(cpuinfo):
        pytest.skip("no x86 flags line in /proc/cpuinfo")
    assert native_bfloat16() == native_bfloat16(cpuinfo)
    auto = encoder_dtype(CPU, "auto")
    assert auto == (torch.bfloat16 if native_bfloat16() else torch.float32)


def _tag_as_before(model, audio):
    """model.tag's rows computed as before at_compute_type existed: windows encoded in the
    weights' dtype (float32), no autocast, straight into ChunkTagger."""
    mel = MelWindows(as_audio(audio), model.dims.n_mels, 3000)
    tagger = ChunkTagger(model.at_model, mel.content_frames, 10)
    for seek, window in mel:
        _, pooled = model.embed_audio_with_layers(window[None])
        tagger.add_window(seek, pooled[0])
    return tagger.finish()


@pytest.fixture(scope="module")
def float32_tags(tiny_at, long_speech_wav):
    return tiny_at.tag(str(long_speech_wav), at_compute_type="float32")["audio_tag"]


@pytest.fixture(scope="module")
def bfloat16_tags(tiny_at, long_speech_wav):
    return tiny_at.tag(str(long_speech_wav), at_compute_type="bfloat16")["audio_tag"]


def test_float32_and_auto_are_todays_tags(tiny_at, long_speech_wav, float32_tags,
                                          bfloat16_tags):  # fmt: skip
    before = _tag_as_before(tiny_at, str(long_speech_wav))
    assert float32_tags.dtype == torch.float32 and float32_tags.shape == (7, 527)
    assert torch.equal(float32_tags, before)  # bit for bit
    auto = tiny_at.tag(str(long_speech_wav))["audio_tag"]  # the default
    assert torch.equal(auto, bfloat16_tags if native_bfloat16() else float32_tags)


def test_bfloat16_on_request_is_close_to_float32(tiny_at, long_speech_wav, float32_tags,
                                                 bfloat16_tags, capsys):  # fmt: skip
    import testkit

    assert bfloat16_tags.dtype == torch.float32 and bfloat16_tags.shape == float32_tags.shape
    assert not torch.equal(bfloat16_tags, float32_tags)  # it did compute in bfloat16
    stats = testkit.logit_agreement(float32_tags, bfloat16_tags)
    with capsys.disabled():
        print("\nbfloat16 vs float32 tags, tiny.en + random head, 61 s: " +
              ", ".join(f"{k} {v:.4f}" for k, v in stats.items()))
    # measured here: max 0.031, mean 0.0046, top-1 7/7, top-5 sets equal on 7/7 rows
    assert stats["max"] < 0.1 and stats["mean"] < 0.02, stats
    assert stats["top1"] >= 6 / 7 and stats["topk_overlap"] >= 0.8, stats
    # the model is left as it was: float32 weights, float32 head, transcribe's encoder
    assert {p.dtype for p in tiny_at.parameters()} == {torch.float32}
    assert torch.equal(tiny_at.tag(str(long_speech_wav), at_compute_type="float32")["audio_tag"],
                       float32_tags)


def test_bfloat16_with_the_trained_speech_head(tiny_speech, gate_wav, capsys):
    """With a head that means something (speech vs tone vs noise): the same classes lead and
    speech probabilities move by less than 0.01."""
    import testkit

    path, _ = gate_wav
    f32 = tiny_speech.tag(str(path), at_compute_type="float32")["audio_tag"]
    bf16 = tiny_speech.tag(str(path), at_compute_type="bfloat16")["audio_tag"]
    stats = testkit.logit_agreement(f32, bf16)
    speech = (f32[:, 0].sigmoid() - bf16[:, 0].sigmoid()).abs().max().item()
    with capsys.disabled():
        print("\nbfloat16 vs float32 tags, tiny.en + speech head, 93 s: " +
              ", ".join(f"{k} {v:.4f}" for k, v in stats.items()) +
              f", speech probability max |diff| {speech:.4f}")
    assert stats["max"] < 0.2 and stats["top1"] == 1.0 and stats["topk_overlap"] >= 0.8, stats
    assert speech < 0.01


def test_float16_on_cpu_and_bad_values_are_refused(tiny_at, speech_wav):
    with pytest.raises(ValueError, match=r"at_compute_type='float16' needs CUDA; on CPU use"):
        tiny_at.tag(str(speech_wav), at_compute_type="float16")
    with pytest.raises(ValueError, match=r"at_compute_type must be one of .*got 'int8'"):
        tag(tiny_at, str(speech_wav), at_compute_type="int8")
