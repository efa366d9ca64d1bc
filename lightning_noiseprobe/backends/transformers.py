"""The Hugging Face transformers backend: MusicGen as ``MusicgenForConditionalGeneration``.

Three sources, picked by ``model``:

* ``"tiny"``: a tiny MusicGen with MusicGen's real interface (EnCodec 32 kHz
  mono, 50 Hz, 4 codebooks x 2048, delay pattern ``[0, 1, 2, 3]``, a T5 text
  encoder feeding cross-attention), the same sizes as the audiocraft tiny
  model, built offline from configs and seeded. Its text encoder is a tiny
  random T5 with a tiny ``T5TokenizerFast`` built offline (``hf_folder``), so
  text conditioning works without any download and ``MusicgenProcessor`` accepts it.
* a local folder written by ``save_pretrained`` (:meth:`TransformersBackend.save`,
  or transformers' own): one ``MusicgenForConditionalGeneration`` (text
  encoder, EnCodec and decoder together), plus the tokenizer files if the
  folder has them (without them only unconditional scoring works).
* a Hugging Face hub id such as ``facebook/musicgen-small``.

transformers is imported only inside functions, so importing this module
(which registers the backend) stays cheap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends.audiocraft import (
    TINY_DEFAULTS as _AUDIOCRAFT_TINY,
)
from lightning_noiseprobe.backends.audiocraft import (
    _calibration_audio,
    _hf_offline,
    _looks_like_path,
    _outside_inference_mode,
)
from lightning_noiseprobe.backends.base import ProbeBackend, register_backend
from lightning_noiseprobe.backends.hf_folder import (
    TINY_TEXT_VOCAB_SIZE,
    save_hf_folder,
    tiny_t5_tokenizer,
)
from lightning_noiseprobe.backends.transformers_prefix import FastScoringMixin

if TYPE_CHECKING:
    from transformers import MusicgenForConditionalGeneration, PreTrainedTokenizerBase

__all__ = [
    "TINY_DEFAULTS",
    "TransformersBackend",
    "build_tiny_transformers_musicgen",
    "delayed_lm_logits",
]

#: Size knobs of the tiny model, accepted by :func:`build_tiny_transformers_musicgen`.
#: The LM and codec sizes are those of the audiocraft tiny model.
TINY_DEFAULTS: dict[str, Any] = {
    "dim": _AUDIOCRAFT_TINY["dim"],  # decoder width
    "num_heads": _AUDIOCRAFT_TINY["num_heads"],
    "num_layers": _AUDIOCRAFT_TINY["num_layers"],
    "n_filters": _AUDIOCRAFT_TINY["n_filters"],  # EnCodec base width
    "codec_dim": _AUDIOCRAFT_TINY["codec_dim"],  # EnCodec latent dimension
    "text_dim": 32,  # T5 width (projected to `dim` by `enc_to_dec_proj`)
    "text_layers": 1,
    "text_heads": 4,
}

_HUB_SHORT_NAMES = {
    "small": "facebook/musicgen-small",
    "medium": "facebook/musicgen-medium",
    "large": "facebook/musicgen-large",
}

_CONFIG_FILE = "config.json"


def build_tiny_transformers_musicgen(
    seed: int = 0, **overrides: Any
) -> tuple[MusicgenForConditionalGeneration, PreTrainedTokenizerBase]:
    """Build a tiny, randomly initialised transformers MusicGen offline (CPU, float32, eval).

    Decoder: 4 codebooks x 2048, ``dim`` 64, 2 layers, 4 heads, GELU, no
    bias, dropout 0 everywhere (transformers' default would be 0.1).
    Codec: ``EncodecModel`` at 32 kHz mono, ratios ``[8, 5, 4, 4]`` (hop
    640, 50 Hz), non-causal, constant padding (as audiocraft's MusicGen
    codec); its codebooks, zeros in a fresh transformers EnCodec, are drawn
    from its own residual latents of varied synthetic audio (as the audiocraft
    tiny codec), so the codes follow the audio. Text: a 1-layer T5 encoder
    (384 ids) over a tiny offline ``T5TokenizerFast``, projected to the decoder width.

    The same ``seed`` and ``overrides`` give bitwise identical weights; the
    global RNG state is left untouched.

    Args:
        seed: seed for the weight initialisation.
        **overrides: size knobs, any of :data:`TINY_DEFAULTS`.

    Returns:
        ``(model, tokenizer)``: a ``MusicgenForConditionalGeneration`` and a
        ``T5TokenizerFast``.

    Raises:
        NoiseProbeError: on an unknown override.
    """
    unknown = sorted(set(overrides) - set(TINY_DEFAULTS))
    if unknown:
        raise NoiseProbeError(
            f"Expected tiny-model overrides among {sorted(TINY_DEFAULTS)} but got {unknown}."
        )
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    v = {**TINY_DEFAULTS, **overrides}
    card, n_q = 2048, 4
    tokenizer = tiny_t5_tokenizer()  # hfspeed hook: a T5 tokenizer, as MusicgenProcessor needs
    text_config = T5Config(
        vocab_size=TINY_TEXT_VOCAB_SIZE,  # the ByT5 size it had: the seeded weights stay the same
        d_model=v["text_dim"],
        d_kv=v["text_dim"] // v["text_heads"],
        d_ff=4 * v["text_dim"],
        num_layers=v["text_layers"],
        num_heads=v["text_heads"],
        dropout_rate=0.0,
        feed_forward_proj="relu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    codec_config = EncodecConfig(
        sampling_rate=32000,
        audio_channels=1,
        num_filters=v["n_filters"],
        hidden_size=v["codec_dim"],
        codebook_dim=v["codec_dim"],
        codebook_size=card,
        upsampling_ratios=[8, 5, 4, 4],
        num_residual_layers=1,
        use_causal_conv=False,
        pad_mode="constant",
        use_conv_shortcut=False,
        normalize=False,
        target_bandwidths=[2.2],  # floor(2200 / (50 Hz * 11 bits)) = 4 codebooks
    )
    decoder_config = MusicgenDecoderConfig(
        vocab_size=card,
        hidden_size=v["dim"],
        ffn_dim=4 * v["dim"],
        num_hidden_layers=v["num_layers"],
        num_attention_heads=v["num_heads"],
        num_codebooks=n_q,
        audio_channels=1,
        activation_function="gelu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=card,
        bos_token_id=card,
        decoder_start_token_id=card,  # hfspeed hook: `forward(labels=...)` shifts with it
        tie_word_embeddings=False,
    )
    config = MusicgenConfig.from_sub_models_config(text_config, codec_config, decoder_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MusicgenForConditionalGeneration(config)
    generation: Any = model.generation_config
    generation.decoder_start_token_id = card
    generation.pad_token_id = card
    _init_codebooks_from_audio(model.audio_encoder, seed)
    return model.eval(), tokenizer


def _init_codebooks_from_audio(
    codec: Any, seed: int, clips: int = 16, seconds: float = 1.5
) -> None:
    """Set each RVQ codebook of a transformers EnCodec to jittered residual latents of audio.

    The transformers twin of the audiocraft tiny codec's initialisation (same
    calibration audio): without it the codebooks are zeros and every frame
    gets code 0.
    """
    g = torch.Generator().manual_seed(seed)
    sr = int(codec.config.sampling_rate)
    wav = _calibration_audio(clips, int(seconds * sr), sr, g)
    with torch.no_grad():
        residual = codec.encoder(wav)  # [B, D, T]
        for layer in codec.quantizer.layers:
            codebook = layer.codebook
            bins, dim = codebook.embed.shape
            frames = residual.transpose(1, 2).reshape(-1, dim)
            pick = torch.randint(frames.shape[0], (bins,), generator=g)
            jitter = 0.1 * frames.std(0) * torch.randn(bins, dim, generator=g)
            embed = frames[pick] + jitter
            codebook.embed.copy_(embed)
            codebook.embed_avg.copy_(embed)
            residual = residual - layer.decode(layer.encode(residual))


def delayed_lm_logits(
    decoder: torch.nn.Module,
    codes: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a transformers ``MusicgenForCausalLM`` aligned with ``codes`` (teacher forcing).

    MusicGen's delay pattern, as transformers builds it: BOS (``2048``) is
    prepended, ``decoder.build_delay_pattern_mask(ids, 2048, max_length=T + K)``
    shifts codebook ``k`` right by ``k``, and position ``p`` of the delayed
    sequence predicts position ``p + 1``; so the logits of code ``(k, t)``
    sit at position ``t + k``. Only the first ``T`` positions are run (later
    ones predict only tokens that audiocraft masks). As in audiocraft's
    ``compute_predictions``, the last ``d_k = k`` frames of codebook ``k``
    are invalid: ``mask`` is ``False`` and the logits NaN there.

    Args:
        decoder: a ``MusicgenForCausalLM`` (mono: ``audio_channels == 1``).
        codes: ``[B, K, T]`` long codes in ``[0, card)``.
        encoder_hidden_states: ``[B, L, dim]`` text states for cross-attention
            (already projected to the decoder width), or ``None`` (no cross-attention).
        encoder_attention_mask: ``[B, L]`` 0/1 mask of ``encoder_hidden_states``.

    Returns:
        ``(logits, mask)``: ``[B, K, T, card]`` in the decoder's dtype (with
        gradients) and ``[B, K, T]`` bool.

    Raises:
        NoiseProbeError: if the shapes do not fit the decoder.
    """
    dec: Any = decoder  # a MusicgenForCausalLM
    config = dec.config
    if codes.dim() != 3 or codes.shape[1] != dec.num_codebooks or codes.shape[-1] < 1:
        raise NoiseProbeError(
            f"Expected argument `codes` of shape [B, {dec.num_codebooks}, T] with T >= 1 "
            f"but got {tuple(codes.shape)}."
        )
    if config.audio_channels != 1:
        raise NoiseProbeError(
            f"Expected a mono MusicGen decoder (audio_channels=1) but got "
            f"audio_channels={config.audio_channels}; stereo interleaves codebooks differently."
        )
    batch, k_books, frames = codes.shape
    card = int(config.vocab_size)
    bos = config.bos_token_id if config.bos_token_id is not None else card
    pad = config.pad_token_id if config.pad_token_id is not None else card
    codes = codes.long()
    ids = torch.cat([codes.new_full((batch, k_books, 1), bos), codes], dim=-1)
    # transformers only delays when max_length >= 2K - 1; positions >= T are not used anyway.
    max_length = max(frames + k_books, 2 * k_books - 1)
    _, pattern = dec.build_delay_pattern_mask(
        ids.reshape(batch * k_books, frames + 1), pad_token_id=pad, max_length=max_length
    )
    out = dec(
        input_ids=pattern[:, :frames],
        encoder_hidden_states=encoder_hidden_states,
        encoder_attention_mask=encoder_attention_mask,
        use_cache=False,
        return_dict=True,
    )
    logits = out.logits.reshape(batch, k_books, frames, -1)
    pos = (
        torch.arange(frames, device=codes.device)[None, :]
        + torch.arange(k_books, device=codes.device)[:, None]
    )  # [K, T]: the position holding the logits of (k, t)
    valid = pos < frames
    index = pos.clamp(max=frames - 1)[None, :, :, None].expand(batch, -1, -1, logits.shape[-1])
    aligned = logits.gather(2, index)
    mask = valid[None].expand(batch, -1, -1)
    aligned = aligned.masked_fill(~mask[..., None], float("nan"))
    return aligned, mask


