"""The ggml types a plan chooses among, and llama-quantize's rules for them.

Sizes come from gguf-py (GGML_QUANT_SIZES); the rules are those of llama.cpp's src/llama-quant.cpp
(the tree vendored in llama-cpp-python 0.3.36): `tensor_type_fallback` (a row that is not a multiple
of the block size gets another type), `tensor_requires_imatrix` (the types that refuse to run
without data) and `tensor_allows_quantization` (which weights are quantized at all).
"""

from __future__ import annotations

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

# The ladder a plan probes: the K types and the IQ types, plus the 32-block types that
# llama-quantize falls back to when a row is not a multiple of 256 (and that are good choices of
# their own). Q8_0 is the top quantized rung; F16 is always there too (exact, no probe needed).
K_LADDER = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
IQ_LADDER = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS")
LEGACY_LADDER = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "Q8_0")
DEFAULT_LADDER = K_LADDER + IQ_LADDER + LEGACY_LADDER

# what gguf-py can quantize itself (its reference quantizers, which ignore the imatrix)
GGUF_PY_QUANTIZES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
HIGH_PRECISION = ("F32", "F16", "BF16")

# llama-quantize's fallback for a row length that is not a multiple of the block size
_FALLBACK = {
    "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL",
    "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL",
    "Q2_K": "Q4_0", "Q3_K": "Q4_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0",
    "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
}
# types that abort without an imatrix entry (llama-quant.cpp tensor_requires_imatrix; token_embd
# and output.weight are exempt)
NEEDS_IMATRIX = ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S")

# the llama-quantize ftype name that gives each type to every tensor under --pure
PROBE_FTYPE = {
    "Q2_K": "Q2_K", "Q3_K": "Q3_K_S", "Q4_K": "Q4_K_S", "Q5_K": "Q5_K_S", "Q6_K": "Q6_K",
    "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q8_0": "Q8_0",
    "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS", "IQ3_S": "IQ3_S", "IQ3_XXS": "IQ3_XXS",
    "IQ2_S": "IQ2_S", "IQ2_XS": "IQ2_XS", "IQ2_XXS": "IQ2_XXS", "IQ1_S": "IQ1_S", "IQ1_M": "IQ1_M",
}
# llama-quantize's own mixes a plan can be sized like (--like)
MIXES = ("Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M",
         "Q6_K", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M",
         "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ4_NL", "IQ4_XS", "IQ1_S", "IQ1_M")


def type_id(name: str) -> T:
    try:
        return T[name.upper()]
    except KeyError:
        raise ValueError(f"unknown ggml type {name!r}") from None


def block(name: str) -> tuple[int, int]:
    """(values per block, bytes per block) of a type."""
    return GGML_QUANT_SIZES[type_id(name)]


def row_bytes(name: str, n_per_row: int) -> int:
    blck, size = block(name)
    return n_per_row // blck * size


def bits_per_weight(name: str) -> float:
    blck, size = block(name)
    return size * 8 / blck


def real_type(name: str, n_per_row: int) -> str:
    """The type llama-quantize writes when asked for `name` on rows of n_per_row values."""
    name = name.upper()
    blck = block(name)[0]
    if n_per_row % blck == 0:
        return name
    fallback = _FALLBACK.get(name, name)
    if n_per_row % block(fallback)[0] != 0:
        return "F16"
    return fallback


def needs_imatrix(tensor_name: str, type_name: str) -> bool:
    if tensor_name in ("token_embd.weight", "output.weight") or tensor_name.startswith("output.weight"):
        return False
    return type_name.upper() in NEEDS_IMATRIX


def allows_quantization(name: str, n_dims: int) -> bool:
    """llama-quant.cpp's tensor_allows_quantization, for the tensors of text models."""
    if n_dims < 2 or not name.endswith("weight"):
        return False
    excluded = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
                "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
                "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight",
                "time_mix_w1.weight", "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight",
                "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight",
                "time_mix_g1.weight", "time_mix_g2.weight", "time_mix_decay_w1.weight",
                "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "attn_rel_b.weight",
                ".position_embd", ".patch_embd", ".rel_pos")
    if any(x in name for x in excluded):
        return False
    return name not in ("position_embd.weight", "token_types.weight")


def ggml_name(type_name: str) -> str:
    """The spelling ggml_type_name uses (q4_K, iq4_nl, f16): what llama-quantize prints."""
    low = type_name.lower()
    return low[:-2] + "_K" if low.endswith("_k") else low
