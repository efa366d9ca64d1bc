"""Training checkpoints as models to probe: finding them, their place in training, loading them.

Four kinds, all read with torch's safe ``weights_only=True`` (never ``False``: a checkpoint
could run code):

* ``lightning``: a ``.ckpt`` file of :class:`~lightning_noiseprobe.module.MusicGenLightningModule`
  as ``ModelCheckpoint`` writes it. The model is built from its ``hyper_parameters``
  (``backend``, ``model``, ``seed``, ``tiny_config``: the model it was fine-tuned from must
  load here) and its ``state_dict`` is loaded into it; step and epoch are its own
  ``global_step`` and ``epoch``.
* ``transformers``: a ``save_pretrained`` folder, e.g. a transformers ``Trainer``'s ``checkpoint-N``;
* ``peft``: a PEFT adapter folder (``adapter_config.json``), loaded onto a ``base`` model;
* ``audiocraft``: an audiocraft export folder (``state_dict.bin``, ``compression_state_dict.bin``).

A folder's step and epoch come from the ``trainer_state.json`` a ``Trainer`` writes into it,
else from its name (``checkpoint-400``, ``step=400``, ``epoch3``), as do a ``.ckpt`` file's
when it records none.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError

if TYPE_CHECKING:
    from lightning_noiseprobe.backends.base import ProbeBackend

__all__ = [
    "CHECKPOINT_KINDS",
    "Checkpoint",
    "CheckpointLoader",
    "checkpoint_kind",
    "find_checkpoints",
    "read_checkpoint",
]

#: The kinds of checkpoint, and the backend that loads each.
CHECKPOINT_KINDS = {
    "lightning": None,  # the backend its hyper_parameters name
    "transformers": "transformers",
    "peft": "transformers",
    "audiocraft": "audiocraft",
}
#: The file a transformers ``Trainer`` writes into each ``checkpoint-N`` folder.
TRAINER_STATE = "trainer_state.json"
#: The hyper-parameters of MusicGenLightningModule that decide the model's architecture.
_MODEL_HPARAMS = ("backend", "model", "seed", "tiny_config")

_STEP_IN_NAME = re.compile(r"(?:global[_-]?)?step[=_-]?(\d+)|checkpoint[=_-](\d+)", re.IGNORECASE)
_EPOCH_IN_NAME = re.compile(r"epoch[=_-]?(\d+)", re.IGNORECASE)


@dataclass
class Checkpoint:
    """One checkpoint and its place in training.

    Attributes:
        path: the ``.ckpt`` file or the folder.
        kind: one of :data:`CHECKPOINT_KINDS`.
        step: the training (optimizer) step it was saved at, ``None`` if unknown.
        epoch: its epoch (an ``int``; a transformers ``Trainer``'s is fractional), ``None`` if unknown.
        origin: where ``step``/``epoch`` come from: ``"checkpoint"``, ``"trainer_state.json"``,
            ``"name"`` or ``"none"``.
        hparams: for ``lightning``: the hyper-parameters that decide the architecture.
        logged: for ``lightning``: the entries of the probe callbacks' ``history`` saved in
            it, by callback state key (what the live callback measured).
    """

    path: Path
    kind: str
    step: int | None = None
    epoch: float | None = None
    origin: str = "none"
    hparams: dict[str, Any] = field(default_factory=dict)
    logged: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    def identity(self) -> list[Any]:
        """What changes when the checkpoint is rewritten: its real path and, per file, the
        name, size and modification time (a folder's files, recursively)."""
        real = Path(os.path.realpath(self.path))
        files = [real] if real.is_file() else sorted(p for p in real.rglob("*") if p.is_file())
        stats = []
        for f in files:
            st = f.stat()
            stats.append(
                [str(f.relative_to(real)) if f != real else "", st.st_size, st.st_mtime_ns]
            )
        return [str(real), self.kind, stats]


# ----------------------------------------------------------------------------- discovery
def checkpoint_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind of checkpoint at ``path`` (a file is taken as a Lightning ``.ckpt``), or ``None``."""
    from lightning_noiseprobe.backends.adapters import is_adapter_folder
    from lightning_noiseprobe.backends.audiocraft.export import EXPORT_FILES
    from lightning_noiseprobe.backends.transformers.export import CONFIG_FILE

    p = Path(path)
    if p.is_file():
        return "lightning"
    if not p.is_dir():
        return None
    if is_adapter_folder(p):
        return "peft"
    if (p / CONFIG_FILE).is_file():
        return "transformers"
    if (p / EXPORT_FILES[0]).is_file():
        return "audiocraft"
    return None


def _natural_key(name: str) -> list[Any]:
    """``epoch10`` after ``epoch9``: digits compare as numbers."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)
    ]


def _candidates(path: Path) -> list[tuple[Path, str]]:
    """The checkpoints a command-line PATH names: itself, or its children."""
    from lightning_noiseprobe._io import path_kind

    kind = checkpoint_kind(path)
    if kind is not None:
        return [(path, kind)]
    if not path.is_dir():
        what = path_kind(path)
        state = "does not exist" if what == "missing" else f"is {what}"
        raise NoiseProbeError(
            f"Expected a checkpoint (a Lightning .ckpt file, a transformers or PEFT checkpoint folder,"
            f" an audiocraft export folder) or a folder of them but '{path}' {state}."
        )
    found = []
    for child in sorted(path.iterdir(), key=lambda p: _natural_key(p.name)):
        if child.is_file() and child.suffix == ".ckpt":
            found.append((child, "lightning"))
        elif child.is_dir() and (child_kind := checkpoint_kind(child)) is not None:
            found.append((child, child_kind))
    if not found:
        raise NoiseProbeError(
            f"Expected checkpoints in folder '{path}' (Lightning .ckpt files, transformers"
            " checkpoint-N or PEFT adapter folders, audiocraft export folders) but found none."
        )
    return found


def find_checkpoints(
    paths: Iterable[str | os.PathLike[str]], *, strict: bool = False
) -> tuple[list[Checkpoint], list[dict[str, str]]]:
    """The checkpoints named by ``paths`` (each a checkpoint or a folder of them), in training
    order, and those skipped, as ``{"path", "reason"}``.

    Order: by step, then epoch, then name (natural order: ``epoch10`` after ``epoch9``);
    checkpoints with no known step come last. A checkpoint that cannot be read is skipped
    with the reason (``strict``: raised). Two Lightning checkpoints of one training step
    (``last.ckpt`` beside its epoch's checkpoint) are one: the one not named ``last*`` is kept.

    Raises:
        NoiseProbeError: a path that is no checkpoint nor holds one; with ``strict``, a
            checkpoint that cannot be read.
    """
    checkpoints: list[Checkpoint] = []
    skipped: list[dict[str, str]] = []
    seen: set[str] = set()
    for given in paths:
        for path, kind in _candidates(Path(given)):
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            try:
                checkpoints.append(read_checkpoint(path, kind))
            except NoiseProbeError as err:
                if strict:
                    raise
                skipped.append({"path": str(path), "reason": str(err)})
    checkpoints.sort(
        key=lambda c: (
            c.step is None,
            c.step or 0,
            c.epoch is None,
            c.epoch or 0,
            c.name.startswith("last"),
            _natural_key(c.name),
        )
    )
    kept: list[Checkpoint] = []
    for ckpt in checkpoints:
        twin = next(
            (
                k
                for k in kept
                if k.kind == ckpt.kind == "lightning"
                and k.step is not None
                and (k.step, k.epoch) == (ckpt.step, ckpt.epoch)
            ),
            None,
        )
        if twin is not None:
            skipped.append(
                {
                    "path": str(ckpt.path),
                    "reason": f"the same training step ({ckpt.step}, epoch {ckpt.epoch}) as"
                    f" '{twin.path}', scored once",
                }
            )
            continue
        kept.append(ckpt)
    return kept, skipped


# ----------------------------------------------------------------------------- metadata
def _from_name(name: str) -> tuple[int | None, int | None]:
    step = _STEP_IN_NAME.search(name)
    epoch = _EPOCH_IN_NAME.search(name)
    return (
        None if step is None else int(step.group(1) or step.group(2)),
        None if epoch is None else int(epoch.group(1)),
    )


def read_checkpoint(path: str | os.PathLike[str], kind: str | None = None) -> Checkpoint:
    """A :class:`Checkpoint` with its step and epoch (no weights are read but a ``.ckpt``'s
    header, through ``mmap``).

    Raises:
        NoiseProbeError: the file cannot be read safely, or is not a checkpoint of
            ``MusicGenLightningModule``; a folder's ``trainer_state.json`` is unreadable.
    """
    path = Path(path)
    kind = kind or checkpoint_kind(path)
    if kind not in CHECKPOINT_KINDS:
        raise NoiseProbeError(
            f"Expected a checkpoint (a Lightning .ckpt file, a transformers or PEFT checkpoint"
            f" folder, an audiocraft export folder) but '{path}' is none of them."
        )
    step, epoch_in_name = _from_name(path.stem if kind == "lightning" else path.name)
    epoch: float | None = epoch_in_name
    origin = "name" if step is not None or epoch is not None else "none"
    if kind == "lightning":
        with lightning_checkpoint(path) as ckpt:
            hparams = _module_hparams(path, ckpt)
            logged = {
                key: [dict(h) for h in state["history"]]
                for key, state in (ckpt.get("callbacks") or {}).items()
                if isinstance(state, dict) and isinstance(state.get("history"), list)
            }
            if isinstance(ckpt.get("global_step"), int):
                step, origin = int(ckpt["global_step"]), "checkpoint"
                epoch = int(ckpt["epoch"]) if isinstance(ckpt.get("epoch"), int) else epoch
        return Checkpoint(path, kind, step, epoch, origin, hparams, logged)
    state_file = path / TRAINER_STATE
    if state_file.is_file():
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
            step, epoch = int(state["global_step"]), state.get("epoch")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise NoiseProbeError(
                f"Expected '{state_file}' to be a transformers trainer state (JSON with"
                f" 'global_step') but reading it failed ({type(err).__name__}: {err})."
            ) from err
        epoch = None if epoch is None else float(epoch)
        origin = TRAINER_STATE
    return Checkpoint(path, kind, step, epoch, origin)


#: How ``torch.save``'s legacy (pre-zip) format begins.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


@contextlib.contextmanager
def lightning_checkpoint(path: Path) -> Iterator[dict[str, Any]]:
    """A ``.ckpt`` file loaded with ``weights_only=True`` (memory-mapped: tensors are read when
    used), as a dict with a ``state_dict``; released on exit.

    Raises:
        NoiseProbeError: naming the file: empty, truncated, not a torch file, holding pickled
            objects (refused: they could run code), or not a Lightning checkpoint.
    """

    def problem(text: str) -> NoiseProbeError:
        return NoiseProbeError(
            f"Expected '{path}' to be a Lightning checkpoint of MusicGenLightningModule (a .ckpt"
            f" file as ModelCheckpoint writes it) but {text}."
        )

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(len(_TORCH_LEGACY_MAGIC))
        is_zip = zipfile.is_zipfile(path)
    except OSError as err:
        raise problem(f"it cannot be read ({err.strerror or err})") from err
    if size == 0:
        raise problem("it is empty (0 bytes)")
    if not is_zip and head.startswith(b"PK"):
        raise problem(f"it is truncated or damaged (a zip archive of {size} bytes without its end)")
    if not is_zip and not head.startswith(_TORCH_LEGACY_MAGIC):
        raise problem(f"it is not a torch file ({size} bytes starting with {head[:8].hex(' ')})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as err:
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" (`{refused.group(1)}`)" if refused else ""
        raise problem(
            f"it holds pickled Python objects{what} that torch's safe `weights_only=True` loading"
            " refuses (they could run code). Save plain values (numbers, strings, lists, dicts) as"
            " hyper-parameters, or load it in a trusted session and save its `state_dict` again"
        ) from err
    except Exception as err:  # damaged archive members
        from lightning_noiseprobe.backends._common import one_line

        raise problem(
            f"torch.load cannot read it ({type(err).__name__}: {one_line(str(err))})"
        ) from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        keys = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise problem(f"it holds no 'state_dict' (it holds {keys})")
    try:
        yield ckpt
    finally:
        del ckpt


def _module_hparams(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """The architecture hyper-parameters of a MusicGenLightningModule checkpoint."""
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or not {"backend", "model"} <= set(hparams):
        found = sorted(hparams) if isinstance(hparams, dict) else "none"
        raise NoiseProbeError(
            f"Expected '{path}' to be a checkpoint of MusicGenLightningModule, whose"
            f" hyper_parameters name its 'backend' and 'model', but its hyper_parameters are"
            f" {found}. Probe your own module's weights in Python (NoiseProber) instead."
        )
    out = {k: hparams.get(k) for k in _MODEL_HPARAMS}
    out["seed"] = int(out["seed"] or 0)
    out["tiny_config"] = dict(out["tiny_config"] or {})
    return out


# ----------------------------------------------------------------------------- loading
class CheckpointLoader:
    """Loads checkpoints one at a time, holding at most one model.

    Lightning checkpoints of one architecture load into the same model, in place (every
    parameter and buffer is overwritten: ``load_state_dict(strict=True)``); any other
    checkpoint replaces the model held, which is released first.

    Args:
        device: where the model runs.
        base: the base model of PEFT adapter folders (a ``save_pretrained`` folder or hub id).
    """

    def __init__(self, device: str | torch.device = "cpu", base: str | None = None) -> None:
        self.device = device
        self.base = base
        self._held: tuple[Any, ProbeBackend] | None = None

    def release(self) -> None:
        """Drop the model held (its memory is freed once nothing else refers to it)."""
        self._held = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def load(self, ckpt: Checkpoint) -> ProbeBackend:
        """The model of ``ckpt``, loaded, in eval mode, on :attr:`device`.

        Raises:
            NoiseProbeError: naming the checkpoint, for anything that fails.
        """
        try:
            if ckpt.kind == "lightning":
                return self._load_lightning(ckpt)
            self.release()
            backend = _load_folder(ckpt, self.device, self.base)
        except NoiseProbeError:
            raise
        except Exception as err:  # the libraries' own errors on damaged files
            from lightning_noiseprobe.backends._common import one_line

            self.release()
            raise NoiseProbeError(
                f"Expected the {ckpt.kind} checkpoint '{ckpt.path}' to load but it failed"
                f" ({type(err).__name__}: {one_line(str(err))})."
            ) from err
        backend.lm.eval()
        self._held = (("folder", str(ckpt.path)), backend)
        return backend

    def _load_lightning(self, ckpt: Checkpoint) -> ProbeBackend:
        from lightning_noiseprobe.backends.base import get_backend

        key = ("lightning", json.dumps(ckpt.hparams, sort_keys=True, default=str))
        if self._held is None or self._held[0] != key:
            self.release()
            hp = ckpt.hparams
            try:
                backend = get_backend(
                    hp["backend"],
                    model=hp["model"],
                    device=self.device,
                    seed=hp["seed"],
                    tiny_config=hp["tiny_config"],
                ).load()
            except NoiseProbeError as err:
                raise NoiseProbeError(
                    f"Expected the model that '{ckpt.path}' was fine-tuned from (its hyper_parameters:"
                    f" backend {hp['backend']!r}, model {hp['model']!r}) to load here, to take its"
                    f" weights, but it did not: {err}"
                ) from err
            self._held = (key, backend)
        backend = self._held[1]
        with lightning_checkpoint(ckpt.path) as loaded:
            state = loaded["state_dict"]
            parts = {"lm": backend.lm, "codec": backend.codec}
            try:
                for prefix, module in parts.items():
                    own = {
                        k[len(prefix) + 1 :]: v
                        for k, v in state.items()
                        if k.startswith(prefix + ".")
                    }
                    module.load_state_dict(own, strict=True)
            except RuntimeError as err:
                from lightning_noiseprobe.backends._common import one_line

                self.release()  # partly overwritten: never reuse it
                raise NoiseProbeError(
                    f"Expected the weights of '{ckpt.path}' to fit the model its hyper_parameters"
                    f" describe (backend {ckpt.hparams['backend']!r}, model {ckpt.hparams['model']!r})"
                    f" but they do not ({one_line(str(err))})."
                ) from err
        backend.lm.eval()
        return backend


def _load_folder(ckpt: Checkpoint, device: str | torch.device, base: str | None) -> ProbeBackend:
    from lightning_noiseprobe.backends.adapters import adapter_folder_message
    from lightning_noiseprobe.backends.base import get_backend

    name = CHECKPOINT_KINDS[ckpt.kind]
    assert name is not None
    extra: dict[str, Any] = {}
    if ckpt.kind == "peft":
        if base is None:
            raise NoiseProbeError(adapter_folder_message(ckpt.path, "transformers"))
        extra["base"] = base
    return get_backend(name, model=str(ckpt.path), device=device, **extra).load()
