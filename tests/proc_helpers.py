"""Reading a subprocess's stderr."""

from __future__ import annotations

import re

# A traceback block: the header, its indented frame lines, then the exception line.
_BLOCK = re.compile(r"Traceback \(most recent call last\):\n(?:[ \t].*\n?)*(?:.*)?")


def our_tracebacks(stderr: str) -> list[str]:
    """Traceback blocks with a frame in this package.

    Import-time warnings of third-party libraries (xformers, when its compiled
    extensions cannot load, prints the library loader's traceback) are not ours,
    and whether they print depends on the machine, so they are left out.
    """
    return [b for b in _BLOCK.findall(stderr) if "lightning_noiseprobe" in b]
