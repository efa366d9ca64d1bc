"""Convert MusicGen weights from audiocraft to Hugging Face transformers.

The LM key mapping is the one of transformers' own
``models/musicgen/convert_musicgen_transformers.py`` (``emb`` ->
``model.decoder.embed_tokens``, ``transformer`` -> ``model.decoder``, fused
``in_proj_weight`` split into ``q_proj``/``k_proj``/``v_proj``, ``linears`` ->
``lm_heads``, ...), except that the text conditioner's weights other than its
``output_proj`` (which becomes the composite model's ``enc_to_dec_proj``) are
left out instead of renamed. As in that script, a stereo LM (8 interleaved
codebooks, delays ``[0, 0, 1, 1, ...]``) becomes a decoder with ``audio_channels=2``
and ``num_codebooks=8`` whose codec is the mono EnCodec; as in transformers'
``models/musicgen_melody/convert_musicgen_melody_transformers.py``, a melody LM
(chroma and text prepended) becomes a ``MusicgenMelodyForCausalLM`` and its chroma
conditioner's ``output_proj`` the composite model's ``audio_enc_to_dec_proj``
(:func:`audiocraft_projections_to_transformers`). The codec mapping follows
audiocraft's SEANet layout, which transformers' ``EncodecModel`` mirrors layer for layer.

audiocraft and transformers are imported inside the functions only.
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError

if TYPE_CHECKING:
    from transformers import EncodecModel, MusicgenForCausalLM

__all__ = [
    "audiocraft_codec_to_transformers",
    "audiocraft_lm_state_dict_to_transformers",
    "audiocraft_lm_to_transformers",
    "audiocraft_projections_to_transformers",
]

_CONDITIONER_PROJ = "condition_provider.conditioners.description.output_proj."
_MELODY_PROJ = "condition_provider.conditioners.self_wav.output_proj."

# (pattern, replacement) applied in order, as in transformers' `rename_keys`.
_LM_RENAMES = (
    (r"^emb\.", "model.decoder.embed_tokens."),
    (r"^transformer\.", "model.decoder."),
    (r"\.cross_attention\.", ".encoder_attn."),
    (r"\.linear1\.", ".fc1."),
    (r"\.linear2\.", ".fc2."),
    (r"\.norm1\.", ".self_attn_layer_norm."),
    (r"\.norm_cross\.", ".encoder_attn_layer_norm."),
    (r"\.norm2\.", ".final_layer_norm."),
    (r"^out_norm\.", "model.decoder.layer_norm."),
    (r"^linears\.", "lm_heads."),
)


def audiocraft_lm_state_dict_to_transformers(
    state_dict: dict[str, torch.Tensor], hidden_size: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Rename an audiocraft ``LMModel`` state dict to transformers' MusicGen names.

    Args:
        state_dict: ``lm.state_dict()`` of an audiocraft ``LMModel``.
        hidden_size: the transformer width (splits the fused qkv projections).

    Returns:
        ``(decoder_state, enc_to_dec_proj_state)``: the first loads into a
        ``MusicgenForCausalLM``, the second (the text conditioner's
        ``output_proj``, empty if absent) into
        ``MusicgenForConditionalGeneration.enc_to_dec_proj``. Other
        conditioner weights (T5 is not part of the LM's state; a LUT
        conditioner has no transformers counterpart) are dropped.

    Example:
        >>> sd = {"emb.0.weight": torch.zeros(3, 2), "linears.0.weight": torch.zeros(2, 2),
        ...       "transformer.layers.0.self_attn.in_proj_weight": torch.arange(6.0)[:, None]}
        >>> dec, proj = audiocraft_lm_state_dict_to_transformers(sd, hidden_size=2)
        >>> sorted(dec)
        ['lm_heads.0.weight', 'model.decoder.embed_tokens.0.weight', 'model.decoder.layers.0.self_attn.k_proj.weight', 'model.decoder.layers.0.self_attn.q_proj.weight', 'model.decoder.layers.0.self_attn.v_proj.weight']
        >>> dec["model.decoder.layers.0.self_attn.v_proj.weight"].flatten().tolist()
        [4.0, 5.0]
    """
    decoder: dict[str, torch.Tensor] = {}
    proj: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(_CONDITIONER_PROJ):
            proj[key[len(_CONDITIONER_PROJ) :]] = value
            continue
        if key.startswith("condition_provider."):
            continue
        for pattern, repl in _LM_RENAMES:
            key = re.sub(pattern, repl, key)
        if key.endswith("in_proj_weight"):
            stem = key[: -len("in_proj_weight")]
            decoder[stem + "q_proj.weight"] = value[:hidden_size]
            decoder[stem + "k_proj.weight"] = value[hidden_size : 2 * hidden_size]
            decoder[stem + "v_proj.weight"] = value[2 * hidden_size :]
        else:
            decoder[key] = value
    return decoder, proj


