"""Normalization over axes that are not the trailing ones (channels-first: axis 1 of NCHW).

The LayerNorm/RMSNorm rules accept any set of reduced axes, as long as mean, variance, scale and
bias agree on it (a scale of shape [C, 1, 1] on a norm over axis 1 folds; on a norm over the last
axis it does not). Standard ops and the plugin only normalize trailing axes, so lowering moves the
normalized axes last and back:

    Transpose(perm) → LayerNormalization(axis=-k) → Transpose(inverse perm)

which is also how ``nn.LayerNorm`` applied to a permuted tensor exports (timm's LayerNorm2d).
"""

from __future__ import annotations


def permutation(axes, rank: int) -> list[int] | None:
    """The perm moving ``axes`` last (keeping their order), or None when they are already last."""
    axes = sorted(a % rank for a in axes)
    if axes == list(range(rank - len(axes), rank)):
        return None
    return [i for i in range(rank) if i not in axes] + axes


def inverse(perm: list[int]) -> list[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv
