"""SPECs for the deploy tests that nobody here wrote the architecture of: PyTorch's own
``nn.TransformerEncoder`` (pre-norm), as a user's SPEC file would write it."""

import torch
from torch import nn


def torch_encoder():
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True,
                                       norm_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, norm=nn.LayerNorm(32), enable_nested_tensor=False)
    return model, (torch.randn(2, 8, 32),)
