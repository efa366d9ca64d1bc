"""The one exception type for bad user input.

Messages share one voice: they name the argument or file, give the value that
was received, and say what to do, e.g. ``Expected argument `length` to be a
positive number of tokens but got 0.``
"""

from __future__ import annotations

__all__ = ["NoiseProbeError", "NonFiniteLossError"]


class NoiseProbeError(ValueError):
    """Raised for bad input: a wrong argument, an unreadable or invalid file.

    It subclasses :class:`ValueError`, so ``except ValueError`` also catches it.

    >>> raise NoiseProbeError("Expected argument `length` to be a positive number of tokens but got 0.")
    Traceback (most recent call last):
    ...
    lightning_noiseprobe._errors.NoiseProbeError: Expected argument `length` to be a positive number of tokens but got 0.
    """


class NonFiniteLossError(NoiseProbeError):
    """Raised when per-token losses at valid positions are NaN or infinite.

    Valid positions are masked already (delay-pattern padding, audio padding),
    so a non-finite value there means the model's own outputs are not finite:
    diverged weights, an fp16 overflow. :class:`~lightning_noiseprobe.callback.NoiseProbeCallback`
    logs its metrics as NaN for such an epoch, so ``EarlyStopping(check_finite=True)``
    stops the run with its own message.
    """
