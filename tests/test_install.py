"""tests/install.sh: the README's test command sets a machine up by itself, and CI runs it.

The machine's packages are never removed here: the missing-package cases run the script with a
PATH that hides some programs and with apt-get, sudo and id replaced by recorders, so the test
sees what the script would run without running it (pip is recorded too, never run)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "install.sh"
COMMAND = "tests/install.sh && .venv/bin/python -m pytest -q"


def test_readme_and_ci_give_the_same_command():
    readme = (REPO / "README.md").read_text().splitlines()
    assert readme[0] == "```bash" and readme[3] == "```"
    assert readme[2].split("  #")[0].strip() == COMMAND
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] == COMMAND  # verbatim, and last: its status is CI's
    assert os.access(SCRIPT, os.X_OK)


def test_a_second_run_would_install_nothing():
    """What the script installed is what it checks for (no reinstall on every run), in the
    environment running these tests (.venv when run as the README says)."""
    run = subprocess.run([str(SCRIPT), "--check"], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHON=sys.executable))
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == "tests/install.sh: everything the tests need is installed"


def _machine(tmp_path: Path, hide=(), root=True, sudo=True, apt=True, ensurepip=True) -> dict:
    """Environment of a machine like this one without the programs in ``hide``: a PATH of links
    to this PATH's programs, where apt-get, sudo, id and $PYTHON -m pip are recorders, and
    python3 records ``-m venv DIR`` (making DIR/bin/python a recorder) and lacks ensurepip unless
    ``ensurepip``."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            target = bin_dir / name
            path = os.path.join(directory, name)
            if name not in hide and not target.exists() and os.access(path, os.X_OK):
                target.symlink_to(path)
    fakes = {
        "apt-get": f'echo "apt-get $*" >> {log}' if apt else None,
        "sudo": f'echo "sudo $*" >> {log}; exec "$@"' if sudo else None,
        "id": 'if [ "$1" = -u ]; then echo %s; else exec /usr/bin/id "$@"; fi' % (
            0 if root else 1000),
        "python-recorder": f'if [ "$1 $2" = "-m pip" ]; then echo "pip $*" >> {log}; exit 0; fi\n'
                           f'exec {sys.executable} "$@"',
        "python3": None if "python3" in hide else (
            f'if [ "$1 $2" = "-m venv" ]; then echo "python3 $*" >> {log}; mkdir -p "$3/bin"\n'
            f'  exec cp {bin_dir / "python-recorder"} "$3/bin/python"; fi\n'
            f'case "$*" in *ensurepip*) exit {0 if ensurepip else 1};; esac\n'
            f'exec {sys.executable} "$@"'),
    }
    for name, body in fakes.items():
        (bin_dir / name).unlink(missing_ok=True)
        if body is not None:
            (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
            (bin_dir / name).chmod(0o755)
    # whisperX's own environment is left out here (test_whisperx_gets_an_environment_of_its_own)
    return dict(os.environ, PATH=str(bin_dir), PYTHON=str(bin_dir / "python-recorder"),
                WHISPER_AT_SKIP_WHISPERX="1")


def _install(env: dict, tmp_path: Path):
    run = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    log = tmp_path / "log"
    return run, log.read_text().splitlines() if log.exists() else []


def test_missing_packages_are_installed_with_apt_get(tmp_path):
    run, log = _install(_machine(tmp_path, hide={"sox", "ffmpeg"}), tmp_path)
    assert run.returncode == 0, run.stderr
    assert log == ["apt-get update -q", "apt-get install -y -q sox ffmpeg"]


def test_not_root_uses_sudo(tmp_path):
    run, log = _install(_machine(tmp_path, hide={"espeak-ng"}, root=False), tmp_path)
    assert run.returncode == 0, run.stderr
    assert log == [
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q", "apt-get update -q",
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q espeak-ng",
        "apt-get install -y -q espeak-ng",
    ]


@pytest.mark.parametrize("sudo, apt, says", [
    (False, True, "tests/install.sh: missing ffmpeg; not root and no sudo: as root, run "
                  "apt-get update && apt-get install -y ffmpeg"),
    (True, False, "tests/install.sh: missing ffmpeg, and there is no apt-get: install them with "
                  "this system's package manager, then run this again"),
])
def test_no_way_to_install_is_a_clear_error(tmp_path, sudo, apt, says):
    env = _machine(tmp_path, hide={"ffmpeg"}, root=False, sudo=sudo, apt=apt)
    run, log = _install(env, tmp_path)
    assert run.returncode == 1 and log == []
    assert run.stderr.strip() == says


def test_pip_runs_when_a_requirement_is_missing(tmp_path):
    """A requirement the checkout's pyproject.toml asks for and that is not installed makes the
    script install the checkout with its test extra (recorded, not run)."""
    env = _machine(tmp_path)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert pyproject.count('"numpy",\n') == 1
    checkout = _checkout(tmp_path, pyproject.replace(
        '"numpy",\n', '"numpy",\n    "no-such-package-for-whisper-at>=1",\n'))
    check = _script(checkout, env, "--check")
    assert check.returncode == 1
    assert "    no-such-package-for-whisper-at>=1" in check.stderr.splitlines()
    run = _script(checkout, env)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "log").read_text().splitlines() == ["pip -m pip install -e .[test]"]


