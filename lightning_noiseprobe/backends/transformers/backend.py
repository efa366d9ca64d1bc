"""The Hugging Face transformers backend: MusicGen as ``MusicgenForConditionalGeneration``.

Three sources, picked by ``model``:

* ``"tiny"``: a tiny MusicGen with MusicGen's real interface (EnCodec 32 kHz
  mono, 50 Hz, 4 codebooks x 2048, delay pattern ``[0, 1, 2, 3]``, a T5 text
  encoder feeding cross-attention), the same sizes as the audiocraft tiny
  model, built offline from configs and seeded. Its text encoder is a tiny
  random T5 with a tiny ``T5TokenizerFast`` built offline (:mod:`.hf_folder`), so
  text conditioning works without any download and ``MusicgenProcessor`` accepts it.
* a local folder written by ``save_pretrained`` (:meth:`TransformersBackend.save`,
  or transformers' own): one ``MusicgenForConditionalGeneration`` (text
  encoder, EnCodec and decoder together), plus the tokenizer files if the
  folder has them (without them only unconditional scoring works).
* a Hugging Face hub id such as ``facebook/musicgen-small``.

Its parts: :mod:`.builders` (the tiny model), :mod:`.export` (``save_pretrained``
folders and the hub), :mod:`.delay` (teacher forcing under the delay
pattern). transformers is imported only inside functions, so importing this
module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends._common import outside_inference_mode
from lightning_noiseprobe.backends.base import ProbeBackend
from lightning_noiseprobe.backends.transformers.builders import (
    TINY_DEFAULTS,
    build_tiny_transformers_musicgen,
)
from lightning_noiseprobe.backends.transformers.delay import delayed_lm_logits
from lightning_noiseprobe.backends.transformers.export import load_pretrained, save_pretrained
from lightning_noiseprobe.backends.transformers.prefix import FastScoringMixin

if TYPE_CHECKING:
    from transformers import MusicgenForConditionalGeneration, PreTrainedTokenizerBase

__all__ = ["TransformersBackend"]


class TransformersBackend(FastScoringMixin, ProbeBackend):
    """MusicGen through Hugging Face transformers (``MusicgenForConditionalGeneration``).

    The constructor only records its arguments; :meth:`load` imports
    transformers and builds or loads the weights (``local_files_only`` for
    folders, and for hub ids when ``HF_HUB_OFFLINE`` is set).

    :attr:`lm` is the whole ``MusicgenForConditionalGeneration``: the decoder
    and the text projection ``enc_to_dec_proj`` train; the T5 text encoder and
    the EnCodec inside it are frozen (``requires_grad=False``) and put back in
    eval mode whenever they run, so ``lm.train()`` never turns their dropout
    on. Holding everything in one module lets Lightning move it as one and
    :meth:`save` export it in transformers' native format.

    The decoder is kept in ``dtype`` (float32 by default; mixed precision
    comes from the caller's autocast); text encoder and codec stay float32.
    After :meth:`load` the model is in eval mode; afterwards its train/eval
    mode belongs to the caller.

    Args:
        model: ``"tiny"``, a folder written by ``save_pretrained``, or a hub id
            (``"facebook/musicgen-small"``; ``"small"``, ``"medium"``,
            ``"large"`` are short for the ``facebook/`` ones).
        device: device for the whole model.
        dtype: floating dtype of the decoder and ``enc_to_dec_proj``.
        seed: weight seed of the tiny model (ignored otherwise).
        tiny_config: size overrides of the tiny model, keys from
            :data:`TINY_DEFAULTS` (ignored otherwise).
        dropout: decoder dropout (``dropout``, ``attention_dropout``,
            ``activation_dropout``) for loaded checkpoints; 0 by default as
            in audiocraft's MusicGen training (the hub configs say 0.1);
            ``None`` keeps the checkpoint's values.
        base: when ``model`` is a PEFT adapter folder, the base model (a folder or hub
            id) it is loaded onto, adapters active (the CLI's ``--base``); an adapter
            folder without it is refused with a message saying so.

    Example:
        >>> backend = TransformersBackend(model="tiny")  # cheap: nothing is built yet
        >>> backend.describe()["model"]
        'tiny'
    """

    name = "transformers"

    def __init__(
        self,
        model: str | os.PathLike[str] = "tiny",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        tiny_config: dict[str, Any] | None = None,
        dropout: float | None = 0.0,
        base: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(model, (str, os.PathLike)) or not str(model):
            raise NoiseProbeError(
                f"Expected argument `model` to be 'tiny', a folder or a hub id but got {model!r}."
            )
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise NoiseProbeError(
                f"Expected argument `dtype` to be a floating torch.dtype but got {dtype!r}."
            )
        if dropout is not None and not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise NoiseProbeError(
                f"Expected argument `dropout` to be None or a number in [0, 1) but got {dropout!r}."
            )
        tiny_config = dict(tiny_config or {})
        unknown = sorted(set(tiny_config) - set(TINY_DEFAULTS))
        if unknown:
            raise NoiseProbeError(
                f"Expected keys of argument `tiny_config` among {sorted(TINY_DEFAULTS)} "
                f"but got {unknown}."
            )
        self.model = str(model)
        self._device = torch.device(device)
        self.dtype = dtype
        self.seed = int(seed)
        self.tiny_config = tiny_config
        self.dropout = None if dropout is None else float(dropout)
        self.base = None if base is None else str(base)
        self._model: MusicgenForConditionalGeneration | None = None
        #: The text tokenizer (``None`` if the folder had none: unconditional only).
        self.tokenizer: PreTrainedTokenizerBase | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model!r}, device={str(self.device)!r}, "
            f"dtype={self.dtype}, loaded={self._model is not None})"
        )

    # -- lifecycle ----------------------------------------------------------
    @classmethod
    def from_model(cls, model: Any, processor: Any = None) -> TransformersBackend:
        """Wrap an already-loaded ``MusicgenForConditionalGeneration`` without copying it.

        The backend uses ``model`` itself (:attr:`lm` is it, :attr:`codec` its
        ``audio_encoder``). Nothing is copied, moved, cast or frozen, no
        train/eval flag, dropout or config value changes: the caller keeps owning
        the model (:meth:`load` does nothing). DDP/accelerate and PEFT wrappers
        are stripped (:func:`~lightning_noiseprobe.backends._common.unwrap_model`);
        injected LoRA layers stay, so the adapters are active. :attr:`device` and
        ``dtype`` are read from the decoder's weights.

        Args:
            model: a ``MusicgenForConditionalGeneration`` (wrapped or not).
            processor: its ``MusicgenProcessor`` or text tokenizer, for text
                conditioning; ``None``: unconditional scoring only.

        Raises:
            NoiseProbeError: if ``model`` is no ``MusicgenForConditionalGeneration``
                (a ``MusicgenForCausalLM`` lacks the codec: pass the model holding
                it) or is not mono.
        """
        from lightning_noiseprobe.backends._common import unwrap_model

        inner = unwrap_model(model)
        if not all(
            isinstance(getattr(inner, part, None), torch.nn.Module)
            for part in ("decoder", "audio_encoder", "text_encoder")
        ):
            raise NoiseProbeError(
                "Expected argument `model` to be a transformers MusicgenForConditionalGeneration (with"
                f" `decoder`, `audio_encoder` and `text_encoder`) but got {type(inner).__name__}."
                + (
                    " A MusicgenForCausalLM is the decoder alone; pass the"
                    " MusicgenForConditionalGeneration that holds it (the codec is needed)."
                    if type(inner).__name__ == "MusicgenForCausalLM"
                    else ""
                )
            )
        channels = getattr(getattr(inner.config, "decoder", None), "audio_channels", 1)
        if channels != 1:
            raise NoiseProbeError(
                f"Expected argument `model` to be a mono MusicGen but it has audio_channels={channels};"
                " stereo is not supported."
            )
        param = next(inner.decoder.parameters())
        name = str(getattr(inner.config, "_name_or_path", "") or "from_model")
        backend = cls(model=name, device=param.device, dtype=param.dtype, dropout=None)
        backend._model = inner
        backend.tokenizer = getattr(processor, "tokenizer", processor)
        return backend

    def load(self) -> TransformersBackend:
        """Build (``"tiny"``) or load the weights. Idempotent. Returns ``self``.

        Raises:
            NoiseProbeError: if a folder is missing or holds no MusicGen, a hub
                id cannot be reached (offline, not cached), or the model is not
                a mono MusicGen.
        """
        if self._model is not None:
            return self
        model: Any
        if self.model == "tiny":
            model, tokenizer = build_tiny_transformers_musicgen(self.seed, **self.tiny_config)
        else:
            model, tokenizer = load_pretrained(self.model, self.dropout, base=self.base)
        if model.config.decoder.audio_channels != 1:
            raise NoiseProbeError(
                f"Expected argument `model` to be a mono MusicGen but {self.model!r} has "
                f"audio_channels={model.config.decoder.audio_channels}; stereo is not supported."
            )
        model = model.to(self._device).eval()
        model.decoder.to(self.dtype)
        model.enc_to_dec_proj.to(self.dtype)
        for frozen in (model.text_encoder, model.audio_encoder):
            frozen.to(torch.float32).requires_grad_(False)
        self._model = model
        self.tokenizer = tokenizer
        return self

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the model (and tokenizer) in transformers' ``save_pretrained`` format.

        ``TransformersBackend(model=folder)`` and
        ``MusicgenForConditionalGeneration.from_pretrained(folder)`` load it.
        Written to a temporary folder beside ``folder`` and renamed into place,
        so a reader never sees a half-written model; an earlier save at
        ``folder`` is replaced.

        Args:
            folder: output folder.

        Returns:
            The folder, as a :class:`~pathlib.Path`.

        Raises:
            NoiseProbeError: if ``folder`` exists and is not an earlier save
                (a file, or a non-empty folder without ``config.json``).
        """
        return save_pretrained(self._require_loaded(), self.tokenizer, folder)

    def _require_loaded(self) -> MusicgenForConditionalGeneration:
        if self._model is None:
            raise RuntimeError(f"{self!r} is not loaded: call `.load()` first.")
        return self._model

    @property
    def device(self) -> torch.device:
        """Where the decoder's weights are: follows the model when Lightning (or you) move it."""
        if self._model is None:
            return self._device
        param = next(self._model.decoder.parameters(), None)
        return param.device if param is not None else self._device

    # -- modules --------------------------------------------------------------
    @property
    def musicgen(self) -> MusicgenForConditionalGeneration:
        """The transformers ``MusicgenForConditionalGeneration`` (same object as :attr:`lm`)."""
        return self._require_loaded()

    @property
    def lm(self) -> torch.nn.Module:
        """The whole ``MusicgenForConditionalGeneration``; only decoder and ``enc_to_dec_proj`` train."""
        return self._require_loaded()

    @property
    def codec(self) -> torch.nn.Module:
        """The frozen transformers ``EncodecModel`` (``lm.audio_encoder``)."""
        return self._require_loaded().audio_encoder

    # -- static description -------------------------------------------------
    @property
    def _codec_config(self) -> Any:
        codec: Any = self.codec
        return codec.config

    @property
    def sample_rate(self) -> int:
        return int(self._codec_config.sampling_rate)

    @property
    def channels(self) -> int:
        return int(self._codec_config.audio_channels)

    @property
    def frame_rate(self) -> float:
        config = self._codec_config
        hop = 1
        for ratio in config.upsampling_ratios:
            hop *= int(ratio)
        return float(config.sampling_rate) / hop

    @property
    def num_codebooks(self) -> int:
        return int(self._require_loaded().decoder.num_codebooks)

    @property
    def cardinality(self) -> int:
        return int(self._require_loaded().decoder.config.vocab_size)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description; works before :meth:`load` (model, device, dtype only)."""
        out: dict[str, Any] = {
            "backend": self.name,
            "model": self.model,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        if self.model == "tiny":
            out["seed"] = self.seed
            out["tiny_config"] = {**TINY_DEFAULTS, **self.tiny_config}
        else:
            out["dropout"] = self.dropout
        if self._model is not None:
            out.update(super().describe())
        return out

    # -- compute --------------------------------------------------------------
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Tokenize audio with the frozen EnCodec (under ``torch.no_grad()``).

        Args:
            wav: ``[B, C, S]`` float waveform at :attr:`sample_rate` with :attr:`channels` channels.

        Returns:
            ``[B, K, T]`` long codes on the backend's device, ``T = ceil(S / hop)``
            (640 samples per frame for MusicGen).
        """
        codec: Any = self.codec
        if wav.dim() != 3 or wav.shape[1] != self.channels:
            raise NoiseProbeError(
                f"Expected argument `wav` of shape [B, {self.channels}, S] but got {tuple(wav.shape)}."
            )
        if codec.training:
            codec.eval()
        codec_device = next(codec.parameters()).device
        # fp32 whatever the caller's autocast: codes must not depend on the trainer's precision
        with torch.no_grad(), torch.autocast(codec_device.type, enabled=False):
            codes = codec.encode(wav.to(codec_device, torch.float32)).audio_codes
        if codes.shape[0] != 1 or codes.shape[2] != self.num_codebooks:
            raise NoiseProbeError(
                f"Expected the codec to give 1 chunk of {self.num_codebooks} codebooks but got "
                f"audio_codes of shape {tuple(codes.shape)}; set `chunk_length_s=None` and a "
                "`target_bandwidths[0]` matching the decoder's codebooks in the codec config."
            )
        return codes[0].long().to(self.device)

    def _encoder_states(
        self, batch: int, descriptions: Sequence[str | None] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention inputs ``([B, L, dim], [B, L])`` for ``descriptions``.

        As transformers' MusicGen: T5 states projected by ``enc_to_dec_proj``
        and zeroed at padding, with the padding mask passed to cross-attention.
        An unconditional item (``None``) attends to a single zero state, which
        is what audiocraft's null condition amounts to (the attention has no
        bias, so it adds exactly 0) and never leaves a row fully masked.
        """
        model: Any = self._require_loaded()
        if descriptions is None:
            descriptions = [None] * batch
        elif isinstance(descriptions, str) or len(descriptions) != batch:
            raise NoiseProbeError(
                f"Expected argument `descriptions` to be a sequence of {batch} texts or None "
                f"(one per item) but got {descriptions!r}."
            )
        device = self.device
        dtype = next(model.decoder.parameters()).dtype
        dim = int(model.decoder.config.hidden_size)
        projects = (
            model.text_encoder.config.hidden_size != dim
            and model.decoder.config.cross_attention_hidden_size is None
        )
        proj = model.enc_to_dec_proj
        if all(text is None for text in descriptions):
            zeros = torch.zeros(batch, 1, dim, device=device, dtype=dtype)
            if projects:  # touch the projection (times 0) so DDP sees it used in every step
                text_dim = int(model.text_encoder.config.hidden_size)
                null = torch.zeros(batch, 1, text_dim, device=device, dtype=proj.weight.dtype)
                zeros = zeros + 0.0 * proj(null).to(dtype)
            return zeros, torch.ones(batch, 1, device=device, dtype=torch.long)
        if self.tokenizer is None:
            raise NoiseProbeError(
                f"Expected no `descriptions` (or only None) for {self.model!r}, which has no "
                f"tokenizer files, but got {list(descriptions)!r}. Save the tokenizer with "
                "the model (`tokenizer.save_pretrained(folder)`) to score with text."
            )
        texts = [text if text is not None else "" for text in descriptions]
        tokens = self.tokenizer(texts, padding=True, return_tensors="pt")
        input_ids = tokens["input_ids"].to(device)
        mask = tokens["attention_mask"].to(device)
        text_encoder = model.text_encoder
        if text_encoder.training:
            text_encoder.eval()
        with torch.no_grad():
            hidden = text_encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        if projects:
            hidden = proj(hidden.to(proj.weight.dtype))
        hidden = hidden.to(dtype)
        uncond = torch.tensor([text is None for text in descriptions], device=device)
        mask = mask.masked_fill(uncond[:, None], 0)
        hidden = hidden * mask[..., None].to(dtype)  # zero at padding and for None items
        mask[:, 0] = mask[:, 0].masked_fill(uncond, 1)
        return hidden, mask

    def lm_logits(
        self,
        codes: torch.Tensor,
        descriptions: Sequence[str | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LM logits aligned with ``codes``, with gradients (training path).

        Teacher forcing under MusicGen's delay pattern (see
        :func:`delayed_lm_logits`), conditioned on ``descriptions`` through the
        T5 encoder (frozen, eval mode) and ``enc_to_dec_proj`` (trains). No
        classifier-free-guidance dropout and no random number is drawn. The
        decoder's train/eval mode is left as the caller set it.

        Args:
            codes: ``[B, K, T]`` long codes.
            descriptions: one text per item (``None`` = unconditional), or
                ``None`` for all-unconditional.

        Returns:
            ``(logits, mask)``: logits ``[B, K, T, card]`` in the decoder's
            dtype, NaN where ``mask`` (``[B, K, T]`` bool) is ``False`` (the
            last ``k`` frames of codebook ``k``, as in audiocraft).
        """
        model = self._require_loaded()
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            raise NoiseProbeError(
                f"Expected argument `codes` of shape [B, {self.num_codebooks}, T] "
                f"but got {tuple(codes.shape)}."
            )
        codes = codes.to(self.device, torch.long)
        with outside_inference_mode():
            hidden, mask = self._encoder_states(codes.shape[0], descriptions)
            return delayed_lm_logits(model.decoder, codes, hidden, mask)

    # -- training contract (MusicGenLightningModule) -----------------------------
    @property
    def supports_training(self) -> bool:
        """``True``: the decoder and the text projection ``enc_to_dec_proj`` train."""
        return True

    freeze_example = "model.decoder.layers.0"

    def frozen_lm_parts(self) -> tuple[str, ...]:
        """The T5 ``text_encoder`` (the EnCodec inside :attr:`lm` is the codec)."""
        return ("text_encoder",)

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """``lm.decoder``'s parameters by their names in it (a ``MusicgenForCausalLM``:
        ``model.decoder.embed_tokens``, ``model.decoder.layers.0``, ``lm_heads``, ...),
        plus ``enc_to_dec_proj.*``; the frozen T5 and codec are not named."""
        lm: Any = self._require_loaded()
        params = dict(lm.decoder.named_parameters())
        for name, param in lm.enc_to_dec_proj.named_parameters():
            params[f"enc_to_dec_proj.{name}"] = param
        return params

    def enable_gradient_checkpointing(self) -> None:
        """transformers' non-reentrant activation (gradient) checkpointing on the decoder.

        Non-reentrant: no inputs needing grad required, same numbers as without.
        """
        from lightning_noiseprobe.backends.transformers.compat import (
            enable_activation_checkpointing,
        )

        enable_activation_checkpointing(self._require_loaded().decoder)

    def fsdp_units(self) -> list[torch.nn.Module]:
        """Each decoder layer, then the decoder, then the text projection.

        Only the parts that train, each called through its own ``forward``; the
        frozen T5 and codec inside :attr:`lm` stay whole on every rank.
        """
        lm: Any = self._require_loaded()
        return [*lm.decoder.model.decoder.layers, lm.decoder, lm.enc_to_dec_proj]

    def export(self, folder: str | os.PathLike[str]) -> Path:
        """:meth:`save`: transformers' ``save_pretrained`` format, written atomically."""
        return self.save(folder)
