"""The Hugging Face transformers backend: MusicGen as ``MusicgenForConditionalGeneration``.

Mono and stereo (``audio_channels=2``: the mono EnCodec applied to each channel, the
codes interleaved) ``MusicgenForConditionalGeneration``, and
``MusicgenMelodyForConditionalGeneration`` (scored with the null melody). Three
sources, picked by ``model``:

* ``"tiny"``, ``"tiny-stereo"``, ``"tiny-melody"``: tiny MusicGens with the real
  interfaces of ``facebook/musicgen-small``, ``-stereo-small`` and ``-melody``
  (EnCodec 32 kHz, 50 Hz, 4 codebooks x 2048 per channel, a T5 text encoder), the
  sizes of the audiocraft tiny models, built offline from configs and seeded
  (:mod:`.builders`). Their text encoder is a tiny random T5 with a tiny
  ``T5TokenizerFast`` built offline (:mod:`.hf_folder`), so text conditioning works
  without any download and ``MusicgenProcessor`` accepts it.
* a local folder written by ``save_pretrained`` (:meth:`TransformersBackend.save`,
  or transformers' own): one composite model (text encoder, EnCodec and decoder
  together), plus the tokenizer files if the folder has them (without them only
  unconditional scoring works).
* a Hugging Face hub id such as ``facebook/musicgen-small``.

Its parts: :mod:`.builders` (the tiny models), :mod:`.export` (``save_pretrained``
folders and the hub), :mod:`.conditions` (text and melody conditions), :mod:`.delay`
(teacher forcing under the delay pattern), :mod:`.prefix` (the fused scoring
kernels). transformers is imported only inside functions, so importing this
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
from lightning_noiseprobe.backends.transformers import prefix as fast
from lightning_noiseprobe.backends.transformers.builders import (
    TINY_DEFAULTS,
    TINY_MODELS,
    build_tiny_transformers_musicgen,
)
from lightning_noiseprobe.backends.transformers.compat import unset_attention
from lightning_noiseprobe.backends.transformers.conditions import (
    Conditions,
    condition_states,
    is_melody,
    text_lengths,
)
from lightning_noiseprobe.backends.transformers.delay import delayed_lm_logits
from lightning_noiseprobe.backends.transformers.export import load_pretrained, save_pretrained

if TYPE_CHECKING:
    from transformers import MusicgenForConditionalGeneration, PreTrainedTokenizerBase

__all__ = ["TransformersBackend"]


class TransformersBackend(ProbeBackend):
    """MusicGen through Hugging Face transformers (``MusicgenForConditionalGeneration``,
    mono or stereo, or ``MusicgenMelodyForConditionalGeneration``).

    The constructor only records its arguments; :meth:`load` imports
    transformers and builds or loads the weights (``local_files_only`` for
    folders, and for hub ids when ``HF_HUB_OFFLINE`` is set).

    Stereo models (``audio_channels=2``) take 2-channel audio: each channel goes
    through the mono EnCodec and the codes are interleaved (left, right, left, ...),
    as transformers' ``generate`` and audiocraft's ``InterleaveStereoCompressionModel``
    do. Melody models are scored with the null melody (and the text, if any)
    prepended, as the paper's authors scored ``facebook/musicgen-melody``
    (:mod:`.conditions`).

    :attr:`lm` is the whole composite model: the decoder
    and the projections (``enc_to_dec_proj``; a melody model's
    ``audio_enc_to_dec_proj`` too) train; the T5 text encoder and
    the EnCodec inside it are frozen (``requires_grad=False``) and put back in
    eval mode whenever they run, so ``lm.train()`` never turns their dropout
    on. Holding everything in one module lets Lightning move it as one and
    :meth:`save` export it in transformers' native format.

    The decoder is kept in ``dtype`` (float32 by default; mixed precision
    comes from the caller's autocast); text encoder and codec stay float32.
    After :meth:`load` the model is in eval mode; afterwards its train/eval
    mode belongs to the caller.

    Args:
        model: ``"tiny"``, ``"tiny-stereo"``, ``"tiny-melody"`` (:data:`TINY_MODELS`),
            a folder written by ``save_pretrained``, or a hub id
            (``"facebook/musicgen-small"``; ``"small"``, ``"medium"``,
            ``"large"`` are short for the ``facebook/`` ones).
        device: device for the whole model.
        dtype: floating dtype of the decoder and the projections.
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
        """Wrap an already-loaded transformers MusicGen without copying it.

        The backend uses ``model`` itself (:attr:`lm` is it, :attr:`codec` its
        ``audio_encoder``). Nothing is copied, moved, cast or frozen, no
        train/eval flag, dropout or config value changes: the caller keeps owning
        the model (:meth:`load` does nothing). DDP/accelerate and PEFT wrappers
        are stripped (:func:`~lightning_noiseprobe.backends._common.unwrap_model`);
        injected LoRA layers stay, so the adapters are active. :attr:`device` and
        ``dtype`` are read from the decoder's weights.

        Args:
            model: a ``MusicgenForConditionalGeneration`` (mono or stereo) or
                ``MusicgenMelodyForConditionalGeneration`` (wrapped or not).
            processor: its ``MusicgenProcessor`` (``MusicgenMelodyProcessor``) or text
                tokenizer, for text conditioning; ``None``: unconditional scoring only.

        Raises:
            NoiseProbeError: if ``model`` is no such model (a ``MusicgenForCausalLM``
                lacks the codec: pass the model holding it), its codec does not fit
                its decoder, or its decoder's attention implementation is unset
                (:func:`.compat.unset_attention`: no causal mask).
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
        _check_layout(inner, "argument `model`")
        unset = unset_attention(inner)
        if unset:
            raise NoiseProbeError(
                f"Expected argument `model` with an attention implementation but its "
                f"{' and '.join(unset)} ha{'ve' if len(unset) > 1 else 's'} "
                "`config._attn_implementation=None` (transformers 5 leaves it so in a "
                "composite built from its parts, `MusicgenForConditionalGeneration(text_encoder=..., "
                "audio_encoder=..., decoder=...)`): the decoder then attends without its causal "
                "mask, in transformers' own forward too. Set "
                + " and ".join(
                    f"`model.{part}.config._attn_implementation = 'sdpa'`" for part in unset
                )
                + ", or `save_pretrained` "
                "the model and load it with `from_pretrained`."
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
                id cannot be reached (offline, not cached), or the model's codec
                does not fit its decoder.
        """
        if self._model is not None:
            return self
        model: Any
        if self.model in TINY_MODELS:
            model, tokenizer = build_tiny_transformers_musicgen(
                self.seed, self.model, **self.tiny_config
            )
        else:
            model, tokenizer = load_pretrained(self.model, self.dropout, base=self.base)
        _check_layout(model, repr(self.model))
        model = model.to(self._device).eval()
        model.decoder.to(self.dtype)
        for proj in _projections(model):
            proj.to(self.dtype)
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
        """The transformers composite model (same object as :attr:`lm`)."""
        return self._require_loaded()

    @property
    def lm(self) -> torch.nn.Module:
        """The whole composite model; only the decoder and the projections train."""
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
        """The decoder's ``audio_channels`` (2 for stereo: the EnCodec itself is mono)."""
        return int(self._require_loaded().decoder.config.audio_channels)

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
        if self.model in TINY_MODELS:
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

        A stereo model's EnCodec is mono: each channel is encoded on its own and the
        codes interleaved (codebook ``2c`` left, ``2c + 1`` right), as transformers'
        ``MusicgenForConditionalGeneration.generate`` does with an audio prompt.

        Args:
            wav: ``[B, C, S]`` float waveform at :attr:`sample_rate` with :attr:`channels` channels.

        Returns:
            ``[B, K, T]`` long codes on the backend's device, ``T = ceil(S / hop)``
            (640 samples per frame for MusicGen).
        """
        codec: Any = self.codec
        channels = self.channels
        if wav.dim() != 3 or wav.shape[1] != channels:
            raise NoiseProbeError(
                f"Expected argument `wav` of shape [B, {channels}, S] but got {tuple(wav.shape)}."
            )
        if codec.training:
            codec.eval()
        codec_device = next(codec.parameters()).device
        books = self.num_codebooks // channels
        parts = []
        # fp32 whatever the caller's autocast: codes must not depend on the trainer's precision
        with torch.no_grad(), torch.autocast(codec_device.type, enabled=False):
            for c in range(channels):
                mono = wav[:, c : c + 1].to(codec_device, torch.float32)
                codes = codec.encode(mono).audio_codes
                if codes.shape[0] != 1 or codes.shape[2] != books:
                    raise NoiseProbeError(
                        f"Expected the codec to give 1 chunk of {books} codebooks but got "
                        f"audio_codes of shape {tuple(codes.shape)}; set `chunk_length_s=None` "
                        "and a `target_bandwidths[0]` matching the decoder's codebooks in the "
                        "codec config."
                    )
                parts.append(codes[0])
        codes = torch.stack(parts, dim=2).flatten(1, 2)  # [B, K / C, C, T] -> [B, K, T]
        return codes.long().to(self.device)

    def _conditions(self, batch: int, descriptions: Sequence[str | None] | None) -> Conditions:
        """The decoder's conditions for ``descriptions`` (:func:`.conditions.condition_states`)."""
        return condition_states(
            self._require_loaded(), self.tokenizer, descriptions, batch, self.model
        )

    def _groups(
        self, batch: int, descriptions: Sequence[str | None] | None
    ) -> list[torch.Tensor] | None:
        """Batch items by text length, for a melody model whose texts differ in length, else ``None``.

        A melody model prepends the text to the sequence: items with texts of one
        length run together, so that no padding sits between text and codes and each
        item's loss is the one it gets alone (:func:`.conditions.text_lengths`).
        """
        if not is_melody(self._require_loaded()) or descriptions is None:
            return None
        lengths = torch.tensor(text_lengths(self.tokenizer, descriptions, batch))
        if bool((lengths == lengths[0]).all()):
            return None
        return [torch.nonzero(lengths == n).flatten() for n in lengths.unique()]

    def _by_groups(
        self,
        run: Any,
        batch: int,
        descriptions: Sequence[str | None] | None,
        *tensors: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``run(conditions, *tensors)`` over the whole batch, or per :meth:`_groups` group,
        the batch-first results put back in order."""
        groups = self._groups(batch, descriptions)
        if groups is None:
            return run(self._conditions(batch, descriptions), *tensors)  # type: ignore[no-any-return]
        outs: list[tuple[torch.Tensor, torch.Tensor]] = []
        for index in groups:
            texts = [descriptions[i] for i in index.tolist()]  # type: ignore[index]
            rows = [t.index_select(0, index.to(t.device)) for t in tensors]
            outs.append(run(self._conditions(len(texts), texts), *rows))
        order = torch.cat(groups).argsort()
        return tuple(  # type: ignore[return-value]
            torch.cat([o[i] for o in outs]).index_select(0, order.to(outs[0][i].device))
            for i in range(2)
        )

    def lm_logits(
        self,
        codes: torch.Tensor,
        descriptions: Sequence[str | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LM logits aligned with ``codes``, with gradients (training path).

        Teacher forcing under MusicGen's delay pattern (see
        :func:`delayed_lm_logits`), conditioned on ``descriptions`` through the
        T5 encoder (frozen, eval mode) and ``enc_to_dec_proj`` (trains); a melody
        model's null melody and text are prepended. No
        classifier-free-guidance dropout and no random number is drawn. The
        decoder's train/eval mode is left as the caller set it.

        Args:
            codes: ``[B, K, T]`` long codes.
            descriptions: one text per item (``None`` = unconditional), or
                ``None`` for all-unconditional.

        Returns:
            ``(logits, mask)``: logits ``[B, K, T, card]`` in the decoder's
            dtype, NaN where ``mask`` (``[B, K, T]`` bool) is ``False`` (the
            last ``delay_k`` frames of codebook ``k``, as in audiocraft).
        """
        model = self._require_loaded()
        self._check_codes(codes)
        codes = codes.to(self.device, torch.long)

        def run(conditions: Conditions, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return delayed_lm_logits(model.decoder, rows, conditions.states, conditions.mask)

        with outside_inference_mode():
            return self._by_groups(run, codes.shape[0], descriptions, codes)

    def _check_codes(self, codes: torch.Tensor) -> None:
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            raise NoiseProbeError(
                f"Expected argument `codes` of shape [B, {self.num_codebooks}, T] "
                f"but got {tuple(codes.shape)}."
            )

    # -- fast scoring (the kernels of .prefix) --------------------------------------
    def token_nll_fast(
        self,
        codes: torch.Tensor,
        descriptions: Sequence[str | None] | None = None,
        score_from: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``token_nll`` with fused heads, for scoring (:func:`.prefix.token_nll_fast`).

        Same values (float32 rounding) and mask on frames from ``score_from`` on;
        earlier frames hold 0 (their heads are skipped). Falls back to
        :meth:`token_nll` for a model the fused path does not cover.
        """
        model = self._require_loaded()
        if not fast.fast_path_supported(model):
            return self.token_nll(codes, descriptions)
        self._check_codes(codes)
        codes = codes.to(self.device, torch.long)

        def run(conditions: Conditions, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return fast.token_nll_fast(model.decoder, rows, conditions, score_from)

        with outside_inference_mode():
            return self._by_groups(run, codes.shape[0], descriptions, codes)

    @property
    def supports_prefix_sharing(self) -> bool:
        """``True`` when the fused, cache-continuing path covers the loaded model."""
        return self._model is not None and fast.fast_path_supported(self._model)

    def token_nll_shared_prefix(
        self,
        codes: torch.Tensor,
        variants: torch.Tensor,
        descriptions: Sequence[str | None] | None = None,
        *,
        shared_frames: int = 0,
        batch_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each clean sequence once, its variants continued from the shared prefix.

        See :func:`.prefix.token_nll_shared_prefix`; falls back to full scoring of
        every sequence when the model is not covered.
        """
        model = self._require_loaded()
        self._check_codes(codes)
        B, P, K, T = variants.shape
        if codes.shape != (B, K, T):
            raise NoiseProbeError(
                f"Expected argument `variants` of shape [{codes.shape[0]}, P, {codes.shape[1]}, "
                f"{codes.shape[2]}] (P variants of each clean sequence) but got "
                f"{tuple(variants.shape)}."
            )
        if P == 0 or not fast.fast_path_supported(model):
            return super().token_nll_shared_prefix(
                codes, variants, descriptions, shared_frames=0, batch_size=batch_size
            )
        codes = codes.to(self.device, torch.long)
        variants = variants.to(self.device, torch.long)

        def run(
            conditions: Conditions, clean: torch.Tensor, copies: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            return fast.token_nll_shared_prefix(
                model.decoder,
                clean,
                copies,
                conditions,
                shared_frames=shared_frames,
                batch_size=batch_size,
            )

        with outside_inference_mode():
            return self._by_groups(run, B, descriptions, codes, variants)

    # -- training contract (MusicGenLightningModule) -----------------------------
    @property
    def supports_training(self) -> bool:
        """``True``: the decoder and the projections (``enc_to_dec_proj``, a melody
        model's ``audio_enc_to_dec_proj``) train."""
        return True

    freeze_example = "model.decoder.layers.0"

    def frozen_lm_parts(self) -> tuple[str, ...]:
        """The T5 ``text_encoder`` (the EnCodec inside :attr:`lm` is the codec)."""
        return ("text_encoder",)

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """``lm.decoder``'s parameters by their names in it (a ``MusicgenForCausalLM``:
        ``model.decoder.embed_tokens``, ``model.decoder.layers.0``, ``lm_heads``, ...),
        plus ``enc_to_dec_proj.*`` (and ``audio_enc_to_dec_proj.*``); the frozen T5 and
        codec are not named."""
        lm: Any = self._require_loaded()
        params = dict(lm.decoder.named_parameters())
        for owner in _PROJECTIONS:
            proj = getattr(lm, owner, None)
            for name, param in proj.named_parameters() if proj is not None else ():
                params[f"{owner}.{name}"] = param
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
        """Each decoder layer, then the decoder, then the projections.

        Only the parts that train, each called through its own ``forward``; the
        frozen T5 and codec inside :attr:`lm` stay whole on every rank.
        """
        lm: Any = self._require_loaded()
        return [*lm.decoder.model.decoder.layers, lm.decoder, *_projections(lm)]

    def export(self, folder: str | os.PathLike[str]) -> Path:
        """:meth:`save`: transformers' ``save_pretrained`` format, written atomically."""
        return self.save(folder)


#: The composite model's trainable projections into the decoder width (each may be absent).
_PROJECTIONS = ("enc_to_dec_proj", "audio_enc_to_dec_proj")


def _projections(model: Any) -> list[torch.nn.Module]:
    """The projections ``model`` has, in :data:`_PROJECTIONS` order."""
    return [p for p in (getattr(model, name, None) for name in _PROJECTIONS) if p is not None]


def _check_layout(model: Any, source: str) -> None:
    """Refuse a composite MusicGen whose codec does not fit its decoder.

    The EnCodec of every MusicGen, stereo included, is mono (a stereo model encodes
    each channel with it); its codebooks per channel must be the decoder's.
    """
    decoder = model.config.decoder
    codec = model.config.audio_encoder
    channels, books = int(decoder.audio_channels), int(decoder.num_codebooks)
    if int(codec.audio_channels) != 1 or channels not in (1, 2) or books % channels:
        raise NoiseProbeError(
            f"Expected {source} to be a MusicGen with a mono EnCodec and a decoder of 1 or 2 "
            f"audio channels (a stereo model encodes each channel with the mono codec) but "
            f"its codec has audio_channels={codec.audio_channels} and its decoder "
            f"audio_channels={channels}, num_codebooks={books}."
        )
