"""Writing files so that nothing the user had is lost: atomically, with the user's umask, and
only where writing can succeed.

Every file `modify` writes (checkpoints, exports, fine-tuning states, reports) goes through
`atomic_write`: a temporary file in the target's folder, renamed over the target only when it
is complete, and an existing file replaced only when asked. Every command that writes calls
`check_output_path` before any work, so an hour of fine-tuning is not lost to a path that
cannot be written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Literal

from modify.errors import ChoiceError, OutputPathError

__all__ = ["atomic_write", "atomic_write_text", "check_output_path"]

OutputKind = Literal["file", "folder"]


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


def check_output_path(
    path: str | os.PathLike[str], *, force: bool = False, kind: OutputKind = "file", option: str | None = None
) -> Path:
    """Refuses, before any work, an output path that cannot be written; returns it as a `Path`.

    Refused: a file path that is a folder, or an existing file without ``force``; a folder path
    that is a file; a path with a file among its folders; a folder that does not exist and
    cannot be made; a folder in which no file can be created. The last two are tried for real
    (folders made, a temporary file created, all removed again), since permission bits say
    nothing about root, a read-only mount or an immutable folder. Nothing is left behind.

    Args:
        path: the file to write (``kind="file"``) or the folder to write into (``kind="folder"``).
        force: whether an existing file may be replaced. A folder is always written into: the
            commands that write folders resume them or replace their own files in them.
        kind: ``"file"`` or ``"folder"``.
        option: the command-line option that gave the path (``"-o"``), named in the next step.

    Raises:
        OutputPathError: one line that names the path and the next step.

    Example:
        >>> import os, tempfile
        >>> root = tempfile.mkdtemp()
        >>> check_output_path(os.path.join(root, "new", "model.pt")).name
        'model.pt'
        >>> os.listdir(root)  # "new" was made to see that it can be, and removed again
        []
        >>> open(os.path.join(root, "notes.txt"), "w").close()
        >>> check_output_path(os.path.join(root, "notes.txt", "model.pt"), option="-o")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        modify.errors.OutputPathError: cannot write '...model.pt': '...notes.txt' is a file, not a folder; ...
    """
    if kind not in ("file", "folder"):
        raise ChoiceError(f"kind={kind!r} is not one of file, folder.")
    target = Path(path)
    mode = _mode(target, target, option)
    if kind == "file":
        for_option = f" for {option}" if option else ""
        if mode is not None and stat.S_ISDIR(mode):
            raise OutputPathError(
                f"{str(target)!r} is a directory; give a file path{for_option}, such as {str(target / 'model.pt')!r}."
            )
        if mode is not None and not force:
            flag, where = ("--force", f" with {option}") if option else ("--force (force=True)", "")
            raise OutputPathError(f"{str(target)!r} exists; pass {flag} to replace it, or choose another path{where}.")
        folder = target.parent
    else:
        if mode is not None and not stat.S_ISDIR(mode):
            raise OutputPathError(
                f"{str(target)!r} is a file, not a folder; give a folder "
                f"path{f' for {option}' if option else ''}, or move the file away."
            )
        folder = target
    existing, missing = _nearest_folder(target, folder, option)
    # A file output is tried under the temporary name atomic_write gives it, the longer of the two.
    _try_writing(target, existing, missing, option, _temp_name(target) if kind == "file" else (".modify-check.", ""))
    return target


def _temp_name(target: Path) -> tuple[str, str]:
    """(prefix, suffix) of the temporary file atomic_write writes ``target`` as: the suffix is
    kept, since some writers (torch.export.save) check it."""
    return f".{target.name}.", f".tmp{target.suffix}"


def _next_step(option: str | None) -> str:
    return f"choose another path with {option}" if option else "choose another path"


def _mode(path: Path, target: Path, option: str | None) -> int | None:
    """``path``'s st_mode, or None where it does not exist (or sits below a file, or has a name
    too long: making it says which)."""
    try:
        return os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            return None
        raise OutputPathError(
            f"cannot write {str(target)!r}: {str(path)!r} cannot be read ({e.strerror}); {_next_step(option)}."
        ) from None


def _nearest_folder(target: Path, folder: Path, option: str | None) -> tuple[Path, list[Path]]:
    """The nearest existing folder on ``folder``'s path, and the folders below it still to make
    (outermost first). A file on the way is refused."""
    missing: list[Path] = []
    for candidate in (folder, *folder.parents):
        mode = _mode(candidate, target, option)
        if mode is None:
            missing.append(candidate)
        elif stat.S_ISDIR(mode):
            return candidate, missing[::-1]
        else:
            raise OutputPathError(
                f"cannot write {str(target)!r}: {str(candidate)!r} is a file, not a folder; {_next_step(option)}."
            )
    raise OutputPathError(f"cannot write {str(target)!r}: no folder on its path exists; {_next_step(option)}.")


def _try_writing(target: Path, existing: Path, missing: list[Path], option: str | None, name: tuple[str, str]) -> None:
    """Makes the missing folders and a temporary file (``name``: prefix, suffix) in the last one,
    then removes all it made."""
    shorter = f"choose a shorter name{f' with {option}' if option else ''}"
    made: list[Path] = []
    try:
        for folder in missing:
            try:
                os.mkdir(folder)
            except OSError as e:
                step = shorter if e.errno == errno.ENAMETOOLONG else f"{_next_step(option)}, or create the folder first"
                where = "" if folder == target else f"cannot write {str(target)!r}: "
                raise OutputPathError(
                    f"{where}the folder {str(folder)!r} cannot be made ({e.strerror}); {step}."
                ) from None
            made.append(folder)
        inside = missing[-1] if missing else existing
        try:
            fd, probe = tempfile.mkstemp(prefix=name[0], suffix=name[1], dir=inside)
        except OSError as e:
            step = (
                shorter if e.errno == errno.ENAMETOOLONG else f"{_next_step(option)}, or make {str(inside)!r} writable"
            )
            what = f"{str(target)!r}" if inside != target else f"in {str(inside)!r}"
            raise OutputPathError(f"cannot write {what} ({e.strerror}); {step}.") from None
        os.close(fd)
        os.unlink(probe)
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def atomic_write(path: str | os.PathLike[str], write: Any, *, force: bool = False) -> Path:
    """Calls ``write(tmp_path)`` then renames the file onto ``path``; refuses to replace an
    existing file unless ``force``, and a path that cannot be written (`check_output_path`,
    `OutputPathError`). The file gets the permissions a plain ``open`` would give it (0666 less
    the umask)."""
    target = check_output_path(path, force=force)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = _temp_name(target)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
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
