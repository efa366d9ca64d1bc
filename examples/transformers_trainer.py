"""Probe a Hugging Face ``Trainer`` fine-tune of MusicGen after every evaluation: one line.

    trainer.add_callback(NoiseProbeTrainerCallback(probe_audio="probe_clips/"))

The metrics join the evaluation's: ``eval_noiseprobe/<metric>`` in
``trainer.state.log_history`` and every ``report_to`` logger, and
``metric_for_best_model="noiseprobe/peak_sharpness"`` (the Trainer adds ``eval_``)
ranks checkpoints by them. Here the model is the tiny offline MusicGen; for real
weights use ``MusicgenForConditionalGeneration.from_pretrained("facebook/musicgen-small")``
and its ``AutoProcessor``.

    python examples/transformers_trainer.py --probe-audio my_probe_clips/
    python examples/transformers_trainer.py            # renders 2 chorales as probe clips
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import Trainer, TrainingArguments

from lightning_noiseprobe import NoiseProbeTrainerCallback
from lightning_noiseprobe.backends.transformers import build_tiny_transformers_musicgen


def code_dataset(model, tokenizer, n: int = 8, frames: int = 20) -> list[dict[str, torch.Tensor]]:
    """Stands for your dataset: text tokens and ``[frames, K]`` code labels."""
    g = torch.Generator().manual_seed(0)
    text = tokenizer(["a Bach chorale on the organ"], return_tensors="pt")
    k = model.config.decoder.num_codebooks
    return [
        {
            "input_ids": text["input_ids"][0],
            "attention_mask": text["attention_mask"][0],
            "labels": torch.randint(0, 2048, (frames, k), generator=g),
        }
        for _ in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probe-audio", help="folder of clean probe clips (>= 4 s each here)")
    parser.add_argument("--out", default=None, help="Trainer output_dir (default: a temp dir)")
    args = parser.parse_args()
    probe_audio = args.probe_audio
    if probe_audio is None:
        from lightning_noiseprobe.data.chorales import write_chorale_dataset

        probe_audio = tempfile.mkdtemp(prefix="probe_")
        write_chorale_dataset(probe_audio, num_clips=2, seconds=5.0)

    # --- your training script, unchanged --------------------------------------------
    model, tokenizer = build_tiny_transformers_musicgen(seed=0)
    # `labels` need it to build the decoder inputs (the hub configs have it)
    model.config.decoder.decoder_start_token_id = model.config.decoder.bos_token_id
    data = code_dataset(model, tokenizer)
    training_args = TrainingArguments(
        output_dir=args.out or tempfile.mkdtemp(prefix="trainer_"),
        max_steps=4,
        per_device_train_batch_size=2,
        learning_rate=3e-3,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="noiseprobe/peak_sharpness",  # rank checkpoints by the probe
        greater_is_better=True,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=data, eval_dataset=data[:2])

    # --- the probe: one line (a short spec, so that this example runs in seconds) ------
    trainer.add_callback(
        NoiseProbeTrainerCallback(
            probe_audio=probe_audio,
            processor=tokenizer,
            onset=60,
            lengths=(5, 20),
            clip_seconds=4.0,
        )
    )

    trainer.train()
    for entry in trainer.state.log_history:
        if "eval_noiseprobe/peak_sharpness" in entry:
            print(
                f"step {entry['step']}: eval_loss={entry['eval_loss']:.4f}"
                f" eval_noiseprobe/peak_sharpness={entry['eval_noiseprobe/peak_sharpness']:.4f}"
                f" eval_noiseprobe/delta_loss={entry['eval_noiseprobe/delta_loss']:+.4f}"
            )
    print(f"best checkpoint by noiseprobe/peak_sharpness: {trainer.state.best_model_checkpoint}")


if __name__ == "__main__":
    main()
