"""Jobs over many files: ``whisper-at batch`` (``batch.py``: inputs, resumable result shards,
the local and Ray engines) and ``whisper-at tag`` (``tagjob.py``: tagging only, one JSON line
per file)."""
