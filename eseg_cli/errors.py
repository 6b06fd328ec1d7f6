"""User-facing errors.

Library code raises :class:`EsegError` for bad input (a missing file, a wrong field, a size that
cannot work), in the library's own terms: an argument or config key is named in quotes (``'data_root'``) and
listed in ``fields``. The CLI turns the error into a one-line message and exit code 2, without a traceback, and
writes each such name as the command's flag for it (``--data-root``).
"""

from __future__ import annotations

import errno


class EsegError(Exception):
    """An error caused by the user's input; the message names the culprit and what to do.

    ``field`` names the argument (or arguments, a tuple) at fault, as the message quotes it: ``EsegError("'size'
    must be at least 32x32", field="size")``.
    """

    exit_code = 2

    def __init__(self, message: str = "", *, field: str | tuple[str, ...] | None = None):
        super().__init__(message)
        self.fields: tuple[str, ...] = (field,) if isinstance(field, str) else tuple(field or ())


# what to do about common operating-system errors (the message itself names the file)
_OS_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or choose another output folder",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another output folder",
    errno.EROFS: "the file system is read-only; choose another output folder",
    errno.EACCES: "permission denied; choose a location you can write to",
    errno.EPERM: "permission denied; choose a location you can write to",
    errno.EISDIR: "a folder is there where a file is wanted; give a file path",
    errno.ENOTDIR: "a file is in the way where a folder is wanted; give another path",
    errno.EEXIST: "a file is in the way where a folder is wanted; give another path",
    errno.ENOENT: "check the path",
}


def os_error_hint(e: OSError) -> str | None:
    """What the user can do about an operating-system error, or None."""
    return _OS_HINTS.get(e.errno or -1)


def write_error(path, e: OSError) -> EsegError:
    """An :class:`EsegError` for a failed write of ``path``: the file, the reason and what to do."""
    hint = os_error_hint(e)
    reason = e.strerror or str(e)
    return EsegError(f"cannot write {path}: {reason}" + (f"; {hint}" if hint else ""))


class Interrupted(KeyboardInterrupt):
    """A long task stopped cleanly on SIGINT or SIGTERM after saving its state.

    ``exit_code`` is 128 + the signal number (130 for SIGINT, 143 for SIGTERM); ``resume`` says how to
    continue (a sentence); ``summary`` is what the task had done. A KeyboardInterrupt, so that code catching
    ``Exception`` does not swallow it.
    """

    def __init__(self, message: str, signum: int, resume: str = "", summary: dict | None = None):
        super().__init__(message)
        self.signum, self.resume, self.summary = signum, resume, summary or {}
        self.exit_code = 128 + signum
