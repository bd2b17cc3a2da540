"""train_eval holds what differs between train() and eval() by design (dropout, drop path, running
statistics) and fails what the model itself does differently in training mode. Run on the real
TorchRunner; the reference is the same module in eval()."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from ln_deploy.check.invariance import train_eval
from ln_deploy.check.runners import TorchRunner

D = 16


class DropPath(nn.Module):
    """timm's/Hugging Face's drop path, as they write it: a kept sample is scaled by 1 / keep_prob, so
    train() differs from eval() even when no sample is dropped (a 2-sample batch keeps both most of the
    time: two seeds can agree)."""

    def __init__(self, drop_prob):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    def __init__(self, extra):
        super().__init__()
        self.norm = nn.LayerNorm(D)
        self.extra = extra

    def forward(self, x):
        return x + self.extra(self.norm(x))


class FunctionalDropPath(nn.Module):
    """A block that keeps only the rate and calls the functional drop path itself."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(D)
        self.drop_prob = 0.05

    def forward(self, x):
        y = self.norm(x)
        if self.training and self.drop_prob > 0:
            keep = 1.0 - self.drop_prob
            y = y * x.new_empty(x.shape[0], 1, 1).bernoulli_(keep) / keep
        return x + y


class TrainingBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(D)

    def forward(self, x):
        return self.norm(x) * (1.1 if self.training else 1.0)


def _run(module, x):
    torch.manual_seed(0)
    runner = TorchRunner(module.eval(), input_names=["x"], example_inputs=(x,))
    with runner:
        return train_eval(runner, OrderedDict(x=x.numpy()), atol=1e-5, rtol=1e-4)


def _x(batch=2):
    torch.manual_seed(1)
    return torch.randn(batch, 6, D)


@pytest.mark.parametrize("extra", [
    pytest.param(lambda: DropPath(0.05), id="droppath-module"),
    pytest.param(lambda: nn.Sequential(nn.Linear(D, D), nn.Dropout(0.3)), id="dropout-module"),
])
def test_training_randomness_is_held(extra):
    result = _run(Block(extra()), _x())
    assert result.status == "passed", result.message


def test_a_functional_drop_path_rate_is_zeroed():
    result = _run(FunctionalDropPath(), _x())
    assert result.status == "passed", result.message


def test_running_statistics_are_held_in_eval_and_left_unchanged():
    model = nn.Sequential(nn.Conv1d(6, 6, 1), nn.BatchNorm1d(6), nn.LayerNorm(D))
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
        model[1].running_var.fill_(2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = _run(model, _x(4))
    assert result.status == "passed", result.message
    assert "1 running-statistics normalization (BatchNorm1d) held in eval()" in result.message
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # train() would have updated them
    assert all(not m.training for m in model.modules())  # modes restored


def test_an_if_training_branch_fails():
    result = _run(TrainingBranch(), _x())
    assert result.status == "failed"
    assert "differs from eval() by up to 0." in result.message and "training mode" in result.message
