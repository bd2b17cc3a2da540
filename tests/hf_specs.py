"""Public architectures as a user's SPEC file would write them (`tests/hf_specs.py:llama`): tiny
configs, random weights, no download, and deliberately unseeded (ln_deploy seeds the factory call,
so export and check build the same weights). Used by the `hf` test group."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
import transformers as T  # noqa: E402


class Wrap(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, ids):
        return self.m(input_ids=ids).last_hidden_state


def _ids():
    return (torch.randint(0, 100, (2, 16)),)


def bert():
    return Wrap(T.BertModel(T.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=128, max_position_embeddings=32))), _ids()


def gpt2():
    return Wrap(T.GPT2Model(T.GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=32,
                                         bos_token_id=0, eos_token_id=0))), _ids()


def llama():
    return Wrap(T.LlamaModel(T.LlamaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                           num_key_value_heads=2, intermediate_size=128))), _ids()


def t5():
    return Wrap(T.T5EncoderModel(T.T5Config(vocab_size=100, d_model=64, num_layers=2, num_heads=4, d_ff=128,
                                            d_kv=16))), _ids()
