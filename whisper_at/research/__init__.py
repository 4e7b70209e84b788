"""Research tools of Whisper-AT: feature extraction, TL-TR training, probes, noise study.

``main(argv)`` runs a subcommand, ``argv[0]`` being its name: ``features``, ``train``,
``probe`` or ``noise-study`` (``whisper-at <subcommand> ...`` or
``python -m whisper_at.research <subcommand> ...``, which also works under ``torchrun``).
These tools need the ``research`` extra: scikit-learn, jiwer, matplotlib.
"""

import sys
from importlib import import_module
from typing import List, Optional

SUBCOMMANDS = {
    "features": "features",
    "train": "train",
    "probe": "probe",
    "noise-study": "noise",
}


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``argv[0]`` (a subcommand name) with the remaining arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        names = ", ".join(SUBCOMMANDS)
        print(f"usage: whisper-at {{{names}}} ...", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    module = import_module(f".{SUBCOMMANDS[argv[0]]}", __name__)
    try:
        return module.main(argv[1:])
    except ModuleNotFoundError as e:
        print(f"whisper-at {argv[0]}: error: {e}; pip install 'whisper-at[research]'",
              file=sys.stderr)  # fmt: skip
    except (OSError, ValueError) as e:  # bad paths, files or labels: the message names them
        print(f"whisper-at {argv[0]}: error: {e}", file=sys.stderr)
    return 1
