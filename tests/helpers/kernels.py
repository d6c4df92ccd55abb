# SPDX-License-Identifier: Apache-2.0
"""Shared helpers of the kernel tests: inputs, tolerances, verbose comparisons."""

from __future__ import annotations

import torch

#: (atol, rtol) of S_cross per input dtype. The oracle casts inputs to fp32 too, so the only
#: difference is the fp32 summation order (and 3xTF32 on GPU for fp32 inputs).
TOLERANCES = {
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-4, 1e-4),
    torch.bfloat16: (2e-4, 1e-4),
}


def make_item(n_visual: int, n_text: int, dim: int, dtype: torch.dtype, seed: int, device: str):
    """Random visual/text embeddings, generated on CPU in fp32 (same values on every device)."""
    g = torch.Generator().manual_seed(seed)
    visual = torch.randn(n_visual, dim, generator=g).to(dtype).to(device)
    text = torch.randn(n_text, dim, generator=g).to(dtype).to(device)
    return visual, text


def assert_close_verbose(
    actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float
) -> None:
    """allclose that reports how many and which elements differ, and by how much."""
    actual, expected = actual.detach().cpu().float(), expected.detach().cpu().float()
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    bad = ~torch.isclose(actual, expected, atol=atol, rtol=rtol)
    if bad.any():
        where = bad.nonzero().flatten()[:8].tolist()
        diff = (actual - expected).abs().max().item()
        raise AssertionError(
            f"{int(bad.sum())}/{bad.numel()} elements differ (max abs diff {diff:.3g}, "
            f"atol {atol}, rtol {rtol}); first at {where}: {actual[where].tolist()} "
            f"vs {expected[where].tolist()}"
        )


def assert_same_topk(
    kept: torch.Tensor, ref_scores: torch.Tensor, ref_kept: torch.Tensor, k: int, atol: float
) -> None:
    """Kept sets equal; if the oracle's k-th and (k+1)-th scores are closer than ``atol`` (a near
    tie that fp32 rounding may flip), only require a valid top-k of the oracle's scores."""
    kept, ref_scores, ref_kept = kept.cpu(), ref_scores.cpu(), ref_kept.cpu()
    assert kept.dtype == torch.int64 and kept.numel() == k
    assert torch.all(kept[1:] > kept[:-1]), "indices not strictly ascending"
    ordered = torch.sort(ref_scores, descending=True).values
    if k < ref_scores.numel() and (ordered[k - 1] - ordered[k]).abs() <= atol:
        assert ref_scores[kept].min() >= ordered[k - 1] - atol
        return
    assert torch.equal(kept, ref_kept), f"kept {kept.tolist()} != oracle {ref_kept.tolist()}"
