"""The tiny transformers MusicGen saved as a real Hugging Face folder.

``TransformersBackend.save`` must write a folder that transformers' own
MusicGen fine-tuning flow loads offline and unchanged: ``AutoProcessor`` (T5
tokenizer + EnCodec feature extractor), ``from_pretrained``,
``processor(text=..., audio=...)`` and a forward pass with ``labels``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_noiseprobe.backends.transformers import TransformersBackend
from lightning_noiseprobe.backends.transformers.hf_folder import tiny_t5_tokenizer

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning"),
    pytest.mark.latest,  # also in the newest-release environment (make test-latest)
]

SCRIPT = Path(__file__).parent / "hf_folder_script.py"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    backend = TransformersBackend(model="tiny", seed=0).load()
    return backend.save(tmp_path_factory.mktemp("hf") / "tiny-musicgen")


def test_folder_has_what_auto_processor_needs(folder: Path) -> None:
    from transformers import AutoFeatureExtractor

    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    # transformers 4 writes the feature extractor to preprocessor_config.json, 5 nests it
    # in processor_config.json: read it back as AutoProcessor does, whichever it is
    assert {"preprocessor_config.json", "processor_config.json"} & names
    features = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
    assert type(features).__name__ == "EncodecFeatureExtractor"
    assert (features.sampling_rate, features.feature_size) == (32000, 1)
    config = json.loads((folder / "config.json").read_text())
    assert config["audio_encoder"]["_name_or_path"] == str(folder.resolve())
    assert config["decoder"]["decoder_start_token_id"] == 2048


def test_fine_tuning_flow_loads_the_folder_offline(folder: Path, tmp_path: Path) -> None:
    """A fresh process, offline, with an empty Hugging Face home: nothing may download."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "empty_hf_home"),
    }
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["processor"] == "MusicgenProcessor"
    assert out["tokenizer_is_t5_fast"]  # T5TokenizerFast (transformers 5: its alias T5Tokenizer)
    assert out["feature_extractor"] == "EncodecFeatureExtractor"
    # "calm piano" -> two words + </s>, padded with <pad> (0) to the longer text
    ids = out["input_ids"]
    assert ids[0][:3] == tiny_t5_tokenizer()("calm piano")["input_ids"] and ids[0][3:] == [0] * 5
    assert ids[1][-1] == 1 and 0 not in ids[1]
    assert out["input_values"] == [2, 1, 16000]  # padded to the longer clip (0.5 s at 32 kHz)
    assert out["labels"] == [2, 25, 4]  # 0.5 s at 50 Hz, 4 codebooks
    assert 0 < out["loss"] < 20


def test_backend_reads_its_folder_with_the_t5_tokenizer(folder: Path) -> None:
    loaded = TransformersBackend(model=str(folder)).load()
    from transformers import T5TokenizerFast

    assert isinstance(loaded.tokenizer, T5TokenizerFast) and loaded.tokenizer.is_fast
    codes = torch.randint(0, 2048, (2, 4, 30), generator=torch.Generator().manual_seed(0))
    tiny = TransformersBackend(model="tiny", seed=0).load()
    with torch.no_grad():
        for desc in (None, ["calm piano", None]):
            assert torch.equal(loaded.token_nll(codes, desc)[0], tiny.token_nll(codes, desc)[0])


def test_tiny_tokenizer_is_offline_and_deterministic() -> None:
    a, b = tiny_t5_tokenizer(), tiny_t5_tokenizer()
    text = ["Bach chorale, slow organ!", "calm piano", ""]
    assert a(text)["input_ids"] == b(text)["input_ids"]
    ids = a("Bach chorale, slow organ!")["input_ids"]
    assert a.unk_token_id not in ids and ids[-1] == a.eos_token_id
    assert max(max(x) for x in a(text)["input_ids"]) < 384  # fits the tiny T5's embedding
