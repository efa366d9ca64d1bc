"""Safe file output: a reader never sees a half-written file or folder.

Every file and folder the package writes goes through this module:

* :func:`atomic_path` (and :func:`atomic_write_text`, :func:`atomic_write_json`)
  for one file, :func:`atomic_dir` for a set of files written as one;
* both give their results the permissions an ordinary ``open``/``mkdir`` would
  (``0o666``/``0o777`` less the umask), not the ``0o600``/``0o700`` of
  :mod:`tempfile`, so other users can read an exported model or a dataset
  whenever the umask lets them;
* :func:`writable_problem`, :func:`path_kind` and :func:`same_file` let callers
  refuse an output before doing any work.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_dir",
    "atomic_path",
    "atomic_write_json",
    "atomic_write_text",
    "path_kind",
    "same_file",
    "writable_problem",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- checks
def path_kind(path: str | os.PathLike[str]) -> str:
    """What ``path`` is, in words: ``"a folder"``, ``"a file"``, ``"a FIFO"``, ...

    >>> import tempfile
    >>> path_kind(tempfile.gettempdir()), path_kind("/no/such/path")
    ('a folder', 'missing')
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # NotADirectory: a parent is a file
        return "a broken symlink" if os.path.islink(path) else "missing"
    except OSError as err:
        return f"not accessible ({err.strerror})"
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISREG, "a file"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a file or folder"


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name the same file: the same inode if both exist
    (symlinks, ``..``, hard links), else the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def writable_problem(path: str | os.PathLike[str], *, folder: bool) -> str | None:
    """Why ``path`` cannot be written as a folder (``folder=True``) or a file, or ``None``.

    Nothing is created: the nearest existing folder on the way to ``path`` must be
    a folder in which a file can be created (tried with a temporary file, so a
    read-only file system, a folder under a regular file or ``/proc`` are caught
    for every user, root included).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> writable_problem(d / "new" / "out", folder=True) is None
    True
    >>> (d / "f").write_text("x")
    1
    >>> print(writable_problem(d / "f" / "out", folder=True))
    '.../f' is a file, not a folder
    """
    p = Path(os.path.abspath(path))
    kind = path_kind(p)
    if kind != "missing":
        if folder and kind != "a folder":
            return f"it is {kind}, not a folder"
        if not folder and kind not in ("a file", "a broken symlink"):
            return f"it is {kind}, not a file"
    parent = p if folder and kind == "a folder" else p.parent
    while path_kind(parent) == "missing" and parent != parent.parent:
        parent = parent.parent
    parent_kind = path_kind(parent)
    if parent_kind != "a folder":
        return f"'{parent}' is {parent_kind}, not a folder"
    try:
        fd, name = tempfile.mkstemp(dir=parent, prefix=".noiseprobe-write-test-")
    except OSError as err:
        return f"'{parent}' is not writable ({err.strerror or err})"
    os.close(fd)
    os.unlink(name)
    return None


