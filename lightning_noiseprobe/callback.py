"""``NoiseProbeCallback``: peak-shape metrics of a noise-injected probe set, every validation epoch.

The protocol a LightningModule must follow to be probed is small: expose a
``probe_backend`` attribute (or property) returning a loaded
:class:`~lightning_noiseprobe.backends.base.ProbeBackend` whose ``lm`` is the
module's own (training) language model. :class:`~lightning_noiseprobe.module.MusicGenLightningModule`
implements it; for your own module::

    class MyModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self._backend = AudiocraftBackend("facebook/musicgen-small").load()
            self.lm = self._backend.lm          # registered: trained, moved, checkpointed

        @property
        def probe_backend(self):
            return self._backend
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.probe.spec import PAPER_LENGTHS, ProbeSpec

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_noiseprobe.backends.base import ProbeBackend
    from lightning_noiseprobe.probe.probeset import ProbeSet
    from lightning_noiseprobe.probe.result import ProbeResult

__all__ = ["NoiseProbeCallback"]

log = logging.getLogger(__name__)

#: Metrics broken down per (noise, length) when ``log_per_length`` is on.
PER_LENGTH_METRICS = (
    "delta_loss",
    "peak_mean",
    "peak_sharpness",
    "assimilation_mean",
    "recovery_mean",
)
#: Metrics drawn in the history figure.
HISTORY_METRICS = ("peak_sharpness", "peak_mean", "delta_loss", "assimilation_mean")


class NoiseProbeCallback(Callback):
    r"""Score a fixed noise-injected probe set at the end of validation epochs and log
    peak-shape metrics as ``noiseprobe/<metric>``.

    The metrics are logged with ``pl_module.log`` in ``on_validation_epoch_end``,
    on every rank with the same value, so ``EarlyStopping`` and
    ``ModelCheckpoint`` can monitor them in the same epoch::

        trainer = Trainer(callbacks=[
            NoiseProbeCallback(probe_audio="probe_clips/"),
            EarlyStopping(monitor="noiseprobe/peak_sharpness", mode="max", patience=3),
        ])

    The probe runs under ``torch.no_grad()`` and the trainer's precision
    (``precision_plugin.forward_context()``) on the module's device, switches the
    module to eval mode and restores every submodule's mode afterwards, and
    isolates the global RNGs, so training is bitwise the same with and without it.
    It is skipped during the sanity check and ``fast_dev_run``, and under
    ``trainer.validate()`` unless ``run_on_validate``.

    Under DDP and FSDP2 (``ModelParallelStrategy`` with ``tensor_parallel_size=1``)
    the clips are sharded across ranks with the same LM passes on each, the
    per-token losses gathered, and every rank logs the same values; FSDP2
    parameter groups the probe calls directly are gathered for it and resharded
    afterwards. Under FSDP1 (``FSDPStrategy``) it runs inside the wrapped root's
    forward (not verified on hardware). Tensor parallelism is refused.

    Args:
        probe_audio: folder(s) or files of clean probe clips. ``None`` takes
            ``trainer.datamodule.probe_files()``.
        onset, lengths, noises, level_dbfs, level_db_rel, mode, shuffle_segments,
            clip_seconds, seed: the perturbations (see :class:`ProbeSpec`);
            defaults follow the paper.
        regions: region rule, ``"default"`` or ``"authors"`` (the paper's own code; see
            :class:`ProbeSpec`).
        spec: a full :class:`ProbeSpec` instead of the arguments above.
        descriptions: text condition for every clip (``None``: ``.json`` sidecars,
            else unconditional).
        every_n_epochs: probe every n-th epoch (count from 1). Monitoring callbacks
            should then run only on probed epochs.
        batch_size: sequences per forward pass.
        precision: ``None`` follows the trainer; or ``"32"``, ``"bf16"``, ``"16"``.
        log_figures: log figures to TensorBoard (rank zero).
        log_audio: log one clean and one perturbed audio example to TensorBoard (once).
        log_per_length: log ``noiseprobe/<noise>/len<L>/<metric>`` breakdowns.
        fatal: re-raise probe failures instead of warning and skipping the epoch.
        run_on_validate: also probe under ``trainer.validate()``.
        cache_dir: token cache folder (default: ``~/.cache/lightning_noiseprobe``; ``"none"`` disables).
        max_clips: use at most this many clips (sorted by path).
        prefix: metric name prefix.
    """

    def __init__(
        self,
        probe_audio: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        *,
        onset: int = 250,
        lengths: Sequence[int] = PAPER_LENGTHS,
        noises: Sequence[str] = ("white",),
        level_dbfs: float = -30.0,
        level_db_rel: float | None = None,
        mode: str = "replace",
        shuffle_segments: Sequence[int] = (),
        clip_seconds: float = 15.0,
        seed: int = 0,
        regions: str = "default",
        spec: ProbeSpec | None = None,
        descriptions: str | None = None,
        every_n_epochs: int = 1,
        batch_size: int = 8,
        precision: str | None = None,
        log_figures: bool = True,
        log_audio: bool = False,
        log_per_length: bool = True,
        fatal: bool = False,
        run_on_validate: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        max_clips: int | None = None,
        prefix: str = "noiseprobe",
    ) -> None:
        super().__init__()
        from lightning_noiseprobe.probe.runner import PRECISIONS

        self.spec = spec or ProbeSpec(
            onset=onset,
            lengths=tuple(lengths),
            noises=tuple(noises),
            level_dbfs=level_dbfs,
            level_db_rel=level_db_rel,
            mode=mode,
            shuffle_segments=tuple(shuffle_segments),
            clip_seconds=clip_seconds,
            seed=seed,
            regions=regions,
        )
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise NoiseProbeError(
                f"Expected argument `every_n_epochs` to be a positive integer but got {every_n_epochs!r}."
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise NoiseProbeError(
                f"Expected argument `batch_size` to be a positive integer but got {batch_size!r}."
            )
        if precision is not None and str(precision) not in PRECISIONS:
            raise NoiseProbeError(
                f"Expected argument `precision` to be None or one of {sorted(PRECISIONS)} but got {precision!r}."
            )
        if max_clips is not None and (not isinstance(max_clips, int) or max_clips < 1):
            raise NoiseProbeError(
                f"Expected argument `max_clips` to be a positive integer or None but got {max_clips!r}."
            )
        if not prefix or "/" in prefix:
            raise NoiseProbeError(
                f"Expected argument `prefix` to be a non-empty name without '/' but got {prefix!r}."
            )
        self.probe_audio = probe_audio
        self.descriptions = descriptions
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.precision = None if precision is None else str(precision)
        self.log_figures = log_figures
        self.log_audio = log_audio
        self.log_per_length = log_per_length
        self.fatal = fatal
        self.run_on_validate = run_on_validate
        self.cache_dir = cache_dir
        self.max_clips = max_clips
        self.prefix = prefix

        self.history: list[dict[str, float]] = []
        self.failures: list[dict[str, Any]] = []
        self.last_result: ProbeResult | None = None
        self._probe_set: ProbeSet | None = None
        self._audio_files: list[str] | None = None
        self._layout_written = False
        self._audio_logged = False

    # ------------------------------------------------------------------ identity / state
    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix, spec=self.spec.hash())

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "spec_hash": self.spec.hash(),
            "spec": self.spec.to_dict(),
            "history": list(self.history),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("spec_hash")
        if saved is not None and saved != self.spec.hash():
            rank_zero_warn(
                f"NoiseProbeCallback: the probe spec changed since the checkpoint (was {saved}, now {self.spec.hash()});"
                f" the {len(state_dict.get('history', []))} earlier probes were made with {state_dict.get('spec')} and are"
                " kept in `history` under 'spec_hash'. Compare metrics across the change with care."
            )
            self.history = [dict(h, spec_hash=saved) for h in state_dict.get("history", [])]
        else:
            self.history = list(state_dict.get("history", []))

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._backend_of(pl_module)  # fail early with a clear message
        self._check_strategy(trainer)
        if self._audio_files is None:
            self._audio_files = self._resolve_audio(trainer)

    @staticmethod
    def _check_strategy(trainer: pl.Trainer) -> None:
        """Refuse tensor parallelism; warn where probing is not verified (FSDP1, DeepSpeed)."""
        strategy = type(trainer.strategy).__name__
        # resolved by the strategy's setup_environment, before this hook ("auto": the devices of a node)
        tp = getattr(trainer.strategy, "_tensor_parallel_size", 1)
        if strategy == "ModelParallelStrategy" and tp != 1:
            raise NoiseProbeError(
                f"NoiseProbeCallback supports ModelParallelStrategy as FSDP2 data parallelism only, but"
                f" tensor_parallel_size is {tp!r} (its default 'auto' is every device of a node): the probe"
                " shards its clips across every rank. Pass ModelParallelStrategy(data_parallel_size=<devices>,"
                " tensor_parallel_size=1)."
            )
        if str(getattr(trainer, "precision", "")) == "bf16-true":
            rank_zero_warn(
                "NoiseProbeCallback: under precision='bf16-true' the LM's weights and residual stream are bf16, which"
                " moves the probe's metrics far more than bf16-mixed does (tiny model, vs fp32 scoring of the same"
                " weights: peak_mean by 0.40, clean_loss by 0.03; bf16-mixed: 7e-4 and 4e-5). Trends within the run"
                " stay comparable; to compare metrics across runs, train with bf16-mixed."
            )
        if strategy == "DeepSpeedStrategy":
            rank_zero_warn(
                "NoiseProbeCallback: probing under DeepSpeedStrategy is not supported: with ZeRO-3 the probe calls"
                " the LM outside the engine's forward, so it would fail and be skipped each epoch (training is not"
                " affected). Use DDP or ModelParallelStrategy (FSDP2)."
            )
        elif strategy == "FSDPStrategy":
            rank_zero_warn(
                "NoiseProbeCallback: under FSDPStrategy (FSDP1) the probe runs inside the wrapped root's forward;"
                " this path has not been verified on hardware (FSDP1 needs a GPU). ModelParallelStrategy (FSDP2)"
                " is tested. If the probe fails it is skipped with a warning; pass fatal=True to stop instead."
            )

    @staticmethod
    def _backend_of(pl_module: pl.LightningModule) -> ProbeBackend:
        from lightning_noiseprobe.backends.base import ProbeBackend

        backend = getattr(pl_module, "probe_backend", None)
        if not isinstance(backend, ProbeBackend):
            raise NoiseProbeError(
                f"NoiseProbeCallback needs the LightningModule to expose `probe_backend`, a loaded ProbeBackend"
                f" whose `.lm` is the module's language model, but {type(pl_module).__name__}.probe_backend is"
                f" {type(backend).__name__ if backend is not None else 'missing'}. Use MusicGenLightningModule or"
                " add the property (see the lightning_noiseprobe.callback docstring)."
            )
        lm_ids = {id(m) for m in pl_module.modules()}
        if id(backend.lm) not in lm_ids:
            raise NoiseProbeError(
                f"Expected `{type(pl_module).__name__}.probe_backend.lm` to be a submodule of the LightningModule"
                " (the model being trained) but it is not; the probe would score a stale copy. Register it, e.g."
                " `self.lm = backend.lm`."
            )
        return backend

    def _resolve_audio(self, trainer: pl.Trainer) -> list[str]:
        from lightning_noiseprobe.probe.probeset import find_audio_files

        source = self.probe_audio
        if source is None:
            dm = getattr(trainer, "datamodule", None)
            getter = getattr(dm, "probe_files", None)
            if getter is None:
                raise NoiseProbeError(
                    "Expected argument `probe_audio` (a folder or files of probe clips), or a datamodule with"
                    f" `probe_files()`, but got probe_audio=None and datamodule {type(dm).__name__ if dm else None}."
                )
            source = list(getter())
            if not source:
                raise NoiseProbeError(
                    f"Expected {type(dm).__name__}.probe_files() to return probe clips but it returned none."
                    " Set its probe split (e.g. probe_fraction) or pass `probe_audio`."
                )
        files = [str(p) for p in find_audio_files(source)]
        return files[: self.max_clips] if self.max_clips else files

    # ------------------------------------------------------------------ hook
    def _should_probe(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking or getattr(trainer, "fast_dev_run", False):
            return False
        fn = getattr(trainer.state.fn, "value", trainer.state.fn)
        if fn == "validate":
            return self.run_on_validate
        if fn != "fit":
            return False
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_probe(trainer):
            return
        started = time.perf_counter()
        try:
            result = self._run_probe(trainer, pl_module)
        except Exception as err:
            self.failures.append(
                {"epoch": trainer.current_epoch, "step": trainer.global_step, "error": repr(err)}
            )
            if self.fatal:
                raise
            rank_zero_warn(
                f"NoiseProbeCallback: the probe failed at epoch {trainer.current_epoch} ({type(err).__name__}: {err});"
                " this epoch has no noiseprobe metrics and training goes on unchanged. Pass fatal=True to stop instead."
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return
        seconds = time.perf_counter() - started
        self.last_result = result
        self._log_metrics(pl_module, result)
        entry = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "seconds": seconds,
            **result.summary,
        }
        self.history.append(entry)
        if trainer.is_global_zero:
            self._log_tensorboard(trainer, result)
        rank_zero_info(
            f"noiseprobe: epoch {trainer.current_epoch} peak_sharpness={result.summary.get('peak_sharpness', math.nan):.3f}"
            f" delta_loss={result.summary.get('delta_loss', math.nan):+.4f} ({seconds:.1f} s)"
        )

    def _run_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ProbeResult:
        from lightning.pytorch.utilities.seed import isolate_rng

        from lightning_noiseprobe._sharding import run_in_root_forward, unsharded

        backend = self._backend_of(pl_module)
        device = pl_module.device
        modes = {m: m.training for m in pl_module.modules()}
        used = (backend.lm, backend.codec)
        pl_module.eval()
        try:
            # no_grad, not inference_mode: tensors the model caches during the probe
            # (audiocraft's pattern indexes) must stay usable by later training steps.
            # Sharded models: FSDP2 groups holding weights the probe calls directly are
            # gathered for the probe; under FSDP1 it runs inside the root's forward.
            with (
                isolate_rng(),
                torch.inference_mode(False),
                torch.no_grad(),
                unsharded(pl_module, used),
            ):
                return run_in_root_forward(
                    trainer, pl_module, used, lambda: self._probe(trainer, backend, device)
                )
        finally:
            for module, training in modes.items():
                module.train(training)

    def _probe(
        self, trainer: pl.Trainer, backend: ProbeBackend, device: torch.device
    ) -> ProbeResult:
        from lightning_noiseprobe.probe.probeset import build_probe_set, default_cache_dir
        from lightning_noiseprobe.probe.runner import precision_context, score_probe_set

        if self._probe_set is None:
            if self._audio_files is None:
                self._audio_files = self._resolve_audio(trainer)
            cache = self.cache_dir
            if cache is None:
                cache = default_cache_dir()
            elif str(cache).lower() == "none":
                cache = None
            self._probe_set = build_probe_set(
                backend,
                self._audio_files,
                self.spec,
                descriptions=self.descriptions,
                cache_dir=cache,
            )
            for skipped in self._probe_set.skipped:
                rank_zero_warn(
                    f"NoiseProbeCallback: skipped probe clip {skipped['path']}: {skipped['reason']}"
                )
        if self.precision is None:
            ctx = trainer.precision_plugin.forward_context
        else:
            ctx = precision_context(self.precision, device)
        if trainer.world_size > 1:
            return self._score_sharded(trainer, backend, ctx, device)
        return score_probe_set(
            backend,
            self._probe_set,
            batch_size=self.batch_size,
            device=device,
            forward_context=ctx,
        )

    def _score_sharded(
        self, trainer: pl.Trainer, backend: ProbeBackend, ctx: Any, device: torch.device
    ) -> ProbeResult:
        """Score this rank's share of the clips, gather every rank's per-token NLL, analyse the whole.

        Clip ``j`` goes to rank ``j % W``; every rank scores ``ceil(N / W)`` clips
        (padded with repeats of clip 0, dropped after the gather), so all ranks run
        the same number of forward passes and gather tensors of the same shape.
        A failure on any rank is agreed on first, so no rank waits in a collective
        that another never reaches; then every rank raises and skips the epoch.
        """
        from lightning_noiseprobe.probe.runner import result_from_nll, score_nll

        assert self._probe_set is not None
        ps = self._probe_set
        world, rank = trainer.world_size, trainer.global_rank
        N = len(ps)
        per_rank = -(-N // world)
        own = [rank + world * i for i in range(per_rank)]
        error: BaseException | None = None
        try:
            nll, mask = score_nll(
                backend,
                ps.subset([j if j < N else 0 for j in own]),
                batch_size=self.batch_size,
                device=device,
                forward_context=ctx,
            )
        except Exception as err:
            error = err
        ok = trainer.strategy.all_gather(
            torch.tensor([error is None], dtype=torch.uint8, device=device)
        )
        if error is not None:
            raise error
        if not bool(ok.all()):
            failed = [r for r, flag in enumerate(ok.reshape(-1).tolist()) if not flag]
            raise RuntimeError(f"the probe failed on rank(s) {failed}; skipped on every rank")
        all_nll = trainer.strategy.all_gather(nll.to(device)).cpu()  # [W, per_rank, 1 + P, K, T]
        all_mask = trainer.strategy.all_gather(mask.to(device, torch.uint8)).cpu().bool()
        ranks = [j % world for j in range(N)]
        slots = [j // world for j in range(N)]
        return result_from_nll(backend, ps, all_nll[ranks, slots], all_mask[ranks, slots])

    # ------------------------------------------------------------------ logging
    def _metrics_to_log(self, result: ProbeResult) -> dict[str, float]:
        out = {
            f"{self.prefix}/{k}": float(v)
            for k, v in result.summary.items()
            if not k.endswith("_p") and math.isfinite(v)
        }
        if self.log_per_length:
            for group, by_len in result.by_length.items():
                for length, metrics in by_len.items():
                    for name in PER_LENGTH_METRICS:
                        value = metrics.get(name, {}).get("mean")
                        if value is not None and math.isfinite(value):
                            out[f"{self.prefix}/{group}/len{length}/{name}"] = float(value)
        return out

    def _log_metrics(self, pl_module: pl.LightningModule, result: ProbeResult) -> None:
        # Every rank analysed the same gathered curves, so the values are already identical:
        # no sync_dist (which would average per-rank means) and no rank_zero_only (not monitorable).
        for name, value in self._metrics_to_log(result).items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False, batch_size=1)

    def _tensorboard(self, trainer: pl.Trainer) -> Any:
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    def _log_tensorboard(self, trainer: pl.Trainer, result: ProbeResult) -> None:
        writer = self._tensorboard(trainer)
        if writer is None:
            return
        from lightning_noiseprobe import plots

        step = trainer.global_step
        if not self._layout_written:
            writer.add_custom_scalars(self.custom_scalars_layout(result))
            self._layout_written = True
        if self.log_figures:
            figures = {
                f"{self.prefix}/delta_curve": plots.delta_curve(result),
                f"{self.prefix}/loss_vs_length": plots.loss_vs_length(result),
                f"{self.prefix}/history": plots.metric_history(self.history, HISTORY_METRICS),
            }
            for tag, fig in figures.items():
                writer.add_figure(tag, fig, global_step=step, close=False)
                plots.close(fig)
        if self.log_audio and not self._audio_logged and self._probe_set is not None:
            self._log_audio_examples(writer, step)
            self._audio_logged = True
        writer.flush()

    def _log_audio_examples(self, writer: Any, step: int) -> None:
        from lightning_noiseprobe.audio import convert_audio, load_audio
        from lightning_noiseprobe.probe.probeset import perturb_clip

        assert self._probe_set is not None
        ps = self._probe_set
        clip = ps.clips[0]
        wav, sr = load_audio(clip.name)
        wav = convert_audio(wav, sr, ps.sample_rate, ps.channels)[
            ..., : round(ps.spec.clip_seconds * ps.sample_rate)
        ]
        pert = max(ps.perturbations, key=lambda p: p.length)
        perturbed = perturb_clip(wav, ps.sample_rate, ps.frame_rate, ps.spec, pert, clip.audio_hash)
        for tag, audio in (
            (f"{self.prefix}/audio/clean", wav),
            (f"{self.prefix}/audio/{pert.group}_len{pert.length}", perturbed),
        ):
            writer.add_audio(
                tag,
                audio.mean(0, keepdim=True).clamp(-1, 1),
                global_step=step,
                sample_rate=ps.sample_rate,
            )

    def custom_scalars_layout(self, result: ProbeResult) -> dict[str, Any]:
        """TensorBoard custom-scalars layout: headline metrics, then one chart per metric across lengths."""
        p = self.prefix
        layout: dict[str, Any] = {
            f"{p}: peak shape": {
                "peak sharpness / height": [
                    "Multiline",
                    [f"^{p}/peak_sharpness$", f"^{p}/peak_height$"],
                ],
                "region means": [
                    "Multiline",
                    [f"^{p}/peak_mean$", f"^{p}/assimilation_mean$", f"^{p}/recovery_mean$"],
                ],
                "loss": ["Multiline", [f"^{p}/clean_loss$", f"^{p}/delta_loss$"]],
                "length correlation": [
                    "Multiline",
                    [f"^{p}/length_pearson$", f"^{p}/length_spearman$"],
                ],
            }
        }
        if self.log_per_length:
            layout[f"{p}: per length"] = {
                name: ["Multiline", [f"^{p}/[^/]+/len[0-9]+/{name}$"]]
                for name in PER_LENGTH_METRICS
            }
        return layout