def audiocraft_projections_to_transformers(
    state_dict: dict[str, torch.Tensor],
) -> dict[str, dict[str, torch.Tensor]]:
    """The conditioners' output projections of an audiocraft LM state dict, by their
    transformers names.

    ``enc_to_dec_proj`` (the description conditioner's ``output_proj``) and, for a
    melody LM, ``audio_enc_to_dec_proj`` (the ``self_wav`` chroma conditioner's); each
    only if present. Load them into the composite model's modules of those names.

    Example:
        >>> sd = {"condition_provider.conditioners.self_wav.output_proj.weight": torch.ones(2, 12)}
        >>> {k: sorted(v) for k, v in audiocraft_projections_to_transformers(sd).items()}
        {'audio_enc_to_dec_proj': ['weight']}
    """
    out: dict[str, dict[str, torch.Tensor]] = {}
    for prefix, name in (
        (_CONDITIONER_PROJ, "enc_to_dec_proj"),
        (_MELODY_PROJ, "audio_enc_to_dec_proj"),
    ):
        found = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if found:
            out[name] = found
    return out


def _layout(lm: Any) -> tuple[int, bool]:
    """``(audio_channels, melody)`` of an audiocraft MusicGen LM, from its delays and fuser.

    Refuses a pattern or condition fusing transformers' MusicGen classes lack.
    """
    books = int(lm.num_codebooks)
    delays = list(getattr(getattr(lm, "pattern_provider", None), "delays", range(books)))
    layouts = {1: list(range(books))}
    if books % 2 == 0:
        layouts[2] = [k // 2 for k in range(books)]  # interleaved stereo: pairs share a delay
    channels = next((c for c, d in layouts.items() if d == delays), None)
    fuse: dict[str, list[str]] = {
        op: list(names) for op, names in getattr(lm.fuser, "fuse2cond", {}).items() if names
    }
    melody = "self_wav" in fuse.get("prepend", [])
    # transformers: text through cross-attention, or [chroma, text] prepended (melody)
    wanted = {"prepend": ["self_wav", "description"]} if melody else {"cross": ["description"]}
    problems = []
    if channels is None:
        problems.append(f"delays={delays} (need [0, 1, ..., K-1], or [0, 0, 1, 1, ...] for stereo)")
    if fuse and fuse != wanted:
        problems.append(f"condition fusing {fuse} (need {wanted})")
    if getattr(lm.fuser, "cross_attention_pos_emb", False):
        problems.append("cross_attention_pos_emb=True (need False)")
    if problems:
        raise NoiseProbeError(
            "Expected argument `lm` to be an audiocraft MusicGen LM that transformers' "
            f"MusicGen decoders can represent but it has: {'; '.join(problems)}."
        )
    return channels or 1, melody


def _check_convertible_lm(lm: Any) -> None:
    """Refuse audiocraft LM options that transformers' MusicGen decoder does not have."""
    transformer = lm.transformer
    layer = transformer.layers[0]
    problems = []
    if getattr(transformer, "positional_embedding", "sin") != "sin":
        problems.append(f"positional_embedding={transformer.positional_embedding!r} (need 'sin')")
    if getattr(transformer, "max_period", 10000) != 10000:
        problems.append(f"max_period={transformer.max_period} (need 10000)")
    if getattr(transformer, "positional_scale", 1.0) != 1.0:
        problems.append(f"positional_scale={transformer.positional_scale} (need 1.0)")
    if not getattr(layer, "norm_first", True):
        problems.append("norm_first=False (need True)")
    if getattr(layer, "layer_scale_1", torch.nn.Identity()).__class__ is not torch.nn.Identity:
        problems.append("layer_scale (need None)")
    if getattr(lm, "out_norm", None) is None:
        problems.append("no out_norm")
    biases = [k for k in lm.state_dict() if k.startswith("transformer.") and k.endswith(".bias")]
    biases = [k for k in biases if not re.search(r"\.norm\w*\.bias$", k)]
    if biases:
        problems.append(f"bias terms {biases[:3]} (need bias_ff=bias_attn=False)")
    if problems:
        raise NoiseProbeError(
            "Expected argument `lm` to be an audiocraft MusicGen LM that transformers' "
            f"MusicgenForCausalLM can represent but it has: {'; '.join(problems)}."
        )


def audiocraft_lm_to_transformers(lm: Any) -> MusicgenForCausalLM:
    """Copy an audiocraft MusicGen ``LMModel`` into a transformers ``MusicgenForCausalLM``.

    Sizes are read from the weights; dropout is 0 (audiocraft trains MusicGen
    without dropout; transformers' default would be 0.1). The result is on
    CPU, in float32 and eval mode, and gives the same per-token NLL as the
    audiocraft LM (see :func:`~lightning_noiseprobe.backends.transformers.delayed_lm_logits`).
    Text conditioning: pass ``encoder_hidden_states`` (audiocraft's condition
    tensors, already projected); the conditioners' ``output_proj`` are returned
    by :func:`audiocraft_projections_to_transformers` for a composite model.

    A stereo LM (delays ``[0, 0, 1, 1, ...]``, left and right codes interleaved)
    gives a decoder with ``audio_channels=2``, as ``facebook/musicgen-stereo-*`` in
    transformers. A melody LM (``self_wav`` and ``description`` prepended) gives a
    ``MusicgenMelodyForCausalLM``; pass it the prepended condition tensors
    (``[chroma, text]``) as ``encoder_hidden_states``.

    Args:
        lm: an audiocraft ``LMModel`` (e.g. ``AudiocraftBackend("tiny").load().lm``).

    Returns:
        A ``transformers`` ``MusicgenForCausalLM`` (``MusicgenMelodyForCausalLM`` for melody).

    Raises:
        NoiseProbeError: if the LM uses options transformers' decoder lacks
            (other positional embeddings or delays, biases, layer scale, ...) or the
            weights do not load exactly.
    """
    from transformers import (
        MusicgenDecoderConfig,
        MusicgenForCausalLM,
        MusicgenMelodyDecoderConfig,
        MusicgenMelodyForCausalLM,
    )

    _check_convertible_lm(lm)
    channels, melody = _layout(lm)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in lm.state_dict().items()}
    hidden = int(state["emb.0.weight"].shape[1])
    layers = lm.transformer.layers
    config = (MusicgenMelodyDecoderConfig if melody else MusicgenDecoderConfig)(
        vocab_size=int(lm.card),
        hidden_size=hidden,
        ffn_dim=int(state["transformer.layers.0.linear1.weight"].shape[0]),
        num_hidden_layers=len(layers),
        num_attention_heads=int(layers[0].self_attn.num_heads),
        num_codebooks=int(lm.num_codebooks),
        audio_channels=channels,
        activation_function="gelu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=int(lm.card),
        bos_token_id=int(lm.card),
        tie_word_embeddings=False,
    )
    decoder_state, _ = audiocraft_lm_state_dict_to_transformers(state, hidden)
    cls: Any = MusicgenMelodyForCausalLM if melody else MusicgenForCausalLM
    with torch.random.fork_rng(devices=[]):
        model = cls(config)
    missing, unexpected = model.load_state_dict(decoder_state, strict=False)
    missing = [k for k in missing if k != "model.decoder.embed_positions.weights"]
    if not any(".encoder_attn." in k for k in decoder_state):  # an LM without cross-attention
        missing = [k for k in missing if ".encoder_attn" not in k]
    if missing or unexpected:
        raise NoiseProbeError(
            f"Expected the audiocraft LM weights to map onto MusicgenForCausalLM exactly but "
            f"got missing keys {missing[:5]} and unexpected keys {unexpected[:5]}."
        )
    generation: Any = model.generation_config
    generation.decoder_start_token_id = int(lm.card)
    generation.pad_token_id = int(lm.card)
    return model.eval()


