"""User-facing errors.

Library code raises :class:`EsegError` for bad input (a missing file, a wrong field, a size that
cannot work). The CLI turns it into a one-line message and exit code 2, without a traceback.
"""

from __future__ import annotations


class EsegError(Exception):
    """An error caused by the user's input; the message names the culprit and what to do."""

    exit_code = 2
