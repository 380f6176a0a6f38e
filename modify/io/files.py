"""Writing files so that nothing the user had is lost: atomically, and with the user's umask.

Every file `modify` writes (checkpoints, exports, fine-tuning states, reports) goes through
`atomic_write`: a temporary file in the target's folder, renamed over the target only when it
is complete, and an existing file replaced only when asked.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from modify.errors import CheckpointError

__all__ = ["atomic_write", "atomic_write_text"]


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc), else by
    setting and restoring it at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write(path: str | os.PathLike[str], write: Any, *, force: bool = False) -> Path:
    """Calls ``write(tmp_path)`` then renames the file onto ``path``; refuses to replace an
    existing file unless ``force``. The file gets the permissions a plain ``open`` would give it
    (0666 less the umask)."""
    target = Path(path)
    if target.is_dir():
        raise CheckpointError(f"{str(target)!r} is a directory; give a file path such as {str(target / 'model.pt')!r}.")
    if target.exists() and not force:
        raise CheckpointError(f"{str(target)!r} exists; pass --force (force=True) to replace it, or choose another path.")
    target.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the suffix: some writers (torch.export.save) check it.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from the user's group
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, *, force: bool = True) -> Path:
    """`atomic_write` of a text file (reports, records); replaces an existing one by default."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text), force=force)
