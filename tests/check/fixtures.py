"""Models that break one invariance on purpose (negative controls for the check's own tests)."""

import torch
from torch import nn

D = 16


class LeakyPaddingEncoder(nn.Module):
    """Claims a padding mask but averages over every position, padded ones included."""

    padding_mask_input = "mask"

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(D)
        self.proj = nn.Linear(D, D)

    def forward(self, x, mask):
        ctx = x.mean(1, keepdim=True)  # ignores the mask: padding leaks into every position
        return self.norm(self.proj(x + ctx)) * mask[..., None]


class FalselyCausal(nn.Module):
    """Marked causal, but each position sees the sequence's mean (the future included)."""

    causal = True

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(D)

    def forward(self, x):
        return self.norm(x + x.mean(1, keepdim=True))


class TrainingBranchNorm(nn.Module):
    """A hand-written norm with its own ``if self.training`` branch (batch statistics in training,
    stored ones in eval): nothing train_eval holds in eval, so train() and eval() differ."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.full((D,), 0.5))
        self.register_buffer("var", torch.full((D,), 2.0))

    def forward(self, x):
        if self.training:
            mean, var = x.mean((0, 1)), x.var((0, 1), unbiased=False)
        else:
            mean, var = self.mean, self.var
        return (x - mean) / torch.sqrt(var + 1e-5)


class RunningStatsBatchNorm(nn.Module):
    """BatchNorm with running statistics: train() normalizes with batch statistics, eval() with running
    ones; train_eval holds it in eval (by design, not a bug) and must leave its statistics alone."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(D)
        with torch.no_grad():
            self.norm.running_mean.fill_(0.5)
            self.norm.running_var.fill_(2.0)

    def forward(self, x):
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def leaky_padding_encoder():
    torch.manual_seed(0)
    mask = torch.ones(2, 6)
    mask[1, 4:] = 0
    return LeakyPaddingEncoder().eval(), (torch.randn(2, 6, D), mask)


def falsely_causal():
    torch.manual_seed(0)
    return FalselyCausal().eval(), (torch.randn(2, 6, D),)


def running_stats_batchnorm():
    torch.manual_seed(0)
    return RunningStatsBatchNorm().eval(), (torch.randn(4, 6, D),)


def training_branch_norm():
    torch.manual_seed(0)
    return TrainingBranchNorm().eval(), (torch.randn(4, 6, D),)
