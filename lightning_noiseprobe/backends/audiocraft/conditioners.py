"""Building audiocraft LMs whose conditioners would download at construction.

Two of audiocraft's conditioners fetch models when they are *built*, before
any input is seen:

* ``ChromaStemConditioner`` (``facebook/musicgen-melody``) imports ``demucs``
  and loads its ``htdemucs`` stem separator (weights downloaded from Meta's
  servers) in ``__init__``, even though a null melody never reaches it
  (``_compute_wav_embedding`` takes the chroma of a one-sample waveform
  directly). The probe always scores with a null melody, as the paper's
  authors did (``losscal/loss_cal_mgen-melody.py`` in YoEv/noiseloss: an empty
  ``self_wav``, no description). So instead of making demucs a dependency
  (it would still download ``htdemucs`` at every load, offline or not), the
  LM is built with :func:`lazy_chroma_stem_class`: audiocraft's own
  conditioner, whose stem separator is built on first use, i.e. only when a
  real melody is given. Without a melody nothing is imported or downloaded;
  with one, a missing ``demucs`` gives one clear error.
* ``T5Conditioner`` loads ``t5-base`` (or another T5) from the Hugging Face
  hub or its cache. Offline without it, transformers fails with an unrelated
  message; :func:`missing_t5_message` says which model is missing and how to
  get it.

:func:`building_lms` is the context every LM build and load of this package
runs in. audiocraft is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from typing import Any

from lightning_noiseprobe._errors import NoiseProbeError

__all__ = [
    "building_lms",
    "lazy_chroma_stem_class",
    "missing_t5_message",
    "prepare_as_get_pretrained",
    "t5_names",
]

_BUILD_LOCK = threading.RLock()


@functools.cache
def lazy_chroma_stem_class() -> type:
    """audiocraft's ``ChromaStemConditioner``, with its stem separator built on first use.

    A subclass whose ``__init__`` is audiocraft 1.3.0's without the two lines
    that import ``demucs`` and load ``htdemucs``; ``demucs`` and
    ``stem_indices`` become properties that build them when a melody is
    first separated (``_get_stemmed_wav``). Everything else, the chroma
    extraction of a null melody included, is audiocraft's own code, and the
    weights (``state_dict``) are the same (``tests/test_melody.py`` builds
    both and compares).
    """
    import torch
    from audiocraft.modules.chroma import ChromaExtractor
    from audiocraft.modules.conditioners import ChromaStemConditioner, WaveformConditioner
    from audiocraft.utils.autocast import TorchAutocast
    from audiocraft.utils.cache import EmbeddingCache

    class LazyStemChromaConditioner(ChromaStemConditioner):  # type: ignore[misc, valid-type]
        __doc__ = (
            "audiocraft's ``ChromaStemConditioner`` whose demucs stem model is built on first "
            "use (only for a real melody; see lightning_noiseprobe.backends.audiocraft.conditioners)."
        )

        def __init__(
            self,
            output_dim: int,
            sample_rate: int,
            n_chroma: int,
            radix2_exp: int,
            duration: float,
            match_len_on_eval: bool = True,
            eval_wavs: str | None = None,
            n_eval_wavs: int = 0,
            cache_path: Any = None,
            device: Any = "cpu",
            **kwargs: Any,
        ) -> None:
            # audiocraft 1.3.0's ChromaStemConditioner.__init__, less `pretrained.get_model('htdemucs')`
            WaveformConditioner.__init__(self, dim=n_chroma, output_dim=output_dim, device=device)
            self.autocast = TorchAutocast(
                enabled=device != "cpu", device_type=self.device, dtype=torch.float32
            )
            self.sample_rate = sample_rate
            self.match_len_on_eval = match_len_on_eval
            if match_len_on_eval:
                self._use_masking = False
            self.duration = duration
            self.chroma = ChromaExtractor(
                sample_rate=sample_rate, n_chroma=n_chroma, radix2_exp=radix2_exp, **kwargs
            ).to(device)
            self.chroma_len = self._get_chroma_len()
            self.eval_wavs = self._load_eval_wavs(eval_wavs, n_eval_wavs)
            self.cache = None
            if cache_path is not None:
                from pathlib import Path

                self.cache = EmbeddingCache(
                    Path(cache_path) / "wav",
                    self.device,
                    compute_embed_fn=self._get_full_chroma_for_cache,
                    extract_embed_fn=self._extract_chroma_chunk,
                )

        @property
        def demucs(self) -> Any:
            """The ``htdemucs`` stem separator, built on first use (kept outside the module tree, as audiocraft does)."""
            model = self.__dict__.get("demucs")
            if model is None:
                model = _load_demucs().to(self.device)
                self.__dict__["demucs"] = model
            return model

        def _get_stemmed_wav(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
            self.demucs  # noqa: B018  # built (or a clear error) before audiocraft imports demucs
            return super()._get_stemmed_wav(wav, sample_rate)

        @property
        def stem_indices(self) -> torch.Tensor:  # type: ignore[override]
            """The ``vocals`` and ``other`` stems' indices (builds :attr:`demucs`)."""
            sources = list(self.demucs.sources)
            return torch.LongTensor([sources.index("vocals"), sources.index("other")]).to(
                self.device
            )

    return LazyStemChromaConditioner


