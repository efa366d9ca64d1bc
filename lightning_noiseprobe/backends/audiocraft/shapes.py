"""Random-weight MusicGen exports with the real shapes (small, medium, large, melody, stereo-small).

:func:`write_real_shape_export` writes a folder as the hub holds one
(``state_dict.bin``: the LM in float16, ``compression_state_dict.bin``: the
32 kHz EnCodec in float32, each ``{'xp.cfg': <YAML>, 'best_state': ...}``), from
the real configurations of :mod:`.configs`, with random weights drawn as
audiocraft initialises them. ``AudiocraftBackend(model=folder)`` and
``MusicGen.get_pretrained(folder)`` load it. For benchmarks at real scale (a
3.3 G-weight LM is a 6.5 GB file), not for tests.

The LM is built on the meta device and each part (an embedding, a transformer
layer, a head) is materialised, initialised and stored in turn, so memory stays
at the file's size plus one layer, and nothing is initialised twice.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends.audiocraft.configs import (
    HUB_LM_DTYPE,
    real_config,
)

__all__ = ["T5_WIDTH", "lm_parameter_count", "write_real_shape_export"]

#: ``t5-base``'s width: the input of the T5 conditioner's output projection.
T5_WIDTH = 768

#: Text conditioners: ``"lut"`` (offline stand-in) or ``"t5"`` (the real config; needs ``t5-base``).
TEXT_CONDITIONERS = ("lut", "t5")


def _offline_text(lm_cfg: dict[str, Any]) -> dict[str, Any]:
    """``lm_cfg`` with its T5 description conditioner replaced by a LUT of T5's width.

    The LUT's output projection has the T5 conditioner's shape (768 -> dim);
    its table (64 x 768, the ``noop`` tokenizer hashes each text into a bin) is
    the only extra weight. Probing without descriptions (the authors' setting)
    never reads either.
    """
    conditioners = dict(lm_cfg["conditioners"])
    conditioners["description"] = {
        "model": "lut",
        "lut": {"n_bins": 64, "dim": T5_WIDTH, "tokenizer": "noop"},
    }
    return {**lm_cfg, "conditioners": conditioners}


def _meta_lm(name: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """``(lm, lm_cfg, offline_cfg)``: the model's LM on the meta device (T5 replaced by a LUT).

    The condition provider is built for real on the CPU (a few weights, and
    buffers computed at construction: the melody's chroma filter bank and
    STFT window), as :func:`~.loading.build_lm` builds it; the global RNG is
    left untouched. Both builds run in :func:`~.conditioners.building_lms`, so
    the melody conditioner needs no demucs.
    """
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    from lightning_noiseprobe.backends.audiocraft.conditioners import building_lms

    lm_cfg, _ = real_config(name)
    offline_cfg = _offline_text(lm_cfg)
    cfg = OmegaConf.create({**offline_cfg, "device": "cpu"})
    shell_cfg = OmegaConf.create({**offline_cfg, "device": "meta", "conditioners": {}})
    try:  # shapes only: T5 (not in the LM's weights beyond its projection) is never loaded
        with building_lms(), torch.random.fork_rng(devices=[]):
            with torch.device("meta"):
                lm = builders.get_lm_model(shell_cfg)
            dim = cfg.transformer_lm.dim
            lm.condition_provider = builders.get_conditioner_provider(dim, cfg)
    except Exception as err:
        raise NoiseProbeError(
            f"Could not build the {name!r} MusicGen shape ({type(err).__name__}: {err})."
        ) from err
    return lm, lm_cfg, offline_cfg


def lm_parameter_count(name: str) -> int:
    """Weights in the released model's ``state_dict.bin`` (its LM, with the T5 conditioner's projection).

    Counted on the meta device, without the stand-in LUT's table.

    Example:
        >>> lm_parameter_count("small")  # the model card's "300M"
        420371456
    """
    lm, _, _ = _meta_lm(name)
    table = lm.condition_provider.conditioners["description"].embed.weight.numel()
    return sum(p.numel() for p in lm.parameters()) - table


def _random_lm_state(lm: Any, tcfg: dict[str, Any], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random weights for a meta-device ``LMModel``, drawn as its ``_init_weights`` does.

    Each direct child (and each transformer layer) is materialised on the CPU
    in float32, initialised, cast to ``dtype`` and moved back to meta: the
    embeddings, the transformer's Linears (depth-scaled) and the heads by
    audiocraft's ``init_layer``; the attention's fused input projection as
    ``nn.Linear`` initialises it (audiocraft builds it from one); everything else
    (layer norms, the condition provider) by its own ``reset_parameters``.
    Uses the global RNG (the caller seeds and restores it).
    """
    from audiocraft.models.lm import init_layer

    method, zero_bias = tcfg["weight_init"], tcfg["zero_bias_init"]
    depthwise = tcfg["depthwise_init"]
    units: list[tuple[str, torch.nn.Module, bool, int | None]] = []
    for name, child in lm.named_children():
        if name == "transformer":
            layers = child.layers
            for i, layer in enumerate(layers):
                depth = {"current": i + 1, "global": len(layers)}.get(depthwise)
                units.append((f"transformer.layers.{i}", layer, True, depth))
        else:
            units.append((name, child, name in ("emb", "linears"), None))
    state: dict[str, torch.Tensor] = {}
    for prefix, unit, audiocraft_init, depth in units:
        on_meta = any(t.is_meta for t in [*unit.parameters(), *unit.buffers()])
        if on_meta:  # the condition provider is real (its buffers are computed, not drawn)
            unit.to_empty(device="cpu")
        sub: Any
        for sub in unit.modules():
            if audiocraft_init and isinstance(sub, (torch.nn.Linear, torch.nn.Embedding)):
                init_layer(sub, method=method, init_depth=depth, zero_bias_init=zero_bias)
            elif hasattr(sub, "in_proj_weight"):  # audiocraft's StreamingMultiheadAttention
                torch.nn.init.kaiming_uniform_(sub.in_proj_weight, a=math.sqrt(5))
                if getattr(sub, "in_proj_bias", None) is not None:
                    torch.nn.init.zeros_(sub.in_proj_bias)
            elif hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
            elif any(True for _ in sub.parameters(recurse=False)):  # pragma: no cover
                raise NoiseProbeError(
                    f"Expected to know how audiocraft initialises {type(sub).__name__} in "
                    f"{prefix} but it is none of Linear, Embedding, attention or resettable."
                )
        for key, value in unit.state_dict().items():
            state[f"{prefix}.{key}"] = value.to(dtype) if value.is_floating_point() else value
        if on_meta:
            unit.to_empty(device="meta")
    expected = set(lm.state_dict())
    if set(state) != expected:  # pragma: no cover - a part the loop above does not know
        raise NoiseProbeError(
            f"Expected random weights for every LM entry but {sorted(expected ^ set(state))[:5]} differ."
        )
    return {key: state[key] for key in lm.state_dict()}  # audiocraft's order


