"""The Hugging Face transformers backend: MusicGen as ``MusicgenForConditionalGeneration``.

* :mod:`.builders`: the tiny models (``tiny``, ``tiny-stereo``, ``tiny-melody``), built
  offline from configs;
* :mod:`.export`: ``save_pretrained`` folders (atomic writes, loading) and the hub;
* :mod:`.conditions`: what the decoder is conditioned on (cross-attended text, or a
  melody model's prepended null melody and text);
* :mod:`.delay`: teacher forcing under MusicGen's delay pattern, mono and stereo
  (:func:`delayed_lm_logits`);
* :mod:`.prefix`: the fused scoring kernels (fast path, shared-prefix continuation);
* :mod:`.backend`: :class:`TransformersBackend`, the probe and training contract.

transformers itself is imported only inside functions, so importing this
package stays cheap.
"""

from lightning_noiseprobe.backends.transformers.backend import TransformersBackend
from lightning_noiseprobe.backends.transformers.builders import (
    TINY_DEFAULTS,
    TINY_MODELS,
    build_tiny_transformers_musicgen,
)
from lightning_noiseprobe.backends.transformers.delay import delayed_lm_logits

__all__ = [
    "TINY_DEFAULTS",
    "TINY_MODELS",
    "TransformersBackend",
    "build_tiny_transformers_musicgen",
    "delayed_lm_logits",
]
