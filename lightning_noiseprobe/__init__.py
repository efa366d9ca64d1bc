"""lightning-noiseprobe."""
