"""Load a saved tiny MusicGen folder the way transformers' MusicGen fine-tuning does (run as a script).

``python hf_folder_script.py FOLDER``: ``AutoProcessor`` + ``from_pretrained``,
``processor(text=..., audio=...)``, the codec's codes as labels, a forward
pass with ``labels``; prints one JSON line. Meant to run offline
(``HF_HUB_OFFLINE=1``) in a fresh process, with nothing of this package imported.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from transformers import (
    AutoFeatureExtractor,
    AutoProcessor,
    MusicgenForConditionalGeneration,
    T5TokenizerFast,
)


def main(folder: str) -> None:
    processor = AutoProcessor.from_pretrained(folder)
    model = MusicgenForConditionalGeneration.from_pretrained(folder)
    sr = processor.feature_extractor.sampling_rate
    rng = np.random.default_rng(0)
    audio = [0.1 * rng.standard_normal(int(0.5 * sr)), 0.1 * rng.standard_normal(int(0.3 * sr))]
    inputs = processor(
        text=["calm piano", "a bach chorale on the organ"],
        audio=audio,
        sampling_rate=sr,
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        codes = model.audio_encoder.encode(
            inputs["input_values"], inputs["padding_mask"]
        ).audio_codes
        labels = codes[0].transpose(1, 2)  # [B, T, K], as the fine-tuning example feeds them
        out = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels
        )
    codec_name = model.config.audio_encoder._name_or_path
    print(
        json.dumps(
            {
                "processor": type(processor).__name__,
                "tokenizer_is_t5_fast": isinstance(processor.tokenizer, T5TokenizerFast)
                and processor.tokenizer.is_fast,
                "feature_extractor": type(
                    AutoFeatureExtractor.from_pretrained(codec_name)
                ).__name__,
                "input_ids": inputs["input_ids"].tolist(),
                "input_values": list(inputs["input_values"].shape),
                "labels": list(labels.shape),
                "loss": float(out.loss),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
