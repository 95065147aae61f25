"""The user-facing error type: one sentence saying what is wrong and how to fix it."""

from __future__ import annotations


class VsekitError(Exception):
    """An error a user caused (bad path, shape, config key, corrupt file, NaN input).

    The CLI prints ``error: <message>`` on one line and exits with code 2, no traceback.
    Messages name the problem and, where possible, the fix.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def require(condition: bool, message: str) -> None:
    """Raise :class:`VsekitError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise VsekitError(message)