def _script(checkout: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    """Run the checkout's tests/install.sh with ``args`` on the machine ``env``."""
    return subprocess.run([str(checkout / "tests" / "install.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _reported_missing(tmp_path: Path, env: dict, says: str) -> Path:
    """A fresh checkout whose ``install.sh --check`` on ``env`` fails saying ``says``."""
    checkout = _checkout(tmp_path)
    check = _script(checkout, env, "--check")
    assert check.returncode == 1
    assert f"tests/install.sh: {says}" in check.stderr.splitlines(), check.stderr
    return checkout


def _checkout(tmp_path: Path, pyproject: str = None) -> Path:
    """A checkout of this project without its .venv (the script, and pyproject.toml)."""
    checkout = tmp_path / "checkout"
    (checkout / "tests").mkdir(parents=True)
    (checkout / "tests" / "install.sh").symlink_to(SCRIPT)
    (checkout / "pyproject.toml").write_text(pyproject or (REPO / "pyproject.toml").read_text())
    return checkout


@pytest.mark.parametrize("ensurepip, apt", [(True, []), (False, [
    "apt-get update -q", "apt-get install -y -q python3-venv"])])
def test_the_virtual_environment_is_made_when_missing(tmp_path, ensurepip, apt):
    """Without PYTHON, the script installs into the checkout's .venv, made with python3 -m venv
    (Debian's python3 needs python3-venv for that), and the README runs .venv/bin/python."""
    env = _machine(tmp_path, ensurepip=ensurepip)
    del env["PYTHON"]
    checkout = _checkout(tmp_path)
    check = _script(checkout, env, "--check")
    assert check.returncode == 1
    assert "tests/install.sh: missing: the virtual environment .venv" in check.stderr.splitlines()
    run = subprocess.run([str(checkout / "tests" / "install.sh")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "log").read_text().splitlines() == apt + [
        "python3 -m venv .venv", "pip -m pip install torch==2.13.0",
        "pip -m pip install -e .[test]"]
    assert (checkout / ".venv" / "bin" / "python").exists()


def test_no_python3_is_installed_first(tmp_path):
    env = _machine(tmp_path, hide={"python3"})
    del env["PYTHON"]
    _reported_missing(tmp_path, env, "missing system packages: python3 python3-venv")


def test_whisperx_gets_an_environment_of_its_own(tmp_path):
    """whisperX pins an older torch: the script makes .venv-whisperx with python3 -m venv and
    installs whisperX and the checkout there (recorded here: the recorder's Python cannot import
    whisperX afterwards, which the script then reports)."""
    env = _machine(tmp_path)
    del env["WHISPER_AT_SKIP_WHISPERX"]
    checkout = _reported_missing(tmp_path, env, "missing: whisperX's environment .venv-whisperx")
    run = _script(checkout, env)
    log = (tmp_path / "log").read_text().splitlines()
    assert log[-3:] == ["python3 -m venv .venv-whisperx", "pip -m pip install -q whisperx==3.8.6",
                        "pip -m pip install -q -e ."]
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        "tests/install.sh: whisperX does not import in .venv-whisperx")
