"""``python -m whisper_at``: the ``whisper-at`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
