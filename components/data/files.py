"""Writing a file so that a reader (or a crash) sees the old bytes or the new, never half."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(dest: Path, data: bytes, durable: bool = False) -> None:
    """``data`` into ``dest`` (its folder created if missing) through a temporary file in the
    same folder and a rename; the temporary file is removed when anything fails. ``durable``
    also fsyncs the bytes before the rename, so a power loss leaves the old file or the whole
    new one (resume checkpoints); not by default, where a file costs a disk flush each (the
    62,248 wafer maps)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name[:64]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
