"""The documented examples run, in their offline form (local backbone + local head)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_offline_with_ct2_directory(ct2_tiny_en_dir, tiny_head_file):
    script, audio = ROOT / "examples" / "quickstart.py", ROOT / "examples" / "speech.wav"
    out = subprocess.run(
        [sys.executable, str(script), str(audio),
         "--model", str(ct2_tiny_en_dir), "--at_head", str(tiny_head_file)],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=600,
    )
    lines = out.stdout.strip().splitlines()
    assert "music" in lines[0].lower() and "laughter" in lines[0].lower()  # the spoken sentence
    # 12 s of audio at 10 s resolution: two chunks, each with three labels
    assert lines[1].startswith("0s-10s: ") and lines[2].startswith("10s-20s: ")
    assert all(len(re.findall(r"\((-?\d+\.\d)\)", line)) == 3 for line in lines[1:3])
    assert len(lines) == 3
