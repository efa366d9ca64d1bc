"""Music-LM backends, picked by name (see :func:`get_backend`).

Importing this package is cheap: each backend imports its heavy library
(audiocraft, transformers) only when it is loaded.
"""

from lightning_noiseprobe.backends.base import (
    ProbeBackend,
    available_backends,
    get_backend,
    register_backend,
)

__all__ = ["ProbeBackend", "available_backends", "get_backend", "register_backend"]
