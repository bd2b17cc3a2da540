"""Models written the way users write them (issue 13): signatures, outputs and shapes the bundled models
do not have. Each factory returns (module, example_args) or (module, example_args, example_kwargs);
all are small (random weights, seeded by load_spec) so export + check take seconds."""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

D = 16


class MLP(nn.Module):
    """[batch, features]: axis 1 is features, not a sequence."""

    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(12, 32), nn.LayerNorm(32), nn.Linear(32, 5)

    def forward(self, x):
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


def mlp():
    return MLP(), (torch.randn(3, 12),)


class ManualLN(nn.Module):
    """A hand-written LayerNorm whose class name does not end in "Norm"."""

    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d)), eps

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return self.weight * (x - mean) / torch.sqrt(var + self.eps) + self.bias


class ManualLNMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.ln, self.fc2 = nn.Linear(12, 32), ManualLN(32), nn.Linear(32, 5)
        with torch.no_grad():
            self.ln.weight.uniform_(0.5, 1.5)
            self.ln.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.fc2(torch.relu(self.ln(self.fc1(x))))


def manual_ln_mlp():
    return ManualLNMLP(), (torch.randn(3, 12),)


class CellLoop(nn.Module):
    """GRUCell/LSTMCell + LayerNorm in a Python loop over time: the length is baked into the trace."""

    def __init__(self, cell="gru"):
        super().__init__()
        self.kind = cell
        self.cell = nn.GRUCell(D, D) if cell == "gru" else nn.LSTMCell(D, D)
        self.norm = nn.LayerNorm(D)

    def forward(self, x):
        h = x.new_zeros(x.shape[0], D)
        c = x.new_zeros(x.shape[0], D)
        outs = []
        for t in range(x.shape[1]):  # a Python loop over time: the trace unrolls it
            if self.kind == "gru":
                h = self.cell(x[:, t], h)
            else:
                h, c = self.cell(x[:, t], (h, c))
            outs.append(self.norm(h))
        return torch.stack(outs, 1)


def gru_loop():
    return CellLoop("gru"), (torch.randn(2, 10, D),)


def lstm_loop():
    return CellLoop("lstm"), (torch.randn(2, 10, D),)


class TinyViT(nn.Module):
    """Patch embedding, fixed position embeddings (so H and W are fixed), nn.MultiheadAttention blocks."""

    def __init__(self, image=16, patch=4, dim=D, heads=2):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2, dim) * 0.02)
        self.norm1, self.attn = nn.LayerNorm(dim), nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2, self.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.final_norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 3)

    def forward(self, images):
        x = self.patch(images).flatten(2).transpose(1, 2) + self.pos
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(self.final_norm(x).mean(1))


def vit():
    return TinyViT(), (torch.randn(2, 3, 16, 16),)



class FixedGrid(nn.Module):
    """Window partition with the grid fixed at construction, as torchvision's MaxViT: every image size but
    the example's is refused (here 16, 11 and 4 for 8), so H and W are fixed before torch.export sees them."""

    def __init__(self, image=8, p=2, dim=D):
        super().__init__()
        self.grid, self.p = image // p, p
        self.conv, self.norm, self.head = nn.Conv2d(3, dim, 1), nn.LayerNorm(dim), nn.Linear(dim, 3)

    def forward(self, images):
        x = self.conv(images)
        B, C, H, W = x.shape
        x = x.reshape(B, C, self.grid, self.p, self.grid, self.p).permute(0, 2, 4, 3, 5, 1)
        x = x.reshape(B, self.grid * self.grid, self.p * self.p, C)
        return self.head(self.norm(x).mean((1, 2)))


def fixed_grid():
    return FixedGrid(), (torch.randn(2, 3, 8, 8),)

