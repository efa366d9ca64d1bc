"""The real configurations of the released MusicGen models, written once.

The audiocraft wheel ships no ``config/`` folder (its sdist and the GitHub
repository do), so the values that audiocraft's builders and loaders read are
written here, each with where it comes from. Files are those of
facebookresearch/audiocraft (``config/``, ``audiocraft/grids/musicgen/``,
``docs/MUSICGEN.md``) at the 1.3.0 release; composing them is what Hydra does
for the training runs whose exports the hub holds (``xp.cfg`` of the hub's
``state_dict.bin`` is that composed config, YAML).

What the hub's files themselves tell, used to check these values
(``tests/test_real_shapes.py`` builds each on the meta device and counts):

* ``facebook/musicgen-large/state_dict.bin`` is 6.51 GB and its
  ``compression_state_dict.bin`` 236 MB (the download log quoted in
  facebookresearch/audiocraft issue #234): 3.26 G float16 LM weights and
  59 M float32 codec weights. The hub's LMs are stored in float16, its codec in
  float32 (:data:`HUB_LM_DTYPE`).
* The model cards' sizes are rounded ("300M", "1.5B", "3.3B"); the LMs hold
  420 M, 1.84 G and 3.26 G weights (the transformer, 16 ``dim**2`` per layer,
  plus 2 x ``n_q`` x 2048 x ``dim`` embeddings and heads).
* transformers' ``convert_musicgen_transformers.py`` maps small / medium /
  large to hidden sizes 1024 / 1536 / 2048 and 24 / 48 / 48 layers, FFN 4x.

Use :func:`real_config` for the ``(lm_cfg, codec_cfg)`` pair of a model.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = [
    "CHROMA2MUSIC",
    "ENCODEC_32KHZ",
    "HUB_LM_DTYPE",
    "LM_BASE",
    "MODEL_SCALES",
    "REAL_MODELS",
    "STEREO",
    "TEXT2MUSIC",
    "merge_config",
    "real_config",
]

#: How the hub stores the LM weights (``state_dict.bin``); the codec is float32.
HUB_LM_DTYPE = torch.float16

#: ``config/model/lm/model_scale/{small,medium,large}.yaml``: dim, num_heads, num_layers.
MODEL_SCALES: dict[str, dict[str, int]] = {
    "small": {"dim": 1024, "num_heads": 16, "num_layers": 24},  # "300M Param."
    "medium": {"dim": 1536, "num_heads": 24, "num_layers": 48},  # "gpt2 like (~1.5B params)"
    "large": {"dim": 2048, "num_heads": 32, "num_layers": 48},  # "~3.3B params"
}

# `config/model/lm/default.yaml` (transformer_lm) with the overrides of
# `config/model/lm/musicgen_lm.yaml` (n_q, card, memory_efficient, biases, norm_first,
# weight_init, depthwise_init, zero_bias_init, attention_as_float32, codebooks_pattern).
_TRANSFORMER_LM: dict[str, Any] = {
    "dim": 512,
    "num_heads": 8,
    "num_layers": 8,
    "hidden_scale": 4,
    "n_q": 4,  # musicgen_lm.yaml
    "card": 2048,  # musicgen_lm.yaml
    "dropout": 0.0,
    "emb_lr": None,
    "activation": "gelu",
    "norm_first": True,  # musicgen_lm.yaml
    "bias_ff": False,  # musicgen_lm.yaml
    "bias_attn": False,  # musicgen_lm.yaml
    "bias_proj": False,  # musicgen_lm.yaml
    "past_context": None,
    "causal": True,
    "custom": False,
    "memory_efficient": True,  # musicgen_lm.yaml
    "attention_as_float32": False,
    "layer_scale": None,
    "positional_embedding": "sin",
    "xpos": False,
    "checkpointing": "none",
    "weight_init": "gaussian",  # musicgen_lm.yaml
    "depthwise_init": "current",  # musicgen_lm.yaml
    "zero_bias_init": True,  # musicgen_lm.yaml
    "norm": "layer_norm",
    "cross_attention": False,  # the builder turns it on when a condition is fused by `cross`
    "qk_layer_norm": False,
    "qk_layer_norm_cross": False,
    "attention_dropout": None,
    "kv_repeat": 1,
    "two_step_cfg": False,
}

#: `config/conditioner/text2music.yaml`: T5 text conditioning through cross-attention.
TEXT2MUSIC: dict[str, Any] = {
    "classifier_free_guidance": {"training_dropout": 0.3, "inference_coef": 3.0},
    "attribute_dropout": {},
    "fuser": {
        "cross_attention_pos_emb": False,
        "cross_attention_pos_emb_scale": 1,
        "sum": [],
        "prepend": [],
        "cross": ["description"],
        "input_interpolate": [],
    },
    "conditioners": {
        "description": {
            "model": "t5",
            "t5": {
                "name": "t5-base",
                "finetune": False,
                "word_dropout": 0.3,
                "normalize_text": False,
            },
        }
    },
}

#: `config/conditioner/chroma2music.yaml`: melody (chroma of the demucs-separated
#: stems) prepended, then the T5 description, also prepended.
CHROMA2MUSIC: dict[str, Any] = {
    "classifier_free_guidance": {"training_dropout": 0.2, "inference_coef": 3.0},
    "attribute_dropout": {"args": {"active_on_eval": False}, "text": {}, "wav": {"self_wav": 0.5}},
    "fuser": {
        "cross_attention_pos_emb": False,
        "cross_attention_pos_emb_scale": 1,
        "sum": [],
        "prepend": ["self_wav", "description"],
        "cross": [],
        "input_interpolate": [],
    },
    "conditioners": {
        "self_wav": {
            "model": "chroma_stem",
            "chroma_stem": {
                "sample_rate": 32000,  # ${sample_rate}
                "n_chroma": 12,
                "radix2_exp": 14,
                "argmax": True,
                "match_len_on_eval": False,
                "eval_wavs": None,
                "n_eval_wavs": 100,
                "cache_path": None,  # audiocraft's loader deletes it
            },
        },
        "description": {
            "model": "t5",
            "t5": {
                "name": "t5-base",
                "finetune": False,
                "word_dropout": 0.2,
                "normalize_text": False,
            },
        },
    },
}

#: The LM's xp.cfg around its model: `config/config.yaml` (device, dtype),
#: `config/solver/musicgen/default.yaml` (dataset.segment_duration,
#: interleave_stereo_codebooks, compression_model_n_q) and
#: `config/solver/musicgen/musicgen_base_32khz.yaml` (sample_rate, channels, the codec).
LM_BASE: dict[str, Any] = {
    "device": "cuda",  # audiocraft's loaders replace it (and dtype) by the loading device's
    "dtype": "float32",
    "sample_rate": 32000,
    "channels": 1,
    "compression_model_checkpoint": "//pretrained/facebook/encodec_32khz",
    "compression_model_n_q": None,
    "interleave_stereo_codebooks": {"use": False, "per_timestep": False},
    "lm_model": "transformer_lm",
    "transformer_lm": _TRANSFORMER_LM,
    "codebooks_pattern": {  # musicgen_lm.yaml (only `delay` is read for modeling=delay)
        "modeling": "delay",
        "delay": {"delays": [0, 1, 2, 3], "flatten_first": 0, "empty_initial": 0},
    },
    "dataset": {"segment_duration": 30},
}

#: The EnCodec of every MusicGen (``facebook/encodec_32khz``, which
#: ``compression_state_dict.bin`` holds): ``config/model/encodec/default.yaml``
#: with ``encodec_large_nq4_s640.yaml`` (ratios, n_filters, rvq bins and n_q) and
#: ``config/solver/compression/encodec_musicgen_32khz.yaml`` (32 kHz mono).
ENCODEC_32KHZ: dict[str, Any] = {
    "device": "cuda",
    "dtype": "float32",
    "sample_rate": 32000,
    "channels": 1,
    "compression_model": "encodec",
    "encodec": {
        "autoencoder": "seanet",
        "quantizer": "rvq",
        "sample_rate": 32000,
        "channels": 1,
        "causal": False,
        "renormalize": False,
    },
    "seanet": {
        "dimension": 128,
        "channels": 1,
        "causal": False,
        "n_filters": 64,  # encodec_large_nq4_s640.yaml
        "n_residual_layers": 1,
        "ratios": [8, 5, 4, 4],  # encodec_large_nq4_s640.yaml: hop 640, 50 Hz at 32 kHz
        "activation": "ELU",
        "activation_params": {"alpha": 1.0},
        "norm": "weight_norm",
        "norm_params": {},
        "kernel_size": 7,
        "residual_kernel_size": 3,
        "last_kernel_size": 7,
        "dilation_base": 2,
        "pad_mode": "constant",
        "true_skip": True,
        "compress": 2,
        "lstm": 2,
        "disable_norm_outer_blocks": 0,
        "decoder": {
            "trim_right_ratio": 1.0,
            "final_activation": None,
            "final_activation_params": None,
        },
        "encoder": {},
    },
    "rvq": {
        "n_q": 4,  # encodec_large_nq4_s640.yaml
        "q_dropout": False,
        "bins": 2048,  # encodec_large_nq4_s640.yaml
        "decay": 0.99,
        "kmeans_init": True,
        "kmeans_iters": 50,
        "threshold_ema_dead_code": 2,
        "orthogonal_reg_weight": 0.0,
        "orthogonal_reg_active_codes_only": False,
    },
    "no_quant": {},
}

#: What the stereo models change (`audiocraft/grids/musicgen/musicgen_stereo_finetune_32khz.py`
#: and docs/MUSICGEN.md, "Training stereo models"): two mono token streams interleaved
#: per codebook, [1_L, 1_R, 2_L, 2_R, ...], by the same mono EnCodec (wrapped in
#: `InterleaveStereoCompressionModel` when `MusicGen` is built), each pair with one delay.
STEREO: dict[str, Any] = {
    "channels": 2,
    "interleave_stereo_codebooks": {"use": True, "per_timestep": False},
    "transformer_lm": {"n_q": 8},
    "codebooks_pattern": {"delay": {"delays": [0, 0, 1, 1, 2, 2, 3, 3]}},
}

# The grids `audiocraft/grids/musicgen/musicgen_{base,melody}_32khz.py` train large
# with `cfg_low` and `wd_low`: classifier-free-guidance dropout 0.2, T5 word dropout 0.2.
_LARGE_GRID: dict[str, Any] = {
    "classifier_free_guidance": {"training_dropout": 0.2},
    "conditioners": {"description": {"t5": {"word_dropout": 0.2}}},
}

#: Each released model: (model scale, conditioner config, overrides).
REAL_MODELS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "small": ("small", TEXT2MUSIC, {}),  # facebook/musicgen-small
    "medium": ("medium", TEXT2MUSIC, {}),  # facebook/musicgen-medium
    "large": ("large", TEXT2MUSIC, _LARGE_GRID),  # facebook/musicgen-large
    # facebook/musicgen-melody: the melody solver (musicgen_melody_32khz.yaml) at medium scale
    "melody": ("medium", CHROMA2MUSIC, {}),
    "stereo-small": ("small", TEXT2MUSIC, STEREO),  # facebook/musicgen-stereo-small
}


def merge_config(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``override`` merged in (nested dicts merged, anything
    else replaced): how these configurations, and the tiny ones, are composed."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def real_config(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(lm_cfg, codec_cfg)`` of a released MusicGen, as plain nested dicts.

    ``lm_cfg`` is the part of the hub's ``state_dict.bin`` ``xp.cfg`` that
    audiocraft's ``builders.get_lm_model`` and ``MusicGen`` read; ``codec_cfg``
    that of ``compression_state_dict.bin`` for ``builders.get_compression_model``.

    Args:
        name: one of :data:`REAL_MODELS` (``"small"``, ``"medium"``, ``"large"``,
            ``"melody"``, ``"stereo-small"``).

    Example:
        >>> lm_cfg, codec_cfg = real_config("stereo-small")
        >>> lm_cfg["transformer_lm"]["dim"], lm_cfg["transformer_lm"]["n_q"]
        (1024, 8)
        >>> codec_cfg["seanet"]["n_filters"], codec_cfg["channels"]
        (64, 1)
    """
    if name not in REAL_MODELS:
        from lightning_noiseprobe._errors import NoiseProbeError

        raise NoiseProbeError(
            f"Expected argument `name` to be one of {sorted(REAL_MODELS)} but got {name!r}."
        )
    scale, conditioner, overrides = REAL_MODELS[name]
    lm_cfg = merge_config(LM_BASE, conditioner)
    lm_cfg = merge_config(lm_cfg, {"transformer_lm": MODEL_SCALES[scale]})
    lm_cfg = merge_config(lm_cfg, overrides)
    return lm_cfg, copy.deepcopy(ENCODEC_32KHZ)
