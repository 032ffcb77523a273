"""Module names of a transformers model -> llama.cpp GGUF tensor names, through gguf's TensorNameMap.

No table per architecture is written here: gguf-py's tensor_mapping (the one convert_hf_to_gguf.py
uses) does the work. What this module adds is the glue for shapes the tables do not name directly:
per-expert modules (`...experts.3.w1` -> `...experts.w1`, one row of the merged tensor) and the
fused 3-D expert weights of transformers 5 (`experts.gate_up_proj` -> ffn_gate_exps + ffn_up_exps).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# transformers model_type -> llama.cpp architecture, where the plain spelling does not match.
# Mistral and Mixtral checkpoints are converted to llama.cpp's "llama" architecture.
_ARCH_ALIASES = {
    "mistral": "llama",
    "mixtral": "llama",
    "smollm3": "smollm3",
    "gpt_oss": "gpt-oss",
    "gpt_neox": "gptneox",
    "command_r": "command-r",
    "cohere": "command-r",
    "qwen3_next": "qwen3next",
    "phi": "phi2",
    # MLA models: llama.cpp converts them all to "deepseek2" (convert_hf_to_gguf.py)
    "deepseek_v2": "deepseek2",
    "deepseek_v3": "deepseek2",
    "glm4_moe_lite": "deepseek2",
}

_EXPERT_INDEX = re.compile(r"\.experts\.(\d+)\.")


def resolve_arch(model_type: str) -> tuple[object, bool]:
    """(gguf MODEL_ARCH, exact) for a transformers model_type; llama's tables when gguf has none."""
    from gguf import MODEL_ARCH, MODEL_ARCH_NAMES

    by_name = {v: k for k, v in MODEL_ARCH_NAMES.items()}
    mt = (model_type or "").lower()
    for candidate in (_ARCH_ALIASES.get(mt), mt, mt.replace("_", ""), mt.replace("_", "-")):
        if candidate and candidate in by_name:
            return by_name[candidate], True
    return MODEL_ARCH.LLAMA, False


@dataclass(frozen=True)
class Target:
    """Where one hooked input goes: GGUF weight name, and the expert row (None for a dense weight)."""

    name: str  # e.g. blk.3.ffn_gate_exps.weight
    expert: int | None = None


class NameMapper:
    """Maps module names of one model to GGUF weight names (`blk.N.KIND.weight`, `output.weight`)."""

    def __init__(self, model_type: str, n_blocks: int):
        import gguf

        self.model_type = model_type
        self.arch, self.exact_arch = resolve_arch(model_type)
        self.table = gguf.get_tensor_name_map(self.arch, n_blocks)

    def _lookup(self, key: str) -> str | None:
        base = self.table.get_name(key)
        if base is None and not key.startswith("model."):
            base = self.table.get_name("model." + key)
        return None if base is None else base + ".weight"

    def dense(self, module_name: str) -> Target | None:
        """A Linear (or router) module; per-expert Linears give their expert row of the merged tensor."""
        m = _EXPERT_INDEX.search(module_name)
        if m:
            merged = module_name[: m.start()] + ".experts." + module_name[m.end():]
            name = self._lookup(merged)
            return None if name is None else Target(name, int(m.group(1)))
        name = self._lookup(module_name)
        return None if name is None else Target(name)

    def mla(self, attention_name: str) -> tuple[str, str] | None:
        """GGUF names (attn_k_b, attn_v_b) of an MLA attention module, when the architecture's GGUF
        splits kv_b_proj into them (deepseek2); None where it keeps attn_kv_b."""
        names = (self._lookup(f"{attention_name}.k_b_proj"), self._lookup(f"{attention_name}.v_b_proj"))
        return None if None in names else names  # type: ignore[return-value]

    def fused_experts(self, module_name: str) -> tuple[str, str, str] | None:
        """GGUF names (gate, up, down) of a transformers-5 experts module holding 3-D weights."""
        names = tuple(self._lookup(f"{module_name}.{part}") for part in ("gate_proj", "up_proj", "down_proj"))
        if any(n is None for n in names):
            names = tuple(self._lookup(f"{module_name}.{part}") for part in ("w1", "w3", "w2"))
        if any(n is None for n in names):
            return None
        return names  # type: ignore[return-value]
