"""Probe a plain PyTorch / accelerate training loop with ``NoiseProber``.

Build the prober once; call it with your model (wrapped by accelerate/DDP/PEFT or not)
whenever you want a probe. It runs under ``no_grad`` in eval mode, restores every
module's train/eval flag and the global RNGs, so training is unchanged::

    prober = NoiseProber("probe_clips/", lengths=(5, 50, 200))
    metrics, result = prober.probe(model)   # {"noiseprobe/peak_sharpness": ...}, ProbeResult

Accepted models: audiocraft ``MusicGen``, transformers ``MusicgenForConditionalGeneration``,
or a backend (``AudiocraftBackend.from_model(musicgen)``, ``TransformersBackend.from_model(model)``).
Under ``torch.distributed`` pass ``world_size=``, ``rank=`` and ``all_gather=``
(e.g. ``lightning_noiseprobe.probe.engine.torch_all_gather``) to shard the clips.

    python examples/plain_loop.py [--probe-audio my_probe_clips/]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from accelerate import Accelerator

from lightning_noiseprobe import NoiseProber
from lightning_noiseprobe.backends.transformers import build_tiny_transformers_musicgen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probe-audio", help="folder of clean probe clips (>= 4 s each here)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    probe_audio = args.probe_audio
    if probe_audio is None:
        from lightning_noiseprobe.data.chorales import write_chorale_dataset

        probe_audio = tempfile.mkdtemp(prefix="probe_")
        write_chorale_dataset(probe_audio, num_clips=2, seconds=5.0)

    # --- your loop -------------------------------------------------------------------
    accelerator = Accelerator(cpu=True)
    model, tokenizer = build_tiny_transformers_musicgen(seed=0)
    model.config.decoder.decoder_start_token_id = model.config.decoder.bos_token_id
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=3e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    text = tokenizer(["a Bach chorale"] * 2, return_tensors="pt")
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 2048, (2, 20, 4), generator=g) for _ in range(3)]

    # --- the probe: built once (a short spec, so that this example runs in seconds) ----
    prober = NoiseProber(
        probe_audio, unconditional=True, onset=60, lengths=(5, 20), clip_seconds=4.0
    )

    for epoch in range(args.epochs):
        model.train()
        for labels in batches:
            loss = model(**text, labels=labels).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        metrics, result = prober.probe(model)
        print(
            f"epoch {epoch}: train_loss={loss.item():.4f}"
            f" noiseprobe/peak_sharpness={metrics['noiseprobe/peak_sharpness']:.4f}"
            f" noiseprobe/clean_loss={metrics['noiseprobe/clean_loss']:.4f}"
            f" ({len(result.clip_names)} clips)"
        )


if __name__ == "__main__":
    main()
