"""Writing a file so that a reader (or a crash) sees the old bytes or the new, never half."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(dest: Path, data: bytes) -> None:
    """``data`` into ``dest`` through a temporary file in the same folder and a rename;
    the temporary file is removed when anything fails."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name[:64]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
