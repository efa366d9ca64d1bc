"""The Hugging Face transformers backend: MusicGen as ``MusicgenForConditionalGeneration``.

* :mod:`.builders`: the tiny model, built offline from configs;
* :mod:`.export`: ``save_pretrained`` folders (atomic writes, loading) and the hub;
* :mod:`.delay`: teacher forcing under MusicGen's delay pattern (:func:`delayed_lm_logits`);
* :mod:`.backend`: :class:`TransformersBackend`, the probe and training contract.

transformers itself is imported only inside functions, so importing this
package stays cheap.
"""

from lightning_noiseprobe.backends.transformers.backend import TransformersBackend
from lightning_noiseprobe.backends.transformers.builders import (
    TINY_DEFAULTS,
    build_tiny_transformers_musicgen,
)
from lightning_noiseprobe.backends.transformers.delay import delayed_lm_logits

__all__ = [
    "TINY_DEFAULTS",
    "TransformersBackend",
    "build_tiny_transformers_musicgen",
    "delayed_lm_logits",
]