def _load_demucs() -> Any:
    try:
        from demucs import pretrained
    except ImportError as err:
        raise NoiseProbeError(
            "Expected the `demucs` package to separate the stems of a melody for "
            "ChromaStemConditioner but it is not installed. Install it (`pip install demucs`; "
            "its `htdemucs` weights download on first use), or give no melody: scoring with a "
            "null melody (the paper's setting, and the probe's) needs neither."
        ) from err
    return pretrained.get_model("htdemucs")


@contextlib.contextmanager
def building_lms() -> Iterator[None]:
    """Build audiocraft LMs with :func:`lazy_chroma_stem_class` in place of ``ChromaStemConditioner``.

    ``audiocraft.models.builders.get_conditioner_provider`` (which
    ``builders.get_lm_model`` and ``loaders.load_lm_model`` call) names the
    class through its module's global, which is swapped for the block and
    restored after it; the block holds a lock so that concurrent builds see
    one consistent class.
    """
    from audiocraft.models import builders

    with _BUILD_LOCK:
        original = builders.ChromaStemConditioner
        setattr(builders, "ChromaStemConditioner", lazy_chroma_stem_class())  # noqa: B010
        try:
            yield
        finally:
            setattr(builders, "ChromaStemConditioner", original)  # noqa: B010


def prepare_as_get_pretrained(lm: Any) -> None:
    """What ``MusicGen.get_pretrained`` sets on a loaded LM: a melody chroma matched to the training length."""
    conditioners = lm.condition_provider.conditioners
    if "self_wav" in conditioners:
        conditioners["self_wav"].match_len_on_eval = True
        conditioners["self_wav"]._use_masking = False


def t5_names(cfg: Any) -> list[str]:
    """The T5 models an LM config's ``t5`` conditioners load (``conditioners.<name>.t5.name``)."""
    conditioners = cfg.get("conditioners") if hasattr(cfg, "get") else None
    names = []
    for key, entry in (conditioners or {}).items():
        if key == "args" or not hasattr(entry, "get") or entry.get("model") != "t5":
            continue
        t5 = entry.get("t5") or {}
        if t5.get("name"):
            names.append(str(t5["name"]))
    return names


#: The files audiocraft's ``T5Conditioner`` reads: ``T5Tokenizer`` (sentencepiece) and ``T5EncoderModel``.
_T5_FILES = ("config.json", "spiece.model")
_T5_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _in_hf_cache(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # an invalid repo id: not in the cache either
        return False
    return isinstance(found, str) and os.path.isfile(found)


def missing_t5_message(cfg: Any, source: str) -> str | None:
    """One line naming the T5 model(s) ``cfg`` needs that the Hugging Face cache lacks, else ``None``.

    Checks the files ``T5Conditioner`` loads (``config.json``,
    ``spiece.model`` and the weights) in transformers' hub cache
    (``HF_HUB_CACHE``, or ``HF_HOME``/hub), without contacting the hub.
    """
    from huggingface_hub import constants

    from lightning_noiseprobe.backends._common import hf_offline

    missing = [
        name
        for name in dict.fromkeys(t5_names(cfg))
        if not all(_in_hf_cache(name, f) for f in _T5_FILES)
        or not any(_in_hf_cache(name, f) for f in _T5_WEIGHTS)
    ]
    if not missing:
        return None
    names = " and ".join(repr(n) for n in missing)
    offline = " and HF_HUB_OFFLINE is set" if hf_offline() else ""
    commands = "; ".join(f"`hf download {n}`" for n in missing)
    return (
        f"Expected the T5 text encoder {names} that {source} conditions on (audiocraft's "
        f"T5Conditioner) in the Hugging Face cache {constants.HF_HUB_CACHE!r}, but it is not "
        f"there{offline}. Download it once where the hub is reachable ({commands}; "
        "`huggingface-cli download` before huggingface_hub 0.34), then run again, or point "
        "HF_HOME / HF_HUB_CACHE at a cache that holds it."
    )