def write_real_shape_export(
    name: str,
    folder: str | os.PathLike[str],
    *,
    seed: int = 0,
    lm_dtype: torch.dtype = HUB_LM_DTYPE,
    text: str = "lut",
) -> Path:
    """Write a random-weight export of a released MusicGen's shape, as the hub lays it out.

    Args:
        name: ``"small"``, ``"medium"``, ``"large"``, ``"melody"`` or
            ``"stereo-small"`` (:data:`~.configs.REAL_MODELS`).
        folder: output folder (created; both files are replaced).
        seed: weight seed; the same seed gives the same files' tensors.
        lm_dtype: dtype of the stored LM weights (the hub's: float16).
        text: ``"lut"``: the description conditioner is a LUT of T5's width
            (offline; the output projection has the real shape); ``"t5"``: the
            real T5 config, whose loading needs ``t5-base`` in the Hugging Face
            cache (its LM weights are the T5 conditioner's output projection).

    Returns:
        The folder.

    Raises:
        NoiseProbeError: on an unknown ``name`` or ``text``, or a model that
            audiocraft cannot build here.
    """
    import audiocraft
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    from lightning_noiseprobe.backends._common import atomic_torch_save, init_codebooks_from_audio
    from lightning_noiseprobe.backends.audiocraft.export import EXPORT_FILES

    if text not in TEXT_CONDITIONERS:
        raise NoiseProbeError(
            f"Expected argument `text` to be one of {list(TEXT_CONDITIONERS)} but got {text!r}."
        )
    lm, lm_cfg, offline_cfg = _meta_lm(name)
    _, codec_cfg = real_config(name)
    saved_cfg = offline_cfg if text == "lut" else lm_cfg
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        torch.manual_seed(seed)
        lm_state = _random_lm_state(lm, saved_cfg["transformer_lm"], lm_dtype)
        del lm
        if text == "t5":
            lm_state.pop("condition_provider.conditioners.description.embed.weight")
        codec: Any = builders.get_compression_model(
            OmegaConf.create({**codec_cfg, "device": "cpu"})
        )
    layers = codec.quantizer.vq.layers
    codebooks = [layer._codebook for layer in layers]
    # 8 s of calibration audio (400 frames): the real encoder is slow on a CPU
    init_codebooks_from_audio(
        codec.encoder, layers, codebooks, codec.sample_rate, seed, clips=4, seconds=2.0
    )
    for codebook in codebooks:  # as after audiocraft's k-means init (kmeans_init: true)
        codebook.inited.fill_(1.0)
    packages = {
        EXPORT_FILES[0]: (saved_cfg, lm_state),
        EXPORT_FILES[1]: (codec_cfg, codec.state_dict()),
    }
    for filename, (cfg, state) in packages.items():
        package = {
            "xp.cfg": OmegaConf.to_yaml(OmegaConf.create(cfg)),
            "best_state": state,
            "version": audiocraft.__version__,
            "exported": True,
        }
        atomic_torch_save(package, folder / filename)
    return folder
