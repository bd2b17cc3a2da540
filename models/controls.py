"""Negative controls: models that break layer normalization's promises on purpose.

``batchnorm_encoder`` normalizes with batch statistics (BatchNorm without running statistics), so a
sample's output depends on the other samples in its batch: ``ln-deploy check`` must fail its
batch-independence check.
"""

import torch
from torch import nn

from _layers import MLP

D = 64


class BatchNormBlock(nn.Module):
    def __init__(self, dim=D):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, track_running_stats=False)
        self.mlp = MLP(dim, 2 * dim)

    def forward(self, x):  # x: [batch, seq, dim]; BatchNorm1d wants channels on axis 1
        return x + self.mlp(self.norm(x.transpose(1, 2)).transpose(1, 2))


def batchnorm_encoder():
    torch.manual_seed(0)
    return BatchNormBlock().eval(), (torch.randn(4, 8, D),)
