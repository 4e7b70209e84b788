#!/usr/bin/env bash
# Install what the test suite needs on a Debian or Ubuntu machine; the README's second command is
#   tests/install.sh && .venv/bin/python -m pytest -q
#
# System packages, through apt-get (with sudo when not root), each only when missing:
#   python3 and python3-venv (Debian and Ubuntu ship neither pip nor venv's ensurepip by default,
#   and refuse pip installs outside a virtual environment), espeak-ng (test speech), sox +
#   libsox-fmt-all (tones, noise, mixes, formats), ffmpeg (the decoder openai-whisper uses), and
#   Chromium for the web-demo test: Debian's chromium package; on Ubuntu, whose chromium packages
#   are snap shims that do not run in containers, Playwright's own build (python -m playwright
#   install --with-deps chromium); libatomic1, without which Playwright's driver (a Node.js binary
#   in the pip package) does not start on a slim system.
# Python, into the virtual environment .venv of this checkout (created with python3 -m venv when
#   missing), or into the environment of $PYTHON when set (then run the tests with
#   "$PYTHON" -m pytest -q): torch==2.13.0 when no torch is installed (unpinned, pip would take
#   the newest), then this checkout, editable, with its test extra, unless an editable install of
#   this checkout and every requirement are there already.
# whisperX (its tests: tests/test_whisperx.py) pins torch 2.8, older than the tests' torch: it gets a
#   virtual environment of its own, .venv-whisperx (whisperx==3.8.6, its CUDA build of torch from
#   PyPI, about 7.5 GB, and this checkout, editable); WHISPER_AT_SKIP_WHISPERX=1 leaves it out
#   (the whisperX tests then skip, saying so).
# Running it again installs nothing and takes a second or two.
#   tests/install.sh --check    only report what is missing (exit status 1 if anything is)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv  # the README runs the tests with .venv/bin/python
WX_VENV=.venv-whisperx  # tests/test_whisperx.py runs whisperX with its Python
WHISPERX=whisperx==3.8.6
PYTHON=${PYTHON:-}
CHECK=0
case "${1:-}" in
    "") ;;
    --check) CHECK=1 ;;
    *) echo "usage: tests/install.sh [--check]" >&2; exit 2 ;;
esac

say() { echo "tests/install.sh: $*" >&2; }

if [ -n "$PYTHON" ] && ! command -v "$PYTHON" >/dev/null; then
    say "PYTHON=$PYTHON not found: name the interpreter (3.9 or newer, with pip) of the" \
        "environment that runs the tests, or unset PYTHON to use $VENV"
    exit 1
fi

is_ubuntu() {  # Ubuntu or a derivative (ID_LIKE=ubuntu)
    [ -r /etc/os-release ] && (. /etc/os-release && [[ " ${ID:-} ${ID_LIKE:-} " == *" ubuntu "* ]])
}

have_deb() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q " installed$"; }

system_chromium() {  # a Chromium that runs, and is not a snap (Playwright cannot drive those)
    local path real
    path=$(command -v chromium) || return 1
    real=$(readlink -f "$path")  # a snap: /snap/bin/chromium -> /usr/bin/snap
    [[ $path != /snap/* && $real != /snap/* && ${real##*/} != snap ]] &&
        timeout 60 "$path" --version >/dev/null 2>&1
}

playwright_chromium() {  # Playwright's own Chromium build is installed
    "$PYTHON" - 2>/dev/null <<'EOF'
import os, sys
from playwright.sync_api import sync_playwright
with sync_playwright() as p:
    sys.exit(0 if os.path.exists(p.chromium.executable_path) else 1)
EOF
}

python_missing() {  # prints the unmet Python requirements of this checkout, one a line
    "$PYTHON" - <<'EOF'
import importlib.metadata as metadata
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

# not this checkout: the whisper_at.egg-info that pip leaves here is not the installed copy
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.getcwd()]
try:
    from packaging.requirements import Requirement
    try:
        import tomllib
    except ImportError:
        import tomli as tomllib
except ImportError as e:  # pip installs them with the test extra
    sys.exit(print(e.name) or 1)

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
unmet, seen = [], set()


def check(text, extra=""):
    req = Requirement(text)
    if text in seen or (req.marker and not req.marker.evaluate({"extra": extra})):
        return
    seen.add(text)
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        return unmet.append(text)
    if not req.specifier.contains(version, prereleases=True):
        return unmet.append(f"{text} (found {version})")
    for name in req.extras:  # e.g. ray[data]: the extra's own requirements
        for sub in metadata.requires(req.name) or []:
            marker = Requirement(sub).marker
            if marker and marker.evaluate({"extra": name}) and not marker.evaluate({"extra": ""}):
                check(sub, name)


try:
    direct_url = json.loads(metadata.distribution(project["name"]).read_text("direct_url.json")
                            or "{}")
    source = Path(url2pathname(urlparse(direct_url.get("url", "")).path))
    if not direct_url.get("dir_info", {}).get("editable"):
        unmet.append(f"{project['name']} (installed, but not editable)")
    elif source.resolve() != Path.cwd().resolve():  # symlinked paths compare alike
        unmet.append(f"{project['name']} (installed from {direct_url.get('url')}, not here)")
except metadata.PackageNotFoundError:
    unmet.append(project["name"])
