"""Damaged audiocraft model folders: exit 2 and one line naming the file and the actual problem."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from audio_fixtures import write_audio

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends.audiocraft import EXPORT_FILES, AudiocraftBackend

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")

LM_FILE, CODEC_FILE = EXPORT_FILES


class _RunsCode:
    """Unpickling this would run a shell command (what a hostile checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        package = torch.load(path, weights_only=True)
        change(package)
        torch.save(package, path)

    return apply


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # an interrupted download


def _random_bytes(path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    path.write_bytes(
        torch.randint(0, 256, (4096,), generator=g, dtype=torch.uint8).numpy().tobytes()
    )


def _hostile(path: Path) -> None:
    torch.save({"xp.cfg": "a: 1", "best_state": {}, "x": _RunsCode(path.with_name("ran"))}, path)


def _drop_section(package: dict) -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(package["xp.cfg"])
    del cfg["transformer_lm"]
    package["xp.cfg"] = OmegaConf.to_yaml(cfg)


def _first_tensor_resized(package: dict) -> None:
    name = next(iter(package["best_state"]))
    package["best_state"][name] = torch.zeros(3)


# case -> (file, damage, words the message must hold, run the CLI as a subprocess)
CASES = {
    "truncated": (LM_FILE, _truncate, "truncated or damaged", True),
    "empty": (LM_FILE, lambda p: p.write_bytes(b""), "empty (0 bytes)", True),
    "no-xp-cfg": (LM_FILE, _edit(lambda p: p.pop("xp.cfg")), "has no 'xp.cfg' entry", True),
    "wrong-shapes": (
        LM_FILE,
        _edit(lambda p: p["best_state"].__setitem__("emb.0.weight", torch.zeros(3, 3))),
        "size mismatch for emb.0.weight",
        True,
    ),
    "invalid-yaml": (
        LM_FILE,
        _edit(lambda p: p.__setitem__("xp.cfg", "dim: [1, 2\n  x: }")),
        "'xp.cfg' is not valid YAML",
        True,
    ),
    "random-bytes": (LM_FILE, _random_bytes, "not a torch file at all", True),
    "hostile-pickle": (LM_FILE, _hostile, "pickled Python objects (`posix.system`)", True),
    # the Python API only (the CLI path is the same call, shown above)
    "config-lacks-a-setting": (LM_FILE, _edit(_drop_section), "Missing key transformer_lm", False),
    "codec-empty": (CODEC_FILE, lambda p: p.write_bytes(b""), "empty (0 bytes)", False),
    "codec-wrong-shapes": (CODEC_FILE, _edit(_first_tensor_resized), "size mismatch", False),
}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_audio(tmp_path_factory.mktemp("folder_audio") / "clip.wav", 32000, 1, seconds=4.5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_export_file_gives_one_line_naming_file_and_problem(
    case, tiny_export_dir, clip, tmp_path
):
    filename, damage, problem, via_cli = CASES[case]
    folder = tmp_path / "model"
    folder.mkdir()
    for name in EXPORT_FILES:
        shutil.copy(tiny_export_dir / name, folder / name)
    damage(folder / filename)
    damaged = folder / filename

    with pytest.raises(NoiseProbeError) as info:  # the Python API
        AudiocraftBackend(model=str(folder)).load()
    message = str(info.value)
    assert f"'{damaged}'" in message and problem in message, message
    assert "\n" not in message and "Re-export" in message
    assert not (folder / "ran").exists()  # a hostile pickle never runs

    if via_cli:
        out = tmp_path / "out"
        command = [sys.executable, "-m", "lightning_noiseprobe.cli", "probe", "--quiet"]
        proc = subprocess.run(
            [*command, "--model", str(folder), "--audio", str(clip), "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith("noiseprobe")]
        assert lines == [f"noiseprobe: error: {message}"], proc.stderr  # the same one line
        assert not out.exists()  # nothing written
        assert not (folder / "ran").exists()
