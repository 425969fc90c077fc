"""Files the field tech's commands write: whole or not at all, and never readable by others meanwhile.

A box loses power whenever someone trips over its cable; a settings file, a key or a certificate
half written would stop it starting. Each is written beside its place, fsynced, then renamed over it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_whole(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``; the file has ``mode`` from its first byte, not after a chmod."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(partial, mode)  # the umask may have narrowed it
    os.replace(partial, path)


def write_if_changed(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """``write_whole`` unless the file already holds ``data``; whether it wrote."""
    if path.is_file() and path.read_bytes() == data:
        return False
    write_whole(path, data, mode)
    return True