for text in project["dependencies"] + project["optional-dependencies"]["test"]:
    check(text)
print("\n".join(unmet))
sys.exit(1 if unmet else 0)
EOF
}

# ---------------------------------------------------------------- what is missing
packages=()
venv=ok
if [ -z "$PYTHON" ]; then
    PYTHON=$VENV/bin/python
    if ! [ -x "$PYTHON" ]; then
        venv=missing
        if ! command -v python3 >/dev/null; then
            packages+=(python3 python3-venv)
        elif ! python3 -c "import ensurepip, venv" 2>/dev/null; then
            packages+=(python3-venv)  # Debian's python3 leaves ensurepip to this package
        fi
    fi
fi
command -v espeak-ng >/dev/null || packages+=(espeak-ng)
command -v sox >/dev/null || packages+=(sox)
if command -v dpkg-query >/dev/null && ! have_deb libsox-fmt-all; then packages+=(libsox-fmt-all); fi
command -v ffmpeg >/dev/null || packages+=(ffmpeg)
if command -v dpkg-query >/dev/null && ! have_deb libatomic1; then packages+=(libatomic1); fi
browser=ok
if ! system_chromium; then
    if ! is_ubuntu; then
        packages+=(chromium)
    elif [ "$venv" != ok ] || ! playwright_chromium; then
        browser=playwright
    fi
fi
whisperx_ready() {  # whisperX, and this checkout (editable), import in $WX_VENV
    [ -x "$WX_VENV/bin/python" ] && "$WX_VENV/bin/python" - 2>/dev/null <<'EOF'
import os, sys
import whisperx  # noqa: F401
import whisper_at
sys.exit(os.path.dirname(os.path.realpath(whisper_at.__file__)) != os.path.realpath("whisper_at"))
EOF
}
whisperx=ok
if [ -z "${WHISPER_AT_SKIP_WHISPERX:-}" ] && ! whisperx_ready; then
    whisperx=missing
    if ! [ -x "$WX_VENV/bin/python" ] && command -v python3 >/dev/null &&
            ! python3 -c "import ensurepip, venv" 2>/dev/null &&
            [[ " ${packages[*]} " != *" python3-venv "* ]]; then
        packages+=(python3-venv)  # python3 -m venv makes whisperX's environment too
    fi
fi
torch=ok
python=ok
if [ "$venv" = ok ]; then
    "$PYTHON" -c "import importlib.metadata as m; m.version('torch')" 2>/dev/null || torch=missing
    unmet=$(python_missing) || python=missing
fi

if [ "$CHECK" = 1 ]; then
    status=0
    if [ ${#packages[@]} -gt 0 ]; then say "missing system packages: ${packages[*]}"; status=1; fi
    if [ "$venv" != ok ]; then say "missing: the virtual environment $VENV"; status=1; fi
    if [ "$browser" != ok ]; then say "missing: Playwright's Chromium build"; status=1; fi
    if [ "$torch" != ok ]; then say "missing: torch"; status=1; fi
    if [ "$whisperx" != ok ]; then say "missing: whisperX's environment $WX_VENV"; status=1; fi
    if [ "$python" != ok ]; then
        say "missing Python requirements:"
        printf '%s\n' "$unmet" | sed 's/^/    /' >&2
        status=1
    fi
    [ "$status" = 0 ] && say "everything the tests need is installed"
    exit "$status"
fi

# ---------------------------------------------------------------- install it
if [ ${#packages[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null; then
        say "missing ${packages[*]}, and there is no apt-get: install them with this system's" \
            "package manager, then run this again"
        exit 1
    fi
    as_root=(env DEBIAN_FRONTEND=noninteractive)
    if [ "$(id -u)" != 0 ]; then
        if ! command -v sudo >/dev/null; then
            say "missing ${packages[*]}; not root and no sudo: as root, run" \
                "apt-get update && apt-get install -y ${packages[*]}"
            exit 1
        fi
        as_root=(sudo "${as_root[@]}")
    fi
    say "installing ${packages[*]}"
    "${as_root[@]}" apt-get update -q
    "${as_root[@]}" apt-get install -y -q "${packages[@]}"
fi

if [ "$venv" != ok ]; then
    say "creating the virtual environment $VENV"
    python3 -m venv "$VENV"
    torch=missing
    python=missing
fi
if [ "$torch" != ok ]; then
    "$PYTHON" -m pip install torch==2.13.0
fi
if [ "$python" != ok ]; then
    "$PYTHON" -m pip install -e ".[test]"
fi

if [ "$whisperx" != ok ]; then
    say "creating whisperX's environment $WX_VENV ($WHISPERX; several GB)"
    [ -x "$WX_VENV/bin/python" ] || python3 -m venv "$WX_VENV"
    "$WX_VENV/bin/python" -m pip install -q "$WHISPERX"
    "$WX_VENV/bin/python" -m pip install -q -e .
    whisperx_ready || { say "whisperX does not import in $WX_VENV"; exit 1; }
fi

if [ "$browser" != ok ] || { ! system_chromium && ! playwright_chromium; }; then
    if "$PYTHON" -c "import playwright" 2>/dev/null; then  # none on Python 3.9: the test skips
        "$PYTHON" -m playwright install --with-deps chromium
    fi
fi
say "everything the tests need is installed"
