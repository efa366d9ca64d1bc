"""The audiocraft backend: MusicGen as trained and released by Meta.

Split as audiocraft keeps these roles apart:

* :mod:`.builders`: the tiny models (``tiny``, ``tiny-stereo``, ``tiny-melody``),
  built offline with audiocraft's builders, and a random T5 for a hub cache;
* :mod:`.conditioners`: building LMs whose conditioners would download at
  construction (a melody model's demucs, deferred to a real melody; a T5
  missing from the cache, named);
* :mod:`.export`: audiocraft's export format (writing, checking, loading, hub);
* :mod:`.backend`: :class:`AudiocraftBackend`, the probe and training contract;
* :mod:`.scoring` and :mod:`.prefix`: the fused scoring paths and the
  attention kernel that continues variants from a shared prefix.

audiocraft itself is imported only inside functions, so importing this
package stays cheap.
"""

from lightning_noiseprobe.backends.audiocraft.backend import AudiocraftBackend
from lightning_noiseprobe.backends.audiocraft.builders import (
    TINY_DEFAULTS,
    TINY_MODELS,
    build_tiny_musicgen,
)
from lightning_noiseprobe.backends.audiocraft.export import EXPORT_FILES, save_audiocraft_export

__all__ = [
    "EXPORT_FILES",
    "TINY_DEFAULTS",
    "TINY_MODELS",
    "AudiocraftBackend",
    "build_tiny_musicgen",
    "save_audiocraft_export",
]
