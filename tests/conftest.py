"""Shared fixtures. The tiny MusicGen builds offline in well under a second
(after audiocraft's ~15 s import), so tests that change weights should build
their own with ``AudiocraftBackend("tiny").load()`` rather than mutate the
shared one."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_noiseprobe.backends.audiocraft import (
    AudiocraftBackend,
    build_tiny_musicgen,
    save_audiocraft_export,
)

TINY_SEED = 0


@pytest.fixture(scope="session")
def tiny_backend() -> AudiocraftBackend:
    """A loaded tiny audiocraft MusicGen on CPU (float32, eval mode, seed 0). Do not mutate."""
    return AudiocraftBackend(model="tiny", device="cpu", seed=TINY_SEED).load()


@pytest.fixture(scope="session")
def tiny_export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the seed-0 tiny MusicGen in audiocraft's export format
    (``state_dict.bin``, ``compression_state_dict.bin``)."""
    folder = tmp_path_factory.mktemp("tiny_musicgen_export")
    return save_audiocraft_export(build_tiny_musicgen(seed=TINY_SEED), folder)
