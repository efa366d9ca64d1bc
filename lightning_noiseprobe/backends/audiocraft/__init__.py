"""The audiocraft backend: MusicGen as trained and released by Meta.

Split as audiocraft keeps these roles apart:

* :mod:`.builders`: the tiny model, built offline with audiocraft's builders;
* :mod:`.export`: audiocraft's export format (writing, checking, loading, hub);
* :mod:`.backend`: :class:`AudiocraftBackend`, the probe and training contract;
* :mod:`.scoring` and :mod:`.prefix`: the fused scoring paths and the
  attention kernel that continues variants from a shared prefix.

audiocraft itself is imported only inside functions, so importing this
package stays cheap.
"""

from lightning_noiseprobe.backends.audiocraft.backend import AudiocraftBackend
from lightning_noiseprobe.backends.audiocraft.builders import TINY_DEFAULTS, build_tiny_musicgen
from lightning_noiseprobe.backends.audiocraft.export import EXPORT_FILES, save_audiocraft_export

__all__ = [
    "EXPORT_FILES",
    "TINY_DEFAULTS",
    "AudiocraftBackend",
    "build_tiny_musicgen",
    "save_audiocraft_export",
]
