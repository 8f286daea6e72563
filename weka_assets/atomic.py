"""Atomic file writes: written aside, then renamed into place.

A reader never sees half a file, and a write that fails (an exception, Ctrl-C) leaves no file
at the target: an earlier file there stays as it was. The file aside has a name of its own per
call, so concurrent writers of one path never write into each other's; the last rename wins,
whole. `write_json` (weka_assets.pipeline) and the streamed exports (weka_assets.exports) both
write through `atomic_write`.
"""

import os
import secrets
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: Path | str):
    """Yield a binary file handle writing aside; on a clean exit rename it to `path`, on any
    exception remove it (and re-raise)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as fh:  # never an existing file
            yield fh
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