_CODEC_RENAMES = (
    (r"^(encoder|decoder)\.model\.", r"\1.layers."),
    (r"\.conv\.conv\.", ".conv."),
    (r"\.convtr\.convtr\.", ".conv."),
    (r"\.weight_g$", ".parametrizations.weight.original0"),
    (r"\.weight_v$", ".parametrizations.weight.original1"),
    (r"^quantizer\.vq\.layers\.(\d+)\._codebook\.", r"quantizer.layers.\1.codebook."),
)


def audiocraft_codec_to_transformers(codec: Any) -> EncodecModel:
    """Copy an audiocraft EnCodec compression model into a transformers ``EncodecModel``.

    Two kinds of input are accepted, each also inside audiocraft's
    ``InterleaveStereoCompressionModel`` (a stereo MusicGen's codec: the mono EnCodec
    it wraps is converted, as transformers' stereo MusicGens hold the mono
    ``facebook/encodec_32khz`` and encode each channel with it):

    * audiocraft's ``HFEncodecCompressionModel`` (what the official MusicGen
      checkpoints load, itself a wrapper of ``facebook/encodec_32khz``): its
      transformers model is deep-copied;
    * audiocraft's own ``EncodecModel`` carrying its config as ``.cfg``
      (:func:`~lightning_noiseprobe.backends.audiocraft.build_tiny_musicgen`,
      or models from audiocraft's loaders): non-causal SEANet with
      ``weight_norm``, no renormalisation, the weights renamed layer by layer.

    Returns:
        A ``transformers`` ``EncodecModel`` on CPU in float32, eval mode,
        giving the same codes as ``codec.encode`` (same padding mode).

    Raises:
        NoiseProbeError: for other codecs, or options transformers lacks.
    """
    from transformers import EncodecConfig, EncodecModel

    if type(codec).__name__ == "InterleaveStereoCompressionModel":
        if getattr(codec, "per_timestep", False):
            raise NoiseProbeError(
                "Expected argument `codec` to interleave stereo codes per codebook "
                "(per_timestep=False, as every released stereo MusicGen) but it interleaves "
                "them per time step, which transformers' MusicGen does not do."
            )
        codec = codec.model
    inner = getattr(codec, "model", None)
    if isinstance(inner, EncodecModel):  # audiocraft's HFEncodecCompressionModel
        clone: Any = copy.deepcopy(inner)
        return clone.to("cpu", torch.float32).eval()
    cfg = getattr(codec, "cfg", None)
    if cfg is None or getattr(cfg, "compression_model", None) != "encodec":
        raise NoiseProbeError(
            f"Expected argument `codec` to be an audiocraft EnCodec carrying its config as `.cfg` "
            f"(or audiocraft's HFEncodecCompressionModel) but got {type(codec).__name__} "
            f"with cfg={'set' if cfg is not None else None}."
        )
    seanet, encodec = cfg.seanet, cfg.encodec
    problems = []
    if seanet.causal or encodec.causal:
        problems.append("causal=True")
    if seanet.norm != "weight_norm":
        problems.append(f"norm={seanet.norm!r}")
    if encodec.renormalize:
        problems.append("renormalize=True")
    if seanet.activation != "ELU" or dict(seanet.activation_params or {}) != {"alpha": 1.0}:
        problems.append(f"activation={seanet.activation!r} {dict(seanet.activation_params or {})}")
    if seanet.disable_norm_outer_blocks:
        problems.append("disable_norm_outer_blocks")
    if seanet.decoder.get("final_activation") is not None:
        problems.append("final_activation")
    if problems:
        raise NoiseProbeError(
            "Expected argument `codec` to be an EnCodec that transformers' EncodecModel can "
            f"represent but it has {', '.join(problems)}."
        )
    n_q = int(cfg.rvq.n_q)
    frame_rate = float(codec.frame_rate)
    bits = float(torch.tensor(float(cfg.rvq.bins)).log2())
    config = EncodecConfig(
        sampling_rate=int(codec.sample_rate),
        audio_channels=int(codec.channels),
        num_filters=int(seanet.n_filters),
        hidden_size=int(seanet.dimension),
        codebook_dim=int(seanet.dimension),
        codebook_size=int(cfg.rvq.bins),
        upsampling_ratios=list(seanet.ratios),
        num_residual_layers=int(seanet.n_residual_layers),
        kernel_size=int(seanet.kernel_size),
        last_kernel_size=int(seanet.last_kernel_size),
        residual_kernel_size=int(seanet.residual_kernel_size),
        dilation_growth_rate=int(seanet.dilation_base),
        compress=int(seanet.compress),
        num_lstm_layers=int(seanet.lstm),
        use_causal_conv=False,
        pad_mode=str(seanet.pad_mode),
        use_conv_shortcut=not bool(seanet.true_skip),
        trim_right_ratio=float(seanet.decoder.trim_right_ratio),
        normalize=False,
        # one bandwidth: exactly n_q codebooks (transformers: floor(bw * 1000 / (frame_rate * log2(bins))))
        target_bandwidths=[n_q * frame_rate * bits / 1000.0],
    )
    state = {}
    for key, value in codec.state_dict().items():
        for pattern, repl in _CODEC_RENAMES:
            key = re.sub(pattern, repl, key)
        state[key] = value.detach().to("cpu", torch.float32)
    with torch.random.fork_rng(devices=[]):
        model = EncodecModel(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise NoiseProbeError(
            f"Expected the audiocraft EnCodec weights to map onto transformers' EncodecModel "
            f"exactly but got missing keys {missing[:5]} and unexpected keys {unexpected[:5]}."
        )
    return model.eval()
