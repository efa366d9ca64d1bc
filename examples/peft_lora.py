"""Probe a PEFT/LoRA fine-tune of MusicGen with its adapters active.

Pass the ``PeftModel`` itself: the probe unwraps it (``get_base_model()``) and keeps the
injected LoRA layers, so it scores the adapted model (the same numbers as
``merge_and_unload()``), not the base::

    metrics, result = NoiseProber("probe_clips/").probe(peft_model)

In a ``Trainer`` fine-tune the same holds for ``NoiseProbeTrainerCallback``.

    python examples/peft_lora.py [--probe-audio my_probe_clips/]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from peft import LoraConfig, get_peft_model

from lightning_noiseprobe import NoiseProber
from lightning_noiseprobe.backends.transformers import build_tiny_transformers_musicgen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probe-audio", help="folder of clean probe clips (>= 4 s each here)")
    args = parser.parse_args()
    probe_audio = args.probe_audio
    if probe_audio is None:
        from lightning_noiseprobe.data.chorales import write_chorale_dataset

        probe_audio = tempfile.mkdtemp(prefix="probe_")
        write_chorale_dataset(probe_audio, num_clips=2, seconds=5.0)
    prober = NoiseProber(
        probe_audio, unconditional=True, onset=60, lengths=(5, 20), clip_seconds=4.0
    )

    model, tokenizer = build_tiny_transformers_musicgen(seed=0)
    model.config.decoder.decoder_start_token_id = model.config.decoder.bos_token_id
    base_metrics, _ = prober.probe(model)

    # --- your LoRA fine-tune ------------------------------------------------------------
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=r".*decoder\.layers\.\d+\.self_attn\.(q_proj|v_proj)"
    )
    peft_model = get_peft_model(model, config)
    peft_model.print_trainable_parameters()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    text = tokenizer(["a Bach chorale"] * 2, return_tensors="pt")
    labels = torch.randint(0, 2048, (2, 20, 4), generator=torch.Generator().manual_seed(0))
    peft_model.train()
    for _ in range(5):
        loss = peft_model(**text, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    # --- the probe, adapters active -------------------------------------------------------
    metrics, _ = prober.probe(peft_model)
    key = "noiseprobe/clean_loss"
    print(f"base: {key}={base_metrics[key]:.5f}")
    print(
        f"LoRA: {key}={metrics[key]:.5f} noiseprobe/peak_sharpness={metrics['noiseprobe/peak_sharpness']:.4f}"
    )
    print(f"adapters active: {metrics[key] != base_metrics[key]}")


if __name__ == "__main__":
    main()
