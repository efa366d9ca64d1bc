"""Comparing codec codes from two code paths (or two machines) without asserting bit-equality.

Why codes may legitimately differ: an RVQ codec picks, for each frame and codebook,
the codeword nearest to the residual latent. Two code paths that compute the same
latent with differently ordered float32 sums (oneDNN's LSTM *training* vs
*inference* kernel, chosen by PyTorch's grad mode; a 1x1 convolution that runs
oneDNN with several threads and im2col+GEMM with one; another batch size; another
CPU's vector width) give latents that differ by about one ulp (4e-8 on the tiny
codec's ~0.16 latents). Where a frame's two nearest codewords are that close to
equidistant (a near-tie), the choice flips, and every later codebook of the frame
follows a different residual. Anything else (wrong preprocessing, padding, dtype,
normalisation, weights) changes codes far from ties, and is caught.

Usage::

    from codec_helpers import assert_codes_match
    assert_codes_match(actual, expected, codec=backend.codec, wav=wav)
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["MAX_DIFFERING_FRAMES", "NEAR_TIE_REL", "assert_codes_match", "codebooks_and_latents"]

#: A differing code must be a near-tie: for the reference residual ``r`` the two
#: codewords' squared distances differ by at most this fraction of ``|x|^2``, ``x``
#: the frame's latent. The quantizer computes ``|r|^2 - 2 r.e + |e|^2`` in float32,
#: so one-ulp noise in the latent (1e-7 relative) moves the compared distances by
#: about 1e-7 |x|^2; the flip seen on AMD EPYC (grad vs no-grad LSTM kernels) had a
#: gap of 4e-7 |x|^2, and 1e-5 leaves a 25x margin while only ~4% of the tiny
#: codec's choices on noise are that close (the median gap is 3e-3 |x|^2).
NEAR_TIE_REL = 1e-5

#: At most this fraction of frames may differ at all (a sanity cap: each of them
#: must also pass the near-tie check).
MAX_DIFFERING_FRAMES = 0.05


def codebooks_and_latents(codec: Any, wav: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``([bins, D] per codebook, latents [B, D, T])`` of an audiocraft or transformers EnCodec.

    The latents are computed under ``torch.no_grad()``, as both backends tokenize.
    """
    quantizer = codec.quantizer
    if hasattr(quantizer, "vq"):  # audiocraft ResidualVectorQuantizer
        books = [layer._codebook.embed for layer in quantizer.vq.layers]
    else:  # transformers EncodecResidualVectorQuantizer
        books = [layer.codebook.embed for layer in quantizer.layers]
    device = next(codec.parameters()).device
    with torch.no_grad():
        latents = codec.encoder(wav.to(device, torch.float32))
    return [b.detach().double().cpu() for b in books], latents.double().cpu()


def assert_codes_match(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    codec: Any,
    wav: torch.Tensor,
    near_tie_rel: float = NEAR_TIE_REL,
    max_differing_frames: float = MAX_DIFFERING_FRAMES,
) -> int:
    """Assert that ``actual`` equals ``expected`` ``[B, K, T]`` up to quantizer near-ties.

    ``expected`` are the codes of ``wav`` by ``codec`` (the reference path). For every
    frame where the codes differ, the first differing codebook must be a near-tie for
    the reference residual (see :data:`NEAR_TIE_REL`); later codebooks of that frame
    are free (their residual differs). At most :data:`MAX_DIFFERING_FRAMES` of the
    frames may differ. Returns the number of differing frames.
    """
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    actual, expected = actual.long().cpu(), expected.long().cpu()
    frames = (actual != expected).any(dim=1)  # [B, T]
    n_diff = int(frames.sum())
    if n_diff == 0:
        return 0
    total = frames.numel()
    assert n_diff <= max_differing_frames * total, (
        f"{n_diff} of {total} frames have different codes (more than "
        f"{max_differing_frames:.0%}): not near-tie rounding"
    )
    books, latents = codebooks_and_latents(codec, wav)
    assert latents.shape[-1] == expected.shape[-1], (tuple(latents.shape), tuple(expected.shape))
    for b, t in frames.nonzero().tolist():
        residual = latents[b, :, t]
        scale = float(residual.pow(2).sum())
        for k, book in enumerate(books):
            want, got = int(expected[b, k, t]), int(actual[b, k, t])
            if want != got:
                gap = abs(
                    float(
                        (residual - book[got]).pow(2).sum() - (residual - book[want]).pow(2).sum()
                    )
                )
                assert gap <= near_tie_rel * scale, (
                    f"frame {t} of item {b}, codebook {k}: code {got} instead of {want} is not a "
                    f"near-tie (squared-distance gap {gap:.3g} > {near_tie_rel:g} x |x|^2 = "
                    f"{near_tie_rel * scale:.3g})"
                )
                break
            residual = residual - book[want]
    return n_diff
