"""The audiocraft backend: MusicGen as trained and released by Meta.

Three sources, picked by ``model``:

* ``"tiny"``, ``"tiny-stereo"``, ``"tiny-melody"``: tiny MusicGens with the
  real interfaces of ``musicgen-small`` (32 kHz mono, 50 Hz, 4 codebooks x
  2048, delay pattern ``[0, 1, 2, 3]``), ``musicgen-stereo-small`` (8
  interleaved codebooks) and ``musicgen-melody`` (chroma and text prepended),
  built offline from audiocraft's own builders, seeded (:mod:`.builders`).
  For tests and demos; no download.
* a local folder holding ``state_dict.bin`` and ``compression_state_dict.bin``
  in audiocraft's export format (:mod:`.export`).
* a Hugging Face hub id such as ``facebook/musicgen-small``.

An already-loaded ``MusicGen`` is wrapped with :meth:`AudiocraftBackend.from_model`.
audiocraft is imported only inside functions, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends._common import outside_inference_mode
from lightning_noiseprobe.backends.audiocraft.builders import (
    TINY_DEFAULTS,
    TINY_MODELS,
    build_tiny_parts,
)
from lightning_noiseprobe.backends.audiocraft.export import (
    EXPORT_FILES,
    load_pretrained,
    save_audiocraft_export,
)
from lightning_noiseprobe.backends.audiocraft.scoring import FusedScoring

if TYPE_CHECKING:
    from audiocraft.models.musicgen import MusicGen

__all__ = ["AudiocraftBackend"]


class AudiocraftBackend(FusedScoring):
    """MusicGen through audiocraft: frozen EnCodec plus the LM that fine-tunes.

    The constructor only records its arguments; :meth:`load` imports
    audiocraft and builds or loads the weights.

    Loading from a folder or the hub goes through audiocraft's loaders with
    torch's default ``weights_only=True`` (torch >= 2.6): this backend never
    passes ``weights_only=False`` for files it did not write, because that
    would let a checkpoint run arbitrary code. Exports whose ``xp.cfg`` is a
    YAML string (``audiocraft.utils.export``, :func:`save_audiocraft_export`,
    the official hub checkpoints) load safely; files with a pickled OmegaConf
    config are refused with a message asking to re-export them.

    The LM is kept in ``dtype`` (float32 by default, also on CUDA, where
    audiocraft's own loader would cast it to float16 and make fine-tuning
    lossy). The codec is frozen: eval mode and ``requires_grad=False``.
    After :meth:`load` the LM is in eval mode; afterwards its train/eval mode
    belongs to the caller.

    Args:
        model: ``"tiny"`` (or ``"tiny-stereo"``, ``"tiny-melody"``, see
            :data:`TINY_MODELS`), a local export folder, or a hub id
            (``"facebook/musicgen-small"``; ``"small"``, ``"medium"``,
            ``"large"``, ``"melody"`` are short for the ``facebook/`` ones).
        device: device for the LM and the codec.
        dtype: floating dtype of the LM (the codec stays float32).
        seed: weight seed of the tiny model (ignored otherwise).
        tiny_config: size overrides of the tiny model, keys from
            :data:`TINY_DEFAULTS` (ignored otherwise).

    Example:
        >>> backend = AudiocraftBackend(model="tiny")  # cheap: nothing is built yet
        >>> backend.describe()["model"]
        'tiny'
    """

    name = "audiocraft"

    def __init__(
        self,
        model: str = "tiny",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        tiny_config: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, (str, os.PathLike)) or not str(model):
            raise NoiseProbeError(
                f"Expected argument `model` to be 'tiny', a folder or a hub id but got {model!r}."
            )
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise NoiseProbeError(
                f"Expected argument `dtype` to be a floating torch.dtype but got {dtype!r}."
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
        self._musicgen: MusicGen | None = None
        #: The codec file a pretrained model was loaded from (``None`` for tiny).
        #: The codec is frozen, so exporting a fine-tune copies this file as is.
        self.codec_source: Path | None = None
        self._wrapped = False  # set by `from_model`

    @classmethod
    def from_model(
        cls, musicgen: MusicGen, codec_file: str | os.PathLike[str] | None = None
    ) -> AudiocraftBackend:
        """Wrap an already-loaded audiocraft ``MusicGen`` without copying it.

        The backend uses ``musicgen`` itself: its ``lm`` and
        ``compression_model`` are the backend's :attr:`lm` and :attr:`codec`.
        Nothing is copied, moved, cast or frozen, no train/eval flag is
        changed and its configs are left as they are: the caller keeps owning
        the model (:meth:`load` does nothing). :attr:`device` and ``dtype``
        are read from the LM's weights. The codec still encodes under
        ``torch.no_grad()`` in float32, as for a loaded model.

        Args:
            musicgen: an ``audiocraft.models.musicgen.MusicGen`` (or anything
                with its ``lm`` and ``compression_model``), e.g. from
                ``MusicGen.get_pretrained`` or :func:`build_tiny_musicgen`.
            codec_file: the ``compression_state_dict.bin`` its codec was loaded
                from, for :meth:`export` (``None``: found from ``musicgen.name``
                when the codec has no config, see :func:`save_audiocraft_export`).

        Returns:
            A loaded backend around ``musicgen``.

        Raises:
            NoiseProbeError: if ``musicgen`` has no LM and codec modules, or its
                LM uses joint-embedding conditions (not supported).

        Example:
            >>> from lightning_noiseprobe.backends.audiocraft import build_tiny_musicgen
            >>> musicgen = build_tiny_musicgen(seed=0)
            >>> AudiocraftBackend.from_model(musicgen).lm is musicgen.lm
            True
        """
        lm = getattr(musicgen, "lm", None)
        codec = getattr(musicgen, "compression_model", None)
        if not isinstance(lm, torch.nn.Module) or not isinstance(codec, torch.nn.Module):
            raise NoiseProbeError(
                "Expected argument `musicgen` to be an audiocraft MusicGen (with `lm` and "
                f"`compression_model` modules) but got {type(musicgen).__name__}."
            )
        _check_conditions(lm, getattr(musicgen, "name", "the model"))
        param = next(lm.parameters(), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        backend = cls(model=str(getattr(musicgen, "name", "") or "from_model"), device=device)
        backend.dtype = dtype
        backend._musicgen = musicgen
        backend._wrapped = True
        if codec_file is not None:
            if not os.path.isfile(codec_file):
                raise NoiseProbeError(
                    f"Expected argument `codec_file` to be an existing {EXPORT_FILES[1]!r} but "
                    f"got {str(codec_file)!r}."
                )
            backend.codec_source = Path(codec_file)
        return backend

    @property
    def is_loaded(self) -> bool:
        """Whether the model is built or loaded (:meth:`load`, :meth:`from_model`)."""
        return self._musicgen is not None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model!r}, device={str(self.device)!r}, "
            f"dtype={self.dtype}, loaded={self._musicgen is not None})"
        )

    # -- lifecycle ----------------------------------------------------------
    def load(self) -> AudiocraftBackend:
        """Build (``"tiny"``) or load the weights. Idempotent. Returns ``self``.

        Raises:
            NoiseProbeError: if a folder lacks the export files, a file is
                damaged (empty, truncated, not a torch file, no or invalid
                ``xp.cfg``, weights that do not fit its config) or holds pickled
                objects, or a hub id cannot be reached. The message names the file.
        """
        if self._musicgen is not None:
            return self
        if self.model in TINY_MODELS:
            name = self.model
            lm, codec = build_tiny_parts(self.seed, self.tiny_config, self.model)
        else:
            name, lm, codec, self.codec_source = load_pretrained(self.model, self.dtype)
        from audiocraft.models.musicgen import MusicGen

        lm = lm.to(device=self._device, dtype=self.dtype).eval()
        codec = codec.to(self._device).eval()
        codec.requires_grad_(False)
        _check_conditions(lm, self.model)
        # Wrapped after the move, so that its `device` and autocast follow the LM.
        self._musicgen = MusicGen(name, codec, lm)
        return self

    def _require_loaded(self) -> MusicGen:
        if self._musicgen is None:
            raise RuntimeError(f"{self!r} is not loaded: call `.load()` first.")
        return self._musicgen

    @property
    def device(self) -> torch.device:
        """Where the LM's weights are: follows the model when Lightning (or you) move it."""
        if self._musicgen is None:
            return self._device
        param = next(self._musicgen.lm.parameters(), None)
        return param.device if param is not None else self._device

    # -- modules --------------------------------------------------------------
    @property
    def musicgen(self) -> MusicGen:
        """The audiocraft ``MusicGen`` object (generation API, ``.lm``, ``.compression_model``)."""
        return self._require_loaded()

    @property
    def lm(
        self,
    ) -> Any:  # audiocraft's LMModel, an nn.Module (typed loosely: audiocraft has no stubs)
        """The audiocraft ``LMModel`` (with its conditioners): the part that fine-tunes."""
        return self._require_loaded().lm

    @property
    def codec(self) -> torch.nn.Module:
        """The frozen audiocraft ``CompressionModel`` (EnCodec)."""
        return self._require_loaded().compression_model

    # -- static description -------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self._require_loaded().compression_model.sample_rate)

    @property
    def channels(self) -> int:
        return int(self._require_loaded().compression_model.channels)

    @property
    def frame_rate(self) -> float:
        return float(self._require_loaded().compression_model.frame_rate)

    @property
    def num_codebooks(self) -> int:
        return int(self._require_loaded().lm.num_codebooks)

    @property
    def cardinality(self) -> int:
        return int(self._require_loaded().lm.card)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description; works before :meth:`load` (model, device, dtype only)."""
        out: dict[str, Any] = {
            "backend": self.name,
            "model": self.model,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        if self._wrapped:
            out["source"] = "from_model"
        elif self.model in TINY_MODELS:
            out["seed"] = self.seed
            out["tiny_config"] = {**TINY_DEFAULTS, **self.tiny_config}
        if self._musicgen is not None:
            out.update(super().describe())
        return out

    # -- compute --------------------------------------------------------------
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Tokenize audio with the frozen codec, exactly as audiocraft does.

        The same call as the MusicGen solver's and ``MusicGen``'s
        ``_prepare_tokens_and_attributes``: ``compression_model.encode(wav)``
        under ``torch.no_grad()``, outside autocast, refusing a codec that
        returns a scale. ``no_grad`` matters for more than memory: with grad
        mode on, PyTorch runs the codec's LSTM with oneDNN's forward-training
        kernel, whose float32 rounding differs from the inference kernel's, and
        near-tied codes flip (4 of 320 codes on an AMD EPYC).

        Codes are bitwise reproducible for the same input, batch shape, machine
        and thread count. Another thread count (1x1 convolutions switch between
        oneDNN and im2col+GEMM), batch shape (the LSTM kernel) or CPU changes the
        latents by about one ulp and may flip near-tied codes.

        Args:
            wav: ``[B, C, S]`` float waveform at :attr:`sample_rate` with :attr:`channels` channels.

        Returns:
            ``[B, K, T]`` long codes on the backend's device, ``T = ceil(S / hop)``
            (640 samples per frame for MusicGen).
        """
        musicgen = self._require_loaded()
        if wav.dim() != 3 or wav.shape[1] != self.channels:
            raise NoiseProbeError(
                f"Expected argument `wav` of shape [B, {self.channels}, S] but got {tuple(wav.shape)}."
            )
        with torch.no_grad():
            codec = musicgen.compression_model
            codec_device = next(codec.parameters()).device
            # fp32 whatever the caller's autocast: codes must not depend on the trainer's precision
            with torch.autocast(codec_device.type, enabled=False):
                codes, scale = codec.encode(wav.to(codec_device, torch.float32))
        if scale is not None:  # audiocraft asserts the same: its LMs model unscaled codes
            raise NoiseProbeError(
                f"Expected a codec without renormalisation (MusicGen's) but {self.model!r} "
                "returns a scale per clip; such codecs are not supported with an LM."
            )
        return codes.long()

    def _condition_tensors(self, batch: int, descriptions: Sequence[str | None] | None) -> Any:
        provider = self.lm.condition_provider
        return provider(provider.tokenize(self._attributes(batch, descriptions)))

    def _attributes(self, batch: int, descriptions: Sequence[str | None] | None) -> list[Any]:
        """One ``ConditioningAttributes`` per item: its description, no melody."""
        from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition

        if descriptions is None:
            descriptions = [None] * batch
        elif isinstance(descriptions, str) or len(descriptions) != batch:
            raise NoiseProbeError(
                f"Expected argument `descriptions` to be a sequence of {batch} texts or None "
                f"(one per item) but got {descriptions!r}."
            )
        provider = self.lm.condition_provider
        attributes = []
        for text in descriptions:
            # Unconditional = every attribute None, as audiocraft's CFG dropout does.
            attr = ConditioningAttributes(
                text={
                    name: (text if name == "description" else None)
                    for name in provider.text_conditions
                }
            )
            for name in provider.wav_conditions:  # no melody: a null waveform, as MusicGen does
                attr.wav[name] = WavCondition(
                    torch.zeros((1, 1, 1), device=self.device),
                    torch.tensor([0], device=self.device),
                    sample_rate=[self.sample_rate],
                    path=[None],
                )
            attributes.append(attr)
        return attributes

    def lm_logits(
        self,
        codes: torch.Tensor,
        descriptions: Sequence[str | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LM logits aligned with ``codes``, with gradients (training path).

        Runs ``lm.compute_predictions`` on the conditions of ``descriptions``
        with the LM's classifier-free-guidance and attribute dropout held in
        eval mode (the caller decides on dropout, as the MusicGen solver does),
        so no random number is drawn. The conditions are computed inside the
        LM's ``forward``, so a sharded LM (FSDP2 ``fully_shard``) gathers the
        condition provider's weights with the rest. The LM's train/eval mode is
        otherwise left as the caller set it.

        Args:
            codes: ``[B, K, T]`` long codes.
            descriptions: one text per item (``None`` = unconditional), or
                ``None`` for all-unconditional.

        Returns:
            ``(logits, mask)``: logits ``[B, K, T, card]`` in the LM's dtype,
            NaN where ``mask`` (``[B, K, T]`` bool) is ``False``.
        """
        self._require_loaded()
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            raise NoiseProbeError(
                f"Expected argument `codes` of shape [B, {self.num_codebooks}, T] "
                f"but got {tuple(codes.shape)}."
            )
        codes = codes.to(self.device, torch.long)
        lm = self.lm
        dropouts = [m for m in (lm.cfg_dropout, lm.att_dropout) if m.training]
        try:
            for m in dropouts:
                m.eval()
            with outside_inference_mode():
                attributes = self._attributes(codes.shape[0], descriptions)
                out = lm.compute_predictions(codes, attributes)
        finally:
            for m in dropouts:
                m.train()
        return out.logits, out.mask.to(torch.bool)

    # -- training contract (MusicGenLightningModule) -----------------------------
    @property
    def supports_training(self) -> bool:
        """``True``: the whole ``LMModel`` (with its condition provider) trains."""
        return True

    def enable_gradient_checkpointing(self) -> None:
        """audiocraft's ``checkpointing="torch"``: each transformer layer is recomputed in backward."""
        transformer = getattr(self.lm, "transformer", None)
        if transformer is None or not hasattr(transformer, "checkpointing"):
            raise NoiseProbeError(
                "Expected the LM to have audiocraft's `transformer.checkpointing` option "
                f"for `gradient_checkpointing=True` but {type(self.lm).__name__} has none."
            )
        transformer.checkpointing = "torch"  # read at every forward (`_apply_layer`)

    def fsdp_units(self) -> list[torch.nn.Module]:
        """Each transformer layer, then the LM (embeddings, output heads, condition provider)."""
        lm = self.lm
        return [*lm.transformer.layers, lm]

    def to(self, device: str | torch.device) -> AudiocraftBackend:
        """Put the LM and codec on ``device``, and what audiocraft caches beside them.

        Besides the weights (moved only when elsewhere): ``MusicGen.device``
        and its autocast (float16 on accelerators, as audiocraft sets it), the
        condition provider's and each conditioner's ``device``, and models and
        tensors that conditioners keep outside the module tree (a frozen T5
        encoder, demucs), which ``lm.to`` does not move.
        """
        from audiocraft.utils.autocast import TorchAutocast

        device = torch.device(device)
        musicgen: Any = self._require_loaded()
        for part in (musicgen.lm, musicgen.compression_model):
            param = next(part.parameters(), None)
            if param is not None and param.device != device:
                part.to(device)
        self._device = device
        musicgen.device = device
        if device.type == "cpu" or not torch.amp.is_autocast_available(device.type):
            musicgen.autocast = TorchAutocast(enabled=False)
        else:
            musicgen.autocast = TorchAutocast(
                enabled=True, device_type=device.type, dtype=torch.float16
            )
        provider = musicgen.lm.condition_provider
        provider.device = device
        for conditioner in provider.conditioners.values():
            if hasattr(conditioner, "device"):
                conditioner.device = device
            for name, value in list(vars(conditioner).items()):
                if name.startswith("_"):
                    continue
                if isinstance(value, torch.nn.Module):  # outside `_modules`: not moved by `.to`
                    value.to(device)
                elif isinstance(value, torch.Tensor):
                    setattr(conditioner, name, value.to(device))
        return self

    def export(self, folder: str | os.PathLike[str]) -> Path:
        """Write audiocraft's export format (``state_dict.bin``, ``compression_state_dict.bin``).

        ``AudiocraftBackend(model=folder)`` and
        ``audiocraft.models.MusicGen.get_pretrained(folder)`` load it. Both
        files are written into a temporary folder and moved into place
        together (:func:`lightning_noiseprobe._io.atomic_dir`); in an existing
        folder they replace an earlier export and other files are kept. A model
        loaded from a folder or the hub copies its codec file as is (see
        :attr:`codec_source`), as does one wrapped with :meth:`from_model`
        after audiocraft loaded it (the file ``musicgen.name`` points to);
        a stereo codec is written as the hub's stereo models hold it, the
        mono EnCodec (:func:`save_audiocraft_export`). Files and folder get the usual permissions
        (``0o666``/``0o777`` less the umask).

        Returns:
            The folder, as a :class:`~pathlib.Path`.
        """
        from lightning_noiseprobe._io import atomic_dir

        musicgen = self._require_loaded()
        folder = Path(folder)
        with atomic_dir(folder, owned=EXPORT_FILES) as tmp:
            save_audiocraft_export(musicgen, tmp, codec_file=self.codec_source)
        return folder


def _check_conditions(lm: Any, model: str) -> None:
    if lm.condition_provider.has_joint_embed_conditions:
        raise NoiseProbeError(
            f"Expected a MusicGen conditioned on text (and melody) but {model!r} uses "
            f"joint-embedding conditions {lm.condition_provider.joint_embed_conditions}, "
            "which this backend does not support."
        )
