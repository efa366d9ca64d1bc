"""Running the probe on a sharded model (FSDP2 ``fully_shard``, FSDP1 wrappers).

The probe calls the LM's parts directly (embeddings, transformer, output
heads, condition provider, codec) instead of the module's ``forward``. On a
sharded model those parts hold only this rank's shard of their weights
outside a ``forward``, so:

* FSDP2 (``fully_shard``, Lightning's ``ModelParallelStrategy``): the
  parameter groups that own weights the probe touches directly are gathered
  with ``FSDPModule.unshard()`` for the probe and resharded afterwards; nested
  groups (the transformer layers) gather themselves in their own ``forward``
  as in training.
* FSDP1 (``FullyShardedDataParallel``, Lightning's ``FSDPStrategy``): the
  probe runs inside the wrapped root module's ``forward`` (Lightning's forward
  redirection, as for ``training_step``), which gathers the root's weights;
  nested units gather themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import torch

from lightning_noiseprobe._errors import NoiseProbeError

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["fsdp2_modules", "run_in_root_forward", "unsharded"]

R = TypeVar("R")


def fsdp2_modules(root: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules of ``root`` (itself included) sharded with FSDP2's ``fully_shard``."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return []
    return [m for m in root.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def unsharded(root: torch.nn.Module, used: Sequence[torch.nn.Module]) -> Iterator[list[Any]]:
    """Gather, for the block, the FSDP2 parameter groups that own weights of ``used`` outside nested groups.

    A group owns a module's weights when it is that module or one of its
    ancestors (``fully_shard`` on a parent takes every parameter not taken by
    a nested ``fully_shard``). Only those groups are gathered: memory grows by
    the LM's embeddings and heads, not by the whole model. Does nothing when
    nothing is sharded.

    Yields:
        The gathered modules (empty when nothing is sharded).
    """
    sharded = fsdp2_modules(root)
    if not sharded:
        yield []
        return
    wanted = {id(m) for m in used}
    owners = [m for m in sharded if any(id(sub) in wanted for sub in m.modules())]
    for m in sharded:  # outermost first
        _lazy_init(m)
    gathered: list[Any] = []
    try:
        for m in owners:
            m.unshard()  # type: ignore[operator]
            gathered.append(m)
        yield gathered
    finally:
        for m in reversed(gathered):
            m.reshard()


def _lazy_init(module: torch.nn.Module) -> None:
    """Let an FSDP2 root set itself up (it does so in its first ``forward``).

    The probe runs after training or validation steps, so the root normally is
    set up already. If it is not, a nested group gathered outside the root's
    ``forward`` would make itself a root and break the next training step.
    """
    get_state = getattr(module, "_get_fsdp_state", None)
    state = get_state() if get_state is not None else None
    if state is not None and getattr(state, "_is_root", False) is None:
        state._lazy_init()  # marks the nested groups as non-roots


def _fsdp1_root(trainer: pl.Trainer) -> torch.nn.Module | None:
    """The trainer's model if it is an FSDP1 ``FullyShardedDataParallel`` wrapper."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return None
    model = trainer.model
    return model if isinstance(model, FullyShardedDataParallel) else None


def run_in_root_forward(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    used: Sequence[torch.nn.Module],
    fn: Callable[[], R],
) -> R:
    """Call ``fn()``; under FSDP1, inside the wrapped root's ``forward`` (gathers the root's weights).

    Raises:
        NoiseProbeError: under FSDP1, if a nested unit (not the root) owns
            weights of ``used``: the probe would bypass its ``forward`` and see
            only a shard. Wrap only the transformer layers then.
    """
    root = _fsdp1_root(trainer)
    if root is None or root is pl_module:
        return fn()
    from torch.distributed.fsdp import FullyShardedDataParallel

    wanted = {id(m) for m in used}
    nested = [
        name
        for name, m in root.named_modules()
        if m is not root
        and isinstance(m, FullyShardedDataParallel)
        and any(id(sub) in wanted for sub in m.module.modules())
    ]
    if nested:
        raise NoiseProbeError(
            f"Expected FSDP to wrap only the transformer layers below the root, but {nested[0]!r} also holds"
            " the LM's embeddings/heads or the codec, which the probe calls outside that unit's forward."
            " Set FSDPStrategy(auto_wrap_policy={StreamingTransformerLayer}) (audiocraft) or the decoder"
            " layer class (transformers)."
        )
    name = "_noiseprobe_in_forward"
    pl_module.__dict__[name] = fn  # a plain attribute: not a submodule, not saved
    try:
        out: Any = trainer.strategy._forward_redirection(root, pl_module, name)
        return cast(R, out)
    finally:
        pl_module.__dict__.pop(name, None)