@register_backend("transformers")
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
        self._model: MusicgenForConditionalGeneration | None = None
        #: The text tokenizer (``None`` if the folder had none: unconditional only).
        self.tokenizer: PreTrainedTokenizerBase | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model!r}, device={str(self.device)!r}, "
            f"dtype={self.dtype}, loaded={self._model is not None})"
        )

    # -- lifecycle ----------------------------------------------------------
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
            model, tokenizer = self._load_pretrained()
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

    def _load_pretrained(self) -> tuple[Any, Any]:
        from transformers import AutoTokenizer, MusicgenConfig, MusicgenForConditionalGeneration

        model = self.model
        if os.path.isdir(model):
            folder = model
            config_path = os.path.join(folder, _CONFIG_FILE)
            if not os.path.isfile(config_path):
                raise NoiseProbeError(
                    f"Expected the model folder {folder!r} to hold a transformers MusicGen "
                    f"written by `save_pretrained` but {_CONFIG_FILE!r} is missing. Write one "
                    "with `TransformersBackend.save` or `model.save_pretrained`."
                )
            model_type = self._read_model_type(config_path)
            if model_type != "musicgen":
                raise NoiseProbeError(
                    f"Expected the model folder {folder!r} to hold a MusicGen "
                    f"(model_type 'musicgen') but its {_CONFIG_FILE} says {model_type!r}."
                )
            source, local_only = folder, True
        elif os.path.exists(model) or _looks_like_path(model):
            raise NoiseProbeError(
                f"Expected argument `model` to be 'tiny', an existing folder written by "
                f"`save_pretrained`, or a hub id, but {model!r} is not a folder."
            )
        else:
            source, local_only = _HUB_SHORT_NAMES.get(model, model), _hf_offline()

        try:
            config = MusicgenConfig.from_pretrained(source, local_files_only=local_only)
            if self.dropout is not None:
                config.decoder.dropout = self.dropout
                config.decoder.attention_dropout = self.dropout
                config.decoder.activation_dropout = self.dropout
            loaded = MusicgenForConditionalGeneration.from_pretrained(
                source, config=config, local_files_only=local_only, dtype=torch.float32
            )
        except (OSError, ValueError) as err:  # missing/corrupt files; offline or not cached
            raise NoiseProbeError(self._load_message(source, local_only, err)) from err
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        except (OSError, ValueError, TypeError):
            tokenizer = None  # no tokenizer files: unconditional scoring only
        return loaded, tokenizer

    @staticmethod
    def _read_model_type(config_path: str) -> Any:
        try:
            with open(config_path, encoding="utf-8") as f:
                return json.load(f).get("model_type")
        except (OSError, ValueError) as err:
            raise NoiseProbeError(
                f"Expected {config_path!r} to be a readable JSON transformers config but "
                f"reading it failed ({type(err).__name__}: {err})."
            ) from err

    def _load_message(self, source: str, local_only: bool, err: Exception) -> str:
        if os.path.isdir(source):
            return (
                f"Expected the model folder {source!r} to hold a complete transformers MusicGen "
                f"but loading it failed ({type(err).__name__}: {err}). Write it with "
                "`TransformersBackend.save` or `model.save_pretrained`."
            )
        why = "HF_HUB_OFFLINE is set and it is not cached" if local_only else "it is not cached"
        return (
            f"Expected argument `model` to be 'tiny', a local folder or a reachable hub id but "
            f"hub id {source!r} could not be loaded: the hub cannot be reached (offline?) or "
            f"{why} ({type(err).__name__}: {err}). Pass instead a local folder written by "
            "`save_pretrained` (e.g. `TransformersBackend.save`), or 'tiny'."
        )

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
        model = self._require_loaded()
        folder = Path(folder)
        if folder.exists() and (
            not folder.is_dir() or (any(folder.iterdir()) and not (folder / _CONFIG_FILE).is_file())
        ):
            raise NoiseProbeError(
                f"Expected argument `folder` to be a new or empty folder, or an earlier save, "
                f"but {str(folder)!r} exists and holds something else. Choose another folder."
            )
        from lightning_noiseprobe._io import atomic_dir

        with atomic_dir(folder) as tmp:  # hfspeed hook: + processor, codec name (hf_folder.py)
            save_hf_folder(model, self.tokenizer, tmp, str(folder.resolve()))
        return folder

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
        with _outside_inference_mode():
            hidden, mask = self._encoder_states(codes.shape[0], descriptions)
            return delayed_lm_logits(model.decoder, codes, hidden, mask)
