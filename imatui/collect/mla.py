"""DeepSeek's multi-head latent attention (MLA): the inputs of llama.cpp's `attn_k_b` and `attn_v_b`.

llama.cpp's converter splits transformers' `kv_b_proj` (latent -> per-head k_nope and v) into two
per-head matrices, and its deepseek2 graph uses them with the absorption trick:
- `attn_k_b` {n_embd_head_qk_nope, kv_lora_rank, n_head} multiplies each head's q_nope (the query
  before RoPE, first qk_nope_head_dim values of the head) into the latent space;
- `attn_v_b` {kv_lora_rank, v_head_dim, n_head} multiplies each head's attention output *in the
  latent space* (sum over keys j of p_hij * c_j, c the kv_a_layernorm'd latent) up to v_head_dim.
llama-imatrix records a 3-D weight as one row per head laid end to end (value [h * n_in + i]) with
one count: the tokens (tools/imatrix/imatrix.cpp, `ggml_nrows(src1) / n_mat`).

Neither input exists in a transformers model: q_nope is part of the query the attention function
gets, and the latent attention output is never formed (transformers expands the values first). So
the attention function itself is wrapped (transformers' AttentionInterface: a registered
implementation that calls the model's own one): it sums the query's q_nope part, then calls the
same attention function once more with the latent c (broadcast over heads) as the values, which
gives sum_j p_hij c_j with the model's own probabilities, mask and scaling. The model's output is
untouched. The extra call costs one more attention over values of width kv_lora_rank.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# implementations whose mask and calling convention the extra call is known to reproduce
SUPPORTED_IMPLEMENTATIONS = ("sdpa", "eager")
_PREFIX = "imatui_mla_"

# attention module -> its tap; looked up by the wrapped attention function on every call
_TAPS: weakref.WeakKeyDictionary[nn.Module, MlaTap] = weakref.WeakKeyDictionary()


def is_mla_attention(module: nn.Module) -> bool:
    """An attention module in DeepSeek-V2/V3's style (GLM-4.7-Flash's too)."""
    return (isinstance(getattr(module, "kv_b_proj", None), nn.Linear)
            and all(isinstance(getattr(module, a, None), int)
                    for a in ("kv_lora_rank", "qk_nope_head_dim", "v_head_dim", "num_heads")))


@dataclass
class MlaTap:
    """One MLA attention module: where its two sums go. `add(target, flat)` adds the per-channel sums
    of `flat` (tokens, channels) to a target and counts its tokens (the Collector's accumulators)."""

    module: nn.Module
    k_b: object  # Accumulator of attn_k_b: n_in = n_head * qk_nope_head_dim
    v_b: object  # Accumulator of attn_v_b: n_in = n_head * kv_lora_rank
    add: Callable[[object, torch.Tensor], None]
    latent: torch.Tensor | None = None  # kv_b_proj's input of the current call: (batch, 1, seq, kv_lora_rank)
    active: bool = True

    def latent_hook(self, module, args) -> None:
        self.latent = args[0]

    def collect(self, original: Callable, query: torch.Tensor, key: torch.Tensor, attention_mask, kwargs) -> None:
        latent, self.latent = self.latent, None
        if latent is None:  # kv_b_proj was not called before the attention (not the layout we know)
            raise RuntimeError(f"{type(self.module).__name__}: no latent seen before the attention; "
                               "cannot collect attn_k_b / attn_v_b for this model")
        batch, n_head, seq, _ = query.shape
        nope = self.module.qk_nope_head_dim
        # (batch, head, seq, nope) -> one row per token, the heads laid end to end
        q_nope = query[..., :nope].detach().transpose(1, 2).reshape(batch * seq, n_head * nope)
        self.add(self.k_b, q_nope)
        width = latent.shape[-1]
        values = latent.detach().reshape(batch, 1, -1, width).expand(batch, key.shape[1], -1, width)
        out = original(self.module, query, key, values, attention_mask, **kwargs)
        z = out[0] if isinstance(out, tuple) else out  # (batch, seq, head, kv_lora_rank)
        self.add(self.v_b, z.detach().reshape(batch * seq, n_head * width))


def _original_function(implementation: str, module: nn.Module) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if implementation == "eager":  # each model file has its own eager function
        fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
        if fn is None:
            raise RuntimeError(f"{type(module).__name__}: no eager_attention_forward in its module")
        return fn
    return ALL_ATTENTION_FUNCTIONS[implementation]


def _wrapper(implementation: str) -> Callable:
    def attention(module, query, key, value, attention_mask, **kwargs):
        original = _original_function(implementation, module)
        out = original(module, query, key, value, attention_mask, **kwargs)
        tap = _TAPS.get(module)
        if tap is not None and tap.active:
            tap.collect(original, query, key, attention_mask, kwargs)
        return out
    return attention


def attention_implementation(model: nn.Module) -> str | None:
    return getattr(model.config, "_attn_implementation", None)


def install(model: nn.Module, taps: list[MlaTap]) -> str:
    """Switch `model` to the wrapped form of its attention implementation and route each tapped
    module's calls to its tap; returns the previous implementation (for `uninstall`). The taps'
    `latent_hook` must be registered on their kv_b_proj by the caller. ValueError when the model's
    implementation is not one the extra call reproduces, or the model cannot switch."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    previous = attention_implementation(model) or "eager"
    base = previous[len(_PREFIX):] if previous.startswith(_PREFIX) else previous
    if base not in SUPPORTED_IMPLEMENTATIONS:
        raise ValueError(f"attn_k_b and attn_v_b are collected with the sdpa or eager attention, not {base!r}")
    name = _PREFIX + base
    AttentionInterface.register(name, _wrapper(base))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    model.set_attn_implementation(name)
    if attention_implementation(model) != name:
        raise ValueError(f"{type(model).__name__} cannot switch its attention implementation; "
                         "attn_k_b and attn_v_b cannot be collected")
    for tap in taps:
        _TAPS[tap.module] = tap
    return base


def uninstall(model: nn.Module, previous: str, taps: list[MlaTap]) -> None:
    """Back to the model's own attention implementation; the taps are forgotten."""
    for tap in taps:
        _TAPS.pop(tap.module, None)
        tap.latent = None
    if attention_implementation(model) != previous:
        model.set_attn_implementation(previous)