class ShrinkingWindow(nn.Module):
    """Rewrites its own attribute in forward(), as Hugging Face's Swin does: a small image shrinks the
    window to the image's size, for good. ln_deploy's probes at small sizes must not change what the
    model computes at the example size afterwards."""

    def __init__(self, window=4, dim=D):
        super().__init__()
        self.window = window
        self.conv, self.norm, self.head = nn.Conv2d(3, dim, 1), nn.LayerNorm(dim), nn.Linear(dim, 3)

    def forward(self, images):
        x = self.conv(images).permute(0, 2, 3, 1)  # B, H, W, C
        B, H, W, C = x.shape
        if min(H, W) <= self.window:
            self.window = min(H, W)
        w = self.window
        x = x.reshape(B, H // w, w, W // w, w, C)
        x = x - x.mean((2, 4), keepdim=True)  # per window: zero when the window is one pixel
        return self.head(self.norm(x).mean((1, 2, 3, 4)))


def shrinking_window():
    return ShrinkingWindow(), (torch.randn(2, 3, 8, 8),)


class ArgsWrapper(nn.Module):
    """The generic wrapper: forward(self, *args) -> the wrapped model's logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args):
        return self.model(*args, use_cache=False).logits


def _hf(config_cls, model_cls, **extra):
    cfg = config_cls(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **extra)
    model = model_cls(cfg).eval()
    ids = torch.randint(0, 64, (2, 8))
    return ArgsWrapper(model), (ids, torch.ones(2, 8, dtype=torch.long))


def hf_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return _hf(LlamaConfig, LlamaForCausalLM)


def hf_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _hf(Qwen2Config, Qwen2ForCausalLM)


def hf_mistral():
    from transformers import MistralConfig, MistralForCausalLM

    return _hf(MistralConfig, MistralForCausalLM, sliding_window=None)


class KeywordOnly(nn.Module):
    """forward(x, *, scale=1.0, **kw): a keyword-only constant and a tensor passed through **kw."""

    def __init__(self):
        super().__init__()
        self.proj, self.norm = nn.Linear(D, D), nn.LayerNorm(D)

    def forward(self, x, *, scale=1.0, **kw):
        return self.norm(self.proj(x) * scale + kw["bias"])


def keyword_only():
    return KeywordOnly(), (torch.randn(2, 6, D),), {"scale": 0.5, "bias": torch.randn(D)}


class KwargsOnly(nn.Module):
    """forward(**inputs), called with a dict of example keyword arguments."""

    def __init__(self):
        super().__init__()
        self.emb, self.norm = nn.Embedding(50, D), nn.LayerNorm(D)

    def forward(self, **inputs):
        h = self.emb(inputs["input_ids"]) * inputs["attention_mask"][..., None]
        return self.norm(h)


def kwargs_only():
    return KwargsOnly(), {"input_ids": torch.randint(0, 50, (2, 7)), "attention_mask": torch.ones(2, 7)}


def model_output_cls():
    from transformers.utils import ModelOutput

    @dataclass
    class EncoderOutput(ModelOutput):
        last_hidden_state: torch.Tensor = None
        pooled: torch.Tensor = None
        attentions: torch.Tensor = None  # left None: not an output

    return EncoderOutput


class ReturnsModelOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj, self.norm = nn.Linear(D, D), nn.LayerNorm(D)
        self.out_cls = model_output_cls()

    def forward(self, x):
        h = self.norm(self.proj(x))
        return self.out_cls(last_hidden_state=h, pooled=h.mean(1))


def returns_model_output():
    return ReturnsModelOutput(), (torch.randn(2, 6, D),)


class NestedTuple(nn.Module):
    """forward(self, pair) with pair = (a, (b, c)): a nested tuple of tensors."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(D)

    def forward(self, pair, gain=2.0):
        a, (b, c) = pair
        return self.norm(a + b * gain) - F.layer_norm(c, (D,))


def nested_tuple():
    return NestedTuple(), ((torch.randn(2, 5, D), (torch.randn(2, 5, D), torch.randn(2, 5, D))), 3.0)