# ----------------------------------------------------------------------------- one file
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); on success move it
    into place with ``os.replace``, on failure delete it and re-raise.

    The file gets the permissions ``open`` would give it (``0o666`` less the umask).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "out.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (d / "out.txt").read_text(), sorted(p.name for p in d.iterdir())
    ('done', ['out.txt'])
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically, UTF-8 encoded."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (NaN is refused: use ``None``)."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------- a set of files
def _try_lock(fd: int) -> bool | None:
    """Take an exclusive ``flock`` on ``fd`` without waiting: ``True`` if taken,
    ``False`` if another process holds it, ``None`` where locks are unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _remove_stale_temps(target: Path) -> None:
    """Delete temporary folders of :func:`atomic_dir` for ``target`` whose writer is gone.

    A writer holds an ``flock`` on its folder until it finishes; the kernel drops
    it when the process dies, even by ``SIGKILL``. So a folder whose lock can be
    taken belongs to nobody and is removed; one that is locked is in use.
    """
    prefix = _temp_prefix(target)
    for where in (target.parent, target):
        try:
            entries = [e for e in os.scandir(where) if e.name.startswith(prefix)]
        except OSError:
            continue
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY)
            except OSError:
                continue
            try:
                if _try_lock(fd):
                    shutil.rmtree(entry.path, ignore_errors=True)
            finally:
                os.close(fd)


def _new_locked_dir(where: Path, target: Path) -> tuple[Path, int | None]:
    """A new empty folder in ``where`` named for ``target``, locked by this process.

    It is made under another name and renamed once locked, so a folder with the
    temporary prefix is never unlocked while its writer is alive.
    """
    born = Path(tempfile.mkdtemp(dir=where, prefix=f".{target.name}.new-"))
    try:
        fd: int | None = os.open(born, os.O_RDONLY)
    except OSError:  # pragma: no cover - a folder cannot be opened (Windows): no lock
        fd = None
    try:
        if fd is not None:
            _try_lock(fd)
        tmp = born.with_name(_temp_prefix(target) + born.name.rsplit(".new-", 1)[1])
        os.rename(born, tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
    except BaseException:
        _close(fd)
        shutil.rmtree(born, ignore_errors=True)
        raise
    return tmp, fd


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _usual_modes(folder: Path) -> None:
    """Give everything under ``folder`` the modes ``open``/``mkdir`` would: ``0o666``
    (``0o777`` for folders and executables) less the umask. Some writers make
    private ``0o600`` files whatever the umask (``tempfile``, safetensors)."""
    umask = _umask()
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)
        for name in files:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                os.chmod(path, (0o777 if mode & 0o111 else 0o666) & ~umask)


def _replace_entry(src: Path, dst: Path, trash: Path) -> None:
    if dst.is_dir() and not dst.is_symlink():
        os.replace(dst, trash / dst.name)  # a folder cannot be replaced by rename unless empty
    os.replace(src, dst)


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike[str], *, owned: Collection[str] | None = None
) -> Iterator[Path]:
    """Yield a new empty folder; when the block succeeds its contents become ``path``.

    On any failure (an exception, a full disk) the temporary folder is deleted
    and ``path`` is left exactly as it was. A process killed while writing
    (``SIGKILL``) leaves its temporary folder behind, and the next
    :func:`atomic_dir` on the same ``path`` deletes it (see
    :func:`_remove_stale_temps`).

    How the result replaces ``path``:

    * ``path`` does not exist: the folder is renamed to ``path`` (one step);
    * ``owned`` is ``None``: ``path`` is wholly ours (an earlier export): the
      new folder is swapped in by rename and the old one deleted;
    * ``owned`` names the files this writer owns in ``path`` (e.g. the output
      set of a probe): each new file replaces the old one by rename, owned
      files the block did not write are deleted (no stale leftovers of an
      earlier run), and everything else in ``path`` is kept. The temporary
      folder is then made inside ``path``, so it is on the same file system
      even when ``path`` is a mount point.

    The folder and what was written into it get the modes ``mkdir`` and
    ``open`` would give them (``0o777``/``0o666`` less the umask), whatever
    the writer used (safetensors, for one, writes ``0o600`` files).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / "out").mkdir(); _ = (d / "out" / "old.png").write_text("old")
    >>> _ = (d / "out" / "notes.txt").write_text("mine")
    >>> with atomic_dir(d / "out", owned=["new.json", "old.png"]) as tmp:
    ...     _ = (tmp / "new.json").write_text("{}")
    >>> sorted(p.name for p in (d / "out").iterdir()), sorted(p.name for p in d.iterdir())
    (['new.json', 'notes.txt'], ['out'])
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    if owned is not None and os.path.lexists(target) and not target.is_dir():
        raise NotADirectoryError(
            f"Expected '{target}' to be a folder but it is {path_kind(target)}."
        )
    inside = owned is not None and target.is_dir()
    tmp, fd = _new_locked_dir(target if inside else target.parent, target)
    try:
        try:
            yield tmp
            _usual_modes(tmp)
            if not os.path.lexists(target):
                os.replace(tmp, target)
            elif owned is None:
                old, old_fd = _new_locked_dir(target.parent, target)
                try:
                    os.replace(target, old / target.name)
                    try:
                        os.replace(tmp, target)
                    except BaseException:
                        os.replace(old / target.name, target)  # put the earlier one back
                        raise
                finally:
                    shutil.rmtree(old, ignore_errors=True)
                    _close(old_fd)
            else:
                trash = tmp / f".{target.name}.trash"
                trash.mkdir()
                written = {p.name for p in tmp.iterdir()} - {trash.name}
                for name in sorted(written):
                    _replace_entry(tmp / name, target / name, trash)
                for name in sorted(set(owned) - written):
                    stale = target / name
                    if stale.is_dir() and not stale.is_symlink():
                        os.replace(stale, trash / name)
                    else:
                        stale.unlink(missing_ok=True)
        finally:
            if os.path.lexists(tmp):  # failed, or the files were moved out of it
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        _close(fd)
