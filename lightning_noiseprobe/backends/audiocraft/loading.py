"""Build audiocraft's LM and codec from checked export files, holding each weight once.

audiocraft's loaders (``loaders.load_lm_model``) ``torch.load`` the whole file,
build the model with random weights (drawing and writing every weight: most of
the load time) and copy the file's weights into it, so the process holds the
file's tensors and the model's at once (2.3x the files for MusicGen-small with
the interpreter). Here the LM's modules are built on the meta device (no
memory, no random init) with audiocraft's own builders and config handling, and
``load_state_dict(assign=True)`` makes the file's tensors the parameters, each
cast to the target dtype as it is taken, its source freed at once. The
condition provider, whose conditioners keep models and tensors outside their
weights (a frozen T5) or buffers computed at construction (the melody's chroma
filter bank), is built for real on the CPU; both builds run in
:func:`~.conditioners.building_lms` (a melody model's demucs is built only for
a real melody).

The weights are read with a plain ``torch.load`` (``weights_only=True``), not
``mmap=True``: memory-mapped parameters would stay tied to the file, and a
checkpoint rewritten in place (``torch.save`` to the same path) would change or
(truncated) crash a model in training. The files are checked beforehand
(:func:`~.export.export_file_problem`); audiocraft is imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["build_codec", "build_lm", "read_package"]

#: Config entries that audiocraft's ``load_lm_model`` deletes before building (obsolete or local).
_DELETED_LM_PARAMS = (
    "conditioners.self_wav.chroma_stem.cache_path",
    "conditioners.args.merge_text_conditions_p",
    "conditioners.args.drop_desc_p",
)


def read_package(path: Path) -> dict[str, Any]:
    """``torch.load`` an export file into memory (CPU, ``weights_only=True``)."""
    package: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return package


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc's ``malloc_trim``; nothing elsewhere).

    Tensors under glibc's (adaptive, up to 32 MiB) mmap threshold live on the
    heap, and the holes that freed ones leave are not returned to the OS: casting
    MusicGen-small's float16 file to float32 kept 0.26 GiB of such holes.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


#: Bytes of cast sources freed between two :func:`_release_freed_memory`.
_TRIM_EVERY = 64 * 2**20


def _cast_state(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors of ``state`` in ``dtype``; each source is dropped from ``state`` once cast.

    Popping as it goes (and releasing the freed memory) keeps the memory at the
    larger of the two copies, not their sum.
    """
    out = {}
    freed = 0
    for key in list(state):
        value = state.pop(key)
        if value.is_floating_point() and value.dtype != dtype:
            out[key] = value.to(dtype)
            freed += value.numel() * value.element_size()
            del value
            if freed >= _TRIM_EVERY:
                _release_freed_memory()
                freed = 0
        else:
            out[key] = value
    if freed:
        _release_freed_memory()
    return out


def build_lm(xp_cfg: str, state: dict[str, torch.Tensor], dtype: torch.dtype) -> Any:
    """An audiocraft ``LMModel`` on the CPU in ``dtype`` from an export's ``xp.cfg`` and weights.

    The same model as ``loaders.load_lm_model(folder, device="cpu")`` followed by
    ``.to(dtype)``, with ``cfg`` set as that loader sets it, in eval mode;
    ``state`` is consumed (its tensors become the parameters).

    Raises:
        RuntimeError: ``load_state_dict``'s own error if ``state`` does not fit the
            config (missing, unexpected or misshapen entries); whatever audiocraft
            raises for a config it cannot build.
    """
    from audiocraft.models import builders, loaders
    from omegaconf import OmegaConf

    from lightning_noiseprobe.backends.audiocraft.conditioners import building_lms

    cfg: Any = OmegaConf.create(xp_cfg)  # a DictConfig (the export check parsed it)
    cfg.device = "cpu"
    cfg.dtype = "float32"  # what audiocraft's loader sets on a CPU
    for name in _DELETED_LM_PARAMS:
        loaders._delete_param(cfg, name)
    shell_cfg = cfg.copy()  # the LM without its conditioners, on the meta device
    shell_cfg.device = "meta"
    shell_cfg.conditioners = {}
    with building_lms():  # a melody model's demucs is built only for a real melody
        with torch.device("meta"):  # also the parts built without `device` (embeddings, heads)
            lm = builders.get_lm_model(shell_cfg)
        lm.condition_provider = builders.get_conditioner_provider(cfg.transformer_lm.dim, cfg)
    lm.load_state_dict(_cast_state(state, dtype), strict=True, assign=True)
    lm.eval()
    lm.cfg = cfg
    return lm


def build_codec(xp_cfg: str, state: dict[str, torch.Tensor]) -> Any:
    """An audiocraft ``CompressionModel`` on the CPU (float32), as ``loaders.load_compression_model``.

    Built for real and loaded by copy (the codec is small; its weight-norm and
    LSTM modules keep derived tensors that a meta build would leave unset).
    """
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    cfg: Any = OmegaConf.create(xp_cfg)
    cfg.device = "cpu"
    codec = builders.get_compression_model(cfg)
    codec.load_state_dict(state)
    codec.eval()
    return codec
