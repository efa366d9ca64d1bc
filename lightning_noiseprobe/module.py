"""A LightningModule that fine-tunes MusicGen's language model, probe-ready.

:class:`MusicGenLightningModule` trains the LM of a backend (``"audiocraft"``
or ``"transformers"``) with audiocraft's MusicGen training loss (per-codebook
cross-entropy, then the mean over codebooks) on audio tokenized by the frozen
codec, exposes the backend as
:attr:`~MusicGenLightningModule.probe_backend` so that the noise-probe
callback measures exactly the model being trained, and exports the result in
the backend's native format.

Determinism: after construction the module draws no number from torch's
global RNGs. Classifier-free-guidance dropout uses the module's own
``torch.Generator`` (saved in checkpoints), so training with and without the
probe callback is bitwise identical.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends.base import get_backend
from lightning_noiseprobe.functional.losses import codebook_cross_entropy, token_nll_from_logits

if TYPE_CHECKING:
    from lightning_noiseprobe.backends.base import ProbeBackend

__all__ = ["MusicGenLightningModule", "warmup_cosine_factor"]


def warmup_cosine_factor(
    step: int, warmup_steps: int, total_steps: float, min_lr_ratio: float
) -> float:
    """Learning-rate multiplier: linear warmup, then cosine decay to ``min_lr_ratio``.

    During warmup the factor is ``(step + 1) / warmup_steps`` (so the first
    step already learns and step ``warmup_steps - 1`` reaches 1); from
    ``warmup_steps`` on it follows half a cosine from 1 down to
    ``min_lr_ratio``, reached at ``total_steps`` and kept afterwards. An
    infinite ``total_steps`` keeps the factor at 1 after warmup.

    Args:
        step: optimizer steps taken so far (``LambdaLR``'s counter).
        warmup_steps: length of the warmup (0: none).
        total_steps: the cosine horizon, in optimizer steps.
        min_lr_ratio: final factor, in ``[0, 1]``.

    Returns:
        The factor to multiply the peak learning rate with.

    Example:
        >>> [round(warmup_cosine_factor(s, 2, 6, 0.1), 3) for s in range(8)]
        [0.5, 1.0, 1.0, 0.868, 0.55, 0.232, 0.1, 0.1]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if math.isinf(total_steps):
        return 1.0
    decay_steps = max(1.0, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class MusicGenLightningModule(pl.LightningModule):
    """Fine-tune MusicGen's LM with audiocraft's training loss, on either backend.

    The backend is built (``"tiny"``, in about a second) or loaded from disk
    in ``__init__``. Its LM becomes the registered submodule ``lm`` (kept in
    float32: mixed precision comes from the Trainer) and its codec the
    submodule ``codec``, frozen: ``requires_grad`` off, always in eval mode
    (its quantizer would otherwise update its codebooks), outside the
    optimizer. Both travel in Lightning checkpoints.

    * ``backend="audiocraft"``: ``lm`` is audiocraft's ``LMModel`` (with its
      condition provider; the T5 encoder lives outside the module tree) and
      trains whole.
    * ``backend="transformers"``: ``lm`` is the whole
      ``MusicgenForConditionalGeneration``; its ``decoder`` and
      ``enc_to_dec_proj`` train, its T5 ``text_encoder`` and its EnCodec
      (``lm.audio_encoder``, the same object as ``codec``) are frozen and
      kept in eval mode and float32.

    Batches are dicts with ``"wav"`` (``[B, C, S]`` float audio at the
    model's rate and channels) or ``"codes"`` (``[B, K, T]`` long; then no
    encoding), and optionally ``"description"`` (``B`` texts or ``None``).

    Logged: ``train/ce`` (step and epoch, progress bar), ``train/ppl``,
    ``val/ce``, ``val/ppl`` and ``val/ce_q{k}`` per codebook (epoch).

    Args:
        backend: ``"audiocraft"`` or ``"transformers"`` (the registered
            backends that can be fine-tuned).
        model: ``"tiny"``, ``"tiny-stereo"`` or ``"tiny-melody"`` (built
            offline, either backend), a local folder in the backend's format (an
            audiocraft export; a ``save_pretrained`` folder), or a hub id.
        tiny_config: size overrides of the tiny model (keys of the backend's
            ``TINY_DEFAULTS``).
        seed: weight seed of the tiny model, also the seed of the
            classifier-free-guidance dropout generator.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay (not applied to biases, norms and
            embeddings).
        betas: AdamW betas.
        warmup_steps: linear warmup length in optimizer steps.
        max_steps: horizon of the cosine decay in optimizer steps;
            ``None``: ``trainer.estimated_stepping_batches``.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        cfg_dropout: probability that a training batch loses all its
            descriptions (classifier-free guidance, audiocraft's 0.3 for
            text-to-music); never applied outside training.
        gradient_checkpointing: recompute each transformer layer in the
            backward pass (audiocraft's ``checkpointing="torch"``,
            transformers' non-reentrant activation checkpointing):
            less memory, same numbers.
        freeze: name prefixes of trainable LM parameters to freeze
            (``None``: train everything). audiocraft: names in ``lm``, e.g.
            ``["emb", "transformer.layers.0"]``. transformers: names in
            ``lm.decoder`` (a ``MusicgenForCausalLM``), e.g.
            ``["model.decoder.embed_tokens", "model.decoder.layers.0",
            "lm_heads"]``, plus ``"enc_to_dec_proj"`` for the text projection.

    Raises:
        NoiseProbeError: on an invalid argument, an unknown freeze prefix, or
            a backend that cannot be fine-tuned.

    Example:
        >>> module = MusicGenLightningModule(model="tiny", freeze=["emb"])
        >>> module.probe_backend.lm is module.lm
        True
        >>> module.lm.training, module.codec.training
        (True, False)
    """

    def __init__(
        self,
        backend: str = "audiocraft",
        model: str = "tiny",
        tiny_config: dict[str, Any] | None = None,
        seed: int = 0,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        max_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        cfg_dropout: float = 0.3,
        gradient_checkpointing: bool = False,
        freeze: list[str] | None = None,
    ) -> None:
        super().__init__()
        _validate(
            lr=lr,
            weight_decay=weight_decay,
            betas=betas,
            warmup_steps=warmup_steps,
            max_steps=max_steps,
            min_lr_ratio=min_lr_ratio,
            cfg_dropout=cfg_dropout,
        )
        self.save_hyperparameters()

        probe_backend = get_backend(
            backend,
            model=model,
            device="cpu",
            dtype=torch.float32,
            seed=seed,
            tiny_config=tiny_config,
        ).load()
        if not probe_backend.supports_training:
            raise NoiseProbeError(
                f"Expected argument `backend` to name a backend that can be fine-tuned "
                f"(one with `supports_training`, such as 'audiocraft' or 'transformers') but got "
                f"{backend!r} ({type(probe_backend).__name__})."
            )
        self._backend: ProbeBackend = probe_backend
        # Same objects as the backend's: the probe measures the model being trained.
        self.lm = probe_backend.lm.float()
        self.codec = probe_backend.codec
        # Submodules kept frozen, in eval mode and in float32 whatever the module does.
        self._frozen_parts: tuple[str, ...] = (
            "codec",
            *(f"lm.{name}" for name in probe_backend.frozen_lm_parts()),
        )
        if gradient_checkpointing:
            probe_backend.enable_gradient_checkpointing()
        probe_backend.prepare_for_training(list(freeze or []))
        self._cfg_rng = torch.Generator().manual_seed(seed)
        self._backend_device = torch.device("cpu")
        self.train()  # the LM trains, the codec stays in eval (see `train`)

    # -- sharding -------------------------------------------------------------
    @override
    def configure_model(self) -> None:
        """Shard the LM with FSDP2 under ``ModelParallelStrategy(tensor_parallel_size=1)``.

        The backend names the groups, in order (:meth:`ProbeBackend.fsdp_units
        <lightning_noiseprobe.backends.base.ProbeBackend.fsdp_units>`).
        audiocraft: each transformer layer becomes its own group, then the LM
        takes the rest (embeddings, output heads, condition provider).
        transformers: each decoder layer, then the decoder, and the text
        projection. The frozen codec (and T5) stay whole on every rank.
        Nothing happens under other strategies.
        Lightning calls this hook; :class:`NoiseProbeCallback` probes the
        sharded LM (see ``lightning_noiseprobe._sharding``).

        Raises:
            NoiseProbeError: with tensor parallelism, or a torch older than 2.6
                (no ``fully_shard``).
        """
        mesh = self._device_mesh
        if mesh is None:
            return
        import torch.distributed.fsdp

        from lightning_noiseprobe._sharding import fsdp2_modules

        fully_shard = getattr(torch.distributed.fsdp, "fully_shard", None)
        if fully_shard is None:  # public from torch 2.6
            raise NoiseProbeError(
                "Expected torch.distributed.fsdp.fully_shard (FSDP2, public from torch 2.6) for"
                f" ModelParallelStrategy but torch {torch.__version__} has none. Upgrade torch"
                " (`pip install 'torch>=2.6'`) or train with strategy='ddp'."
            )

        if fsdp2_modules(self.lm):
            return  # already sharded (the hook may run again, e.g. fit then validate)
        if mesh["tensor_parallel"].size() != 1:
            raise NoiseProbeError(
                "Expected ModelParallelStrategy(tensor_parallel_size=1) (FSDP2 data parallelism) for"
                f" MusicGenLightningModule but the tensor-parallel size is {mesh['tensor_parallel'].size()}."
                " Pass ModelParallelStrategy(data_parallel_size=<devices>, tensor_parallel_size=1)."
            )
        dp = mesh["data_parallel"]
        for unit in self._backend.fsdp_units():
            fully_shard(unit, mesh=dp)

    # -- the probe protocol ---------------------------------------------------
    @property
    def probe_backend(self) -> ProbeBackend:
        """The backend whose ``.lm`` is :attr:`lm` (same object), on this module's device.

        ``encode``, ``lm_logits`` and ``token_nll`` run on the device the
        module was moved to. The backend's ``device`` follows the LM's
        weights. transformers keeps nothing beside them (its T5 and codec are
        inside ``lm``); what audiocraft caches beside them (``MusicGen.device``
        and its autocast, the conditioners' ``device``, a frozen T5 kept
        outside the module tree) is moved on every move of the module and
        checked here.
        """
        self._sync_backend_device()
        return self._backend

    def _sync_backend_device(self) -> None:
        backend = self.__dict__.get("_backend")
        if backend is None:
            return  # nothing loaded yet
        device = next(self.lm.parameters()).device
        if self.__dict__.get("_backend_device") != device:
            backend.to(device)  # what the backend caches beside the weights follows them
            self._backend_device = device

    @override
    def _apply(self, fn: Any, recurse: bool = True) -> MusicGenLightningModule:
        # Every device/dtype move (`.to`, `.cuda`, the strategy's `model_to_device`)
        # lands here; keep the backend's cached device and the conditioners' models
        # that live outside the module tree (T5, demucs) in step, and the frozen parts
        # (codec; transformers' T5) in float32.
        super()._apply(fn, recurse)
        if "_backend" in self.__dict__:
            for part in self._frozen_modules():
                if any(p.dtype != torch.float32 for p in part.parameters()):
                    part.float()
            self._sync_backend_device()
        return self

    def _frozen_modules(self) -> list[torch.nn.Module]:
        return [self.get_submodule(name) for name in self.__dict__.get("_frozen_parts", ())]

    @override
    def train(self, mode: bool = True) -> MusicGenLightningModule:
        """Set the LM's mode; the frozen parts (codec; transformers' T5) stay in eval mode."""
        super().train(mode)
        for part in self._frozen_modules():
            part.eval()
        return self

    @override
    def on_train_epoch_start(self) -> None:
        for part in self._frozen_modules():
            part.eval()

    # -- steps ----------------------------------------------------------------
    def batch_codes(self, batch: dict[str, Any]) -> torch.Tensor:
        """``[B, K, T]`` codes of a batch: its ``"codes"``, or its ``"wav"`` tokenized
        by the frozen codec (no gradients, float32 even under autocast)."""
        if "codes" in batch:
            return batch["codes"].to(self.device, torch.long)
        if "wav" not in batch:
            raise NoiseProbeError(
                f"Expected a batch holding 'wav' or 'codes' but got keys {sorted(batch)}."
            )
        # The frozen codec tokenizes in float32 whatever the Trainer's precision:
        # codes must not depend on autocast.
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            return self.probe_backend.encode(batch["wav"])

    def cross_entropy(
        self, codes: torch.Tensor, descriptions: Sequence[str | None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss of ``codes``: audiocraft's MusicGen cross-entropy.

        ``backend.lm_logits`` then :func:`token_nll_from_logits` then
        :func:`codebook_cross_entropy`; no dropout of any kind (the caller
        decides on the descriptions).

        Args:
            codes: ``[B, K, T]`` long codes.
            descriptions: ``B`` texts (``None`` = unconditional) or ``None``.

        Returns:
            ``(ce, ce_per_codebook)``: a scalar and a ``[K]`` tensor, float32,
            differentiable.
        """
        self._sync_backend_device()
        logits, mask = self._backend.lm_logits(codes, descriptions)
        nll, mask = token_nll_from_logits(logits, codes, mask)
        return codebook_cross_entropy(nll, mask)

    def drop_descriptions(
        self, descriptions: Sequence[str | None] | None
    ) -> Sequence[str | None] | None:
        """Classifier-free-guidance dropout: with probability ``cfg_dropout``
        the whole batch becomes unconditional (``None``), as audiocraft does.

        Draws one number from the module's own generator (seeded with
        ``seed``, saved in checkpoints) when ``cfg_dropout > 0``; never from
        the global RNG.
        """
        p = float(self.hparams["cfg_dropout"])
        if p <= 0.0:
            return descriptions
        drop = torch.rand(1, generator=self._cfg_rng).item() < p
        return None if drop else descriptions

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        codes = self.batch_codes(batch)
        descriptions = self.drop_descriptions(batch.get("description"))
        ce, _ = self.cross_entropy(codes, descriptions)
        batch_size = codes.shape[0]
        self.log("train/ce", ce, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size)
        self.log(
            "train/ppl", torch.exp(ce.detach()), on_step=True, on_epoch=True, batch_size=batch_size
        )
        return ce

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        codes = self.batch_codes(batch)
        ce, ce_q = self.cross_entropy(codes, batch.get("description"))
        batch_size = codes.shape[0]
        self.log("val/ce", ce, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size)
        self.log("val/ppl", torch.exp(ce), on_step=False, on_epoch=True, batch_size=batch_size)
        for k, value in enumerate(ce_q):
            self.log(f"val/ce_q{k}", value, on_step=False, on_epoch=True, batch_size=batch_size)
        return ce

    # -- optimisation -----------------------------------------------------------
    @override
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        no_decay_ids = {
            id(m.weight)
            for m in self.lm.modules()
            if isinstance(m, torch.nn.Embedding) and m.weight is not None
        }
        frozen_ids = {id(p) for part in self._frozen_modules() for p in part.parameters()}
        decay, no_decay = [], []
        for param in self.lm.parameters():
            if not param.requires_grad or id(param) in frozen_ids:
                continue
            if param.ndim < 2 or id(param) in no_decay_ids:
                no_decay.append(param)
            else:
                decay.append(param)
        groups = [
            g
            for g in (
                {"params": decay, "weight_decay": float(hp["weight_decay"])},
                {"params": no_decay, "weight_decay": 0.0},
            )
            if g["params"]
        ]
        if not groups:
            raise NoiseProbeError(
                "Expected some trainable LM parameters but argument `freeze` froze them all: "
                f"{hp['freeze']}."
            )
        optimizer = torch.optim.AdamW(groups, lr=float(hp["lr"]), betas=tuple(hp["betas"]))

        total: float
        if hp["max_steps"] is not None:
            total = float(hp["max_steps"])
        else:
            total = float(self.trainer.estimated_stepping_batches)
            if math.isinf(total):
                rank_zero_warn(
                    "The Trainer has no step or epoch limit and `max_steps` is None: the learning "
                    "rate stays at `lr` after warmup (no cosine decay). Set `max_steps`."
                )
        # A `partial` (empty `__dict__`): `LambdaLR.load_state_dict` restores the step
        # count and current lr but not the schedule's settings; from the first
        # scheduler step after resuming, the current settings apply.
        schedule = functools.partial(
            warmup_cosine_factor,
            warmup_steps=int(hp["warmup_steps"]),
            total_steps=total,
            min_lr_ratio=float(hp["min_lr_ratio"]),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # -- checkpoints --------------------------------------------------------------
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["noiseprobe_cfg_dropout_rng"] = self._cfg_rng.get_state()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("noiseprobe_cfg_dropout_rng")
        if state is not None:
            self._cfg_rng.set_state(state)

    # -- export -----------------------------------------------------------------
    def export(self, folder: str | os.PathLike[str]) -> Path:
        """Write the fine-tuned model in the backend's native format.

        ``get_backend(backend, model=folder)`` loads the result, with the same
        per-token NLL. Call it on one process only (e.g. under
        ``trainer.is_global_zero``). The backend writes it
        (:meth:`ProbeBackend.export <lightning_noiseprobe.backends.base.ProbeBackend.export>`):

        * audiocraft: audiocraft's export format (``state_dict.bin``,
          ``compression_state_dict.bin``), which
          ``audiocraft.models.MusicGen.get_pretrained(folder)`` also loads. Both
          files are written into a temporary folder and moved into place
          together (:func:`lightning_noiseprobe._io.atomic_dir`); in an existing
          folder they replace an earlier export and other files are kept.
          Files and folder get the usual permissions (``0o666``/``0o777``
          less the umask).
        * transformers: ``save_pretrained`` (model and tokenizer) through
          :meth:`TransformersBackend.save
          <lightning_noiseprobe.backends.transformers.TransformersBackend.save>`,
          which ``MusicgenForConditionalGeneration.from_pretrained(folder)``
          also loads; written beside ``folder`` and renamed into place (an
          earlier save there is replaced).

        Args:
            folder: the output folder.

        Returns:
            The folder, as a :class:`~pathlib.Path`.

        Raises:
            NoiseProbeError: if the LM is sharded (FSDP2); (transformers) if
                ``folder`` exists and holds something other than an earlier save.
        """
        from lightning_noiseprobe._sharding import fsdp2_modules

        if fsdp2_modules(self.lm):
            raise NoiseProbeError(
                "Expected an unsharded LM to export but this one is sharded with FSDP2 (ModelParallelStrategy):"
                " each rank holds a shard. Load the trained weights into MusicGenLightningModule in one process"
                " (e.g. from a checkpoint saved with save_distributed_checkpoint=False) and export there."
            )
        return self._backend.export(folder)


def _validate(
    *,
    lr: float,
    weight_decay: float,
    betas: Sequence[float],
    warmup_steps: int,
    max_steps: int | None,
    min_lr_ratio: float,
    cfg_dropout: float,
) -> None:
    if not lr > 0:
        raise NoiseProbeError(f"Expected argument `lr` to be a positive number but got {lr!r}.")
    if not weight_decay >= 0:
        raise NoiseProbeError(
            f"Expected argument `weight_decay` to be a non-negative number but got {weight_decay!r}."
        )
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise NoiseProbeError(
            f"Expected argument `betas` to be two numbers in [0, 1) but got {betas!r}."
        )
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise NoiseProbeError(
            f"Expected argument `warmup_steps` to be a non-negative integer but got {warmup_steps!r}."
        )
    if max_steps is not None and (
        isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1
    ):
        raise NoiseProbeError(
            f"Expected argument `max_steps` to be a positive integer or None but got {max_steps!r}."
        )
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise NoiseProbeError(
            f"Expected argument `min_lr_ratio` to be in [0, 1] but got {min_lr_ratio!r}."
        )
    if not 0.0 <= cfg_dropout <= 1.0:
        raise NoiseProbeError(
            f"Expected argument `cfg_dropout` to be a probability in [0, 1] but got {cfg_dropout!r}."
        )
