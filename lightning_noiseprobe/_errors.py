"""The one exception type for bad user input.

Messages share one voice: they name the argument or file, give the value that
was received, and say what to do, e.g. ``Expected argument `length` to be a
positive number of tokens but got 0.``
"""

from __future__ import annotations

__all__ = ["NoiseProbeError"]


class NoiseProbeError(ValueError):
    """Raised for bad input: a wrong argument, an unreadable or invalid file.

    It subclasses :class:`ValueError`, so ``except ValueError`` also catches it.

    >>> raise NoiseProbeError("Expected argument `length` to be a positive number of tokens but got 0.")
    Traceback (most recent call last):
    ...
    lightning_noiseprobe._errors.NoiseProbeError: Expected argument `length` to be a positive number of tokens but got 0.
    """
