"""What both built-in backends use: hub settings, paths, file output, the tiny models' shared parts.

Nothing here imports audiocraft or transformers (``huggingface_hub`` is
imported inside the functions that read its settings).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "HEAD_ROWS_ACCELERATOR",
    "HEAD_ROWS_CPU",
    "TINY_SIZES",
    "atomic_torch_save",
    "calibration_audio",
    "delayed_heads_nll",
    "hf_cache_dir",
    "hf_offline",
    "init_codebooks_from_audio",
    "looks_like_path",
    "one_line",
    "outside_inference_mode",
    "unwrap_model",
]

#: Rows (positions x batch) per output-head + cross-entropy chunk when scoring.
#: On CPU a chunk's float32 logits (1024 x 2048 x 4 B = 8 MiB) stay in cache: heads
#: + cross-entropy for a batch of 8 x 750 positions ran 1.9x faster than unchunked
#: on the 2-core benchmark machine. Accelerators take larger chunks (fewer launches).
HEAD_ROWS_CPU = 1024
HEAD_ROWS_ACCELERATOR = 16384

#: Sizes both tiny models share (the audiocraft and the transformers one have
#: the same LM and codec sizes, so that they can be compared and converted).
TINY_SIZES: dict[str, int] = {
    "dim": 64,  # transformer width
    "num_heads": 4,
    "num_layers": 2,
    "n_filters": 4,  # SEANet base width of the codec
    "codec_dim": 32,  # codec latent dimension
}


# -- scoring -------------------------------------------------------------------
def delayed_heads_nll(
    hidden: torch.Tensor,
    heads: Sequence[torch.nn.Module],
    codes: torch.Tensor,
    delays: Sequence[int],
    start: int,
    first_frame: int = 0,
) -> torch.Tensor:
    """Per-token NLL ``[B, K, T]`` (float32) from an LM's final states at delayed positions.

    ``hidden`` ``[B, L, dim]`` holds the states of delayed positions ``[start, start + L)``;
    position ``p`` of codebook ``k`` scores frame ``p - delays[k]`` of ``codes`` ``[B, K, T]``
    with ``heads[k]``. Frames before ``first_frame``, and frames no position of ``hidden``
    scores, hold 0: their output heads and cross-entropy (most of a small model's cost)
    are skipped. The cross-entropy runs per codebook in float32, without stacking or
    reverting the ``[B, K, L, card]`` logits, over chunks of rows (positions x batch)
    whose logits stay in cache. Both backends' fused scoring paths use it.

    Example:
        >>> heads = [torch.nn.Linear(4, 8, bias=False) for _ in range(2)]
        >>> nll = delayed_heads_nll(torch.randn(1, 5, 4), heads, torch.zeros(1, 2, 5, dtype=torch.long), [0, 1], 0)
        >>> nll.shape, bool(nll[0, 1, 4] == 0)  # frame 4 of codebook 1 needs position 5
        (torch.Size([1, 2, 5]), True)
    """
    B, L, _ = hidden.shape
    T = codes.shape[-1]
    nll = torch.zeros(B, len(delays), T, device=hidden.device, dtype=torch.float32)
    rows = HEAD_ROWS_CPU if hidden.device.type == "cpu" else HEAD_ROWS_ACCELERATOR
    for k, d in enumerate(delays):
        lo, hi = max(start, d, first_frame + d), min(start + L, T)  # positions scoring a frame
        if lo >= hi:
            continue
        states = hidden[:, lo - start : hi - start].reshape(B * (hi - lo), -1)
        target = codes[:, k, lo - d : hi - d].reshape(-1)
        ce = [
            torch.nn.functional.cross_entropy(
                heads[k](states[i : i + rows]).float(), target[i : i + rows], reduction="none"
            )
            for i in range(0, states.shape[0], rows)
        ]
        nll[:, k, lo - d : hi - d] = torch.cat(ce).view(B, hi - lo)
    return nll


# -- settings and paths ---------------------------------------------------------
def hf_offline() -> bool:
    """Whether the hub must not be contacted (read at call time, unlike huggingface_hub)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return env in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def hf_cache_dir() -> str:
    """Where hub downloads go (audiocraft's ``AUDIOCRAFT_CACHE_DIR`` first)."""
    from huggingface_hub import constants

    return os.environ.get("AUDIOCRAFT_CACHE_DIR") or constants.HF_HUB_CACHE


def looks_like_path(model: str) -> bool:
    """Whether a ``model`` argument that is no folder was meant as a path, not a hub id."""
    return (
        model.startswith((".", "/", "~", "\\"))
        or model.count("/") > 1
        or model.endswith((".bin", ".th", ".pt"))
        or (os.sep != "/" and os.sep in model)
    )


def one_line(text: str, limit: int = 240) -> str:
    """``text`` on one line (whitespace runs collapsed, no final period), at most ``limit`` characters."""
    text = " ".join(text.split()).rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` through a temporary file moved into place."""
    from lightning_noiseprobe._io import atomic_path

    with atomic_path(Path(path)) as tmp:
        torch.save(obj, tmp)


@contextlib.contextmanager
def outside_inference_mode() -> Iterator[None]:
    """Run under ``no_grad`` instead of ``inference_mode``.

    audiocraft caches the delay pattern's index tensors (``functools.lru_cache``
    in ``codebooks_patterns.py``). Built under ``inference_mode`` (as in
    ``trainer.validate()``), they are inference tensors, and a later training
    step at the same length fails with "Inference tensors cannot be saved for
    backward". Leaving inference mode keeps every cached tensor usable.
    """
    if torch.is_inference_mode_enabled():
        with torch.inference_mode(False), torch.no_grad():
            yield
    else:
        yield


# -- models the user already holds ------------------------------------------------
def unwrap_model(model: Any) -> Any:
    """The model inside training wrappers, itself unchanged.

    Strips, repeatedly: DDP / ``DataParallel`` / accelerate / ``torch.compile`` wrappers
    (``.module``, ``._orig_mod``) and PEFT wrappers (``PeftModel.get_base_model()``). The
    LoRA layers PEFT injected stay in the returned model, so its adapters are active.
    """
    for _ in range(8):
        if type(model).__name__.startswith("Peft") and hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            break
    return model


# -- the tiny models' codecs ------------------------------------------------------
def calibration_audio(
    clips: int, samples: int, sample_rate: int, g: torch.Generator
) -> torch.Tensor:
    """``[clips, 1, samples]`` of varied audio: coloured noise at random levels plus a sine."""
    freqs = torch.fft.rfftfreq(samples, d=1.0 / sample_rate).clamp_min(20.0)
    colour = torch.rand(clips, 1, generator=g) * 2.0  # 0 white, 1 pink, 2 brown
    spectrum = torch.randn(clips, freqs.numel(), dtype=torch.complex64, generator=g)
    noise = torch.fft.irfft(spectrum * freqs.pow(-colour / 2), n=samples)
    noise = noise / noise.pow(2).mean(-1, keepdim=True).sqrt()
    gain = 10 ** (torch.rand(clips, 1, generator=g) * 2.5 - 2.8)  # about -56 to -6 dBFS
    tone_freq = 10 ** (torch.rand(clips, 1, generator=g) * 2.0 + 1.7)  # 50 Hz to 5 kHz
    tone_amp = torch.rand(clips, 1, generator=g) * gain * 2
    t = torch.arange(samples) / sample_rate
    tone = tone_amp * torch.sin(2 * torch.pi * tone_freq * t)
    return (gain * noise + tone).unsqueeze(1)


def init_codebooks_from_audio(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    layers: Sequence[Any],
    codebooks: Sequence[Any],
    sample_rate: int,
    seed: int,
    clips: int = 16,
    seconds: float = 1.5,
) -> None:
    """Set each residual-VQ codebook to (jittered) residual latents of varied audio.

    Random codebooks are either zeros (transformers' EnCodec: every frame gets
    code 0) or, with kaiming init, 4x larger than the tiny encoder's latents
    (audiocraft: nearly every frame maps to the few smallest codewords), so the
    codes would hardly depend on the audio. This is the first step of
    audiocraft's k-means initialisation (sample the data), without its
    iterations; deterministic for a given ``seed``.

    Args:
        encoder: the codec's encoder, ``[B, 1, S]`` audio to ``[B, D, T]`` latents.
        layers: the quantizer's layers, in order (``encode``/``decode`` a residual).
        codebooks: each layer's codebook (``embed`` and ``embed_avg``, ``[bins, D]``).
        sample_rate: the codec's rate, in Hz.
        seed: seed of the calibration audio and the draws.
    """
    g = torch.Generator().manual_seed(seed)
    wav = calibration_audio(clips, int(seconds * sample_rate), sample_rate, g)
    with torch.no_grad():
        residual = encoder(wav)  # [B, D, T]
        for layer, codebook in zip(layers, codebooks, strict=True):
            bins, dim = codebook.embed.shape
            frames = residual.transpose(1, 2).reshape(-1, dim)
            pick = torch.randint(frames.shape[0], (bins,), generator=g)
            jitter = 0.1 * frames.std(0) * torch.randn(bins, dim, generator=g)
            embed = frames[pick] + jitter
            codebook.embed.copy_(embed)
            codebook.embed_avg.copy_(embed)
            residual = residual - layer.decode(layer.encode(residual))
