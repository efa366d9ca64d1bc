"""The tiny transformers MusicGens, built offline from configs (the twins of the audiocraft tiny models).

Three, named as the ``model`` argument takes them (:data:`TINY_MODELS`), each with the
interface of a hub model in transformers' classes, about a million weights, seeded:

* ``"tiny"``: as ``facebook/musicgen-small`` (``MusicgenForConditionalGeneration``,
  32 kHz mono, 50 Hz, 4 codebooks x 2048, delays ``[0, 1, 2, 3]``, T5 text through
  cross-attention).
* ``"tiny-stereo"``: as ``facebook/musicgen-stereo-small``: the same mono EnCodec,
  a decoder with ``audio_channels=2`` and 8 codebooks (left and right codes of each
  EnCodec codebook interleaved, delays ``[0, 0, 1, 1, 2, 2, 3, 3]``).
* ``"tiny-melody"``: as ``facebook/musicgen-melody``
  (``MusicgenMelodyForConditionalGeneration``): a 12-bin chroma melody condition
  (``chroma_length`` 235) and the text *prepended* to the sequence, no cross-attention.

transformers is imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends._common import TINY_SIZES, init_codebooks_from_audio

if TYPE_CHECKING:
    from transformers import MusicgenForConditionalGeneration, PreTrainedTokenizerBase

__all__ = ["TINY_DEFAULTS", "TINY_MODELS", "build_tiny_transformers_musicgen"]

#: The tiny models' names (the ``model`` argument of the backend, the module and the CLI),
#: those of the audiocraft backend.
TINY_MODELS: tuple[str, ...] = ("tiny", "tiny-stereo", "tiny-melody")

#: Size knobs of the tiny model, accepted by :func:`build_tiny_transformers_musicgen`.
#: The LM and codec sizes are those of the audiocraft tiny model.
TINY_DEFAULTS: dict[str, Any] = {
    "dim": TINY_SIZES["dim"],  # decoder width
    "num_heads": TINY_SIZES["num_heads"],
    "num_layers": TINY_SIZES["num_layers"],
    "n_filters": TINY_SIZES["n_filters"],  # EnCodec base width
    "codec_dim": TINY_SIZES["codec_dim"],  # EnCodec latent dimension
    "text_dim": 32,  # T5 width (projected to `dim` by `enc_to_dec_proj`)
    "text_layers": 1,
    "text_heads": 4,
}


def build_tiny_transformers_musicgen(
    seed: int = 0, model: str = "tiny", **overrides: Any
) -> tuple[MusicgenForConditionalGeneration, PreTrainedTokenizerBase]:
    """Build a tiny, randomly initialised transformers MusicGen offline (CPU, float32, eval).

    ``model="tiny"``: a ``MusicgenForConditionalGeneration``. Decoder: 4 codebooks
    x 2048, ``dim`` 64, 2 layers, 4 heads, GELU, no
    bias, dropout 0 everywhere (transformers' default would be 0.1).
    Codec: ``EncodecModel`` at 32 kHz mono, ratios ``[8, 5, 4, 4]`` (hop
    640, 50 Hz), non-causal, constant padding (as audiocraft's MusicGen
    codec); its codebooks, zeros in a fresh transformers EnCodec, are drawn
    from its own residual latents of varied synthetic audio (as the audiocraft
    tiny codec), so the codes follow the audio. Text: a 1-layer T5 encoder
    (384 ids) over a tiny offline ``T5TokenizerFast`` (:mod:`.hf_folder`), projected to
    the decoder width.

    ``model="tiny-stereo"``: the same with ``audio_channels=2`` and 8 codebooks in the
    decoder (the codec stays mono, as in ``facebook/musicgen-stereo-small``: transformers
    encodes each channel with it and interleaves the codes). ``model="tiny-melody"``: a
    ``MusicgenMelodyForConditionalGeneration`` (``num_chroma`` 12, ``chroma_length``
    235, as ``facebook/musicgen-melody``), whose decoder has no cross-attention.

    The same ``seed``, ``model`` and ``overrides`` give bitwise identical weights; the
    global RNG state is left untouched.

    Args:
        seed: seed for the weight initialisation.
        model: one of :data:`TINY_MODELS`.
        **overrides: size knobs, any of :data:`TINY_DEFAULTS`.

    Returns:
        ``(model, tokenizer)``: a ``MusicgenForConditionalGeneration`` (or
        ``MusicgenMelodyForConditionalGeneration``) and a ``T5TokenizerFast``.

    Raises:
        NoiseProbeError: on an unknown model or override.

    Example:
        >>> stereo, _ = build_tiny_transformers_musicgen(seed=0, model="tiny-stereo")
        >>> stereo.config.decoder.audio_channels, stereo.decoder.num_codebooks
        (2, 8)
    """
    if model not in TINY_MODELS:
        raise NoiseProbeError(
            f"Expected a tiny model name among {list(TINY_MODELS)} but got {model!r}."
        )
    unknown = sorted(set(overrides) - set(TINY_DEFAULTS))
    if unknown:
        raise NoiseProbeError(
            f"Expected tiny-model overrides among {sorted(TINY_DEFAULTS)} but got {unknown}."
        )
    from transformers import (
        EncodecConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenMelodyDecoderConfig,
        MusicgenMelodyForConditionalGeneration,
        T5Config,
    )

    from lightning_noiseprobe.backends.transformers.compat import musicgen_config

    v = {**TINY_DEFAULTS, **overrides}
    card, n_q = 2048, 4
    from lightning_noiseprobe.backends.transformers.hf_folder import (
        TINY_TEXT_VOCAB_SIZE,
        tiny_t5_tokenizer,
    )

    tokenizer = tiny_t5_tokenizer()  # a T5 tokenizer, as MusicgenProcessor needs
    text_config = T5Config(
        vocab_size=TINY_TEXT_VOCAB_SIZE,  # the former ByT5 size: the seeded weights stay the same
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
    melody, channels = model == "tiny-melody", 2 if model == "tiny-stereo" else 1
    decoder_config = (MusicgenMelodyDecoderConfig if melody else MusicgenDecoderConfig)(
        vocab_size=card,
        hidden_size=v["dim"],
        ffn_dim=4 * v["dim"],
        num_hidden_layers=v["num_layers"],
        num_attention_heads=v["num_heads"],
        num_codebooks=n_q * channels,
        audio_channels=channels,
        activation_function="gelu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=card,
        bos_token_id=card,
        decoder_start_token_id=card,  # `forward(labels=...)` shifts the labels with it
        tie_word_embeddings=False,
    )
    # a melody model's chroma condition: 12 bins, 235 frames (30 s at 32 kHz / 4096), as the hub's
    extra = {"num_chroma": 12, "chroma_length": 235} if melody else {}
    config = musicgen_config(text_config, codec_config, decoder_config, **extra)
    cls: Any = (
        MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        built = cls(config)
    generation: Any = built.generation_config
    generation.decoder_start_token_id = card
    generation.pad_token_id = card
    codec: Any = built.audio_encoder
    layers = codec.quantizer.layers
    init_codebooks_from_audio(
        codec.encoder,
        layers,
        [layer.codebook for layer in layers],
        int(codec.config.sampling_rate),
        seed,
    )
    return built.eval(), tokenizer
