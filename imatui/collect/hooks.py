"""Forward hooks that accumulate llama-imatrix's statistics on the device.

Per GGUF weight: in_sum2 (sum over tokens of the squared input, per input channel), in_sum (sum of the
inputs) and counts (tokens per matrix; a 3-D input (batch, seq, n_in) counts batch*seq tokens). They are
kept in float32 on the device the input lives on and flushed to float64 numpy on the host by `flush()`
(at checkpoints), so a step never waits for a device-to-host copy.

What is hooked, inside the decoder blocks only (plus `lm_head` with process_output):
- every nn.Linear (attention, MLP, shared experts, routers/gates that are Linears), and router modules
  holding a 2-D `weight` (transformers 5's TopKRouter);
- per-expert Linears of older layouts (`experts.3.w1`): their tokens go to row 3 of the merged tensor;
- transformers 5's fused experts modules (3-D `gate_up_proj` / `down_proj`): the pre-hook sees the
  routing (top_k_index), so per-expert sums of the input are one matmul with the routing mask; the
  down projection's input (act(gate) * up per expert) is not visible from outside, so the hook
  recomputes it for the experts hit (about +2/3 of the MoE FFN's cost while collecting);
- DeepSeek's MLA attention, where llama.cpp's GGUF splits kv_b_proj into attn_k_b and attn_v_b:
  their inputs are computed inside the attention (imatui.collect.mla), kv_b_proj itself is not
  collected (llama.cpp has no such weight).
A layer whose module name gguf's tables cannot map is listed in `unmapped`, never dropped silently.

Layer similarity (ik_llama.cpp's --layer-similarity): per block, the cosine similarity between the
block's input and output hidden state of every token, summed on the device; `flush()` returns the sums
and token counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from imatui.collect import kernels, mla
from imatui.collect.names import NameMapper


@dataclass
class Accumulator:
    """One GGUF weight's sums since the last flush (device) and its shape."""

    name: str
    n_mat: int
    n_in: int
    buf: torch.Tensor | None = None  # (2, n_mat, n_in) float32 on the input's device: [0] in_sum2, [1] in_sum
    host_counts: np.ndarray = field(default=None)  # tokens known from shapes (no device sync)
    dev_counts: torch.Tensor | None = None  # tokens from routing decisions (int64, on the device)

    def __post_init__(self) -> None:
        if self.host_counts is None:
            self.host_counts = np.zeros(self.n_mat, dtype=np.int64)

    def _buffers(self, device: torch.device) -> None:
        if self.buf is None:
            self.buf = _zeros(2, self.n_mat, self.n_in, dtype=torch.float32, device=device)

    def add_experts(self, sq: torch.Tensor, s: torch.Tensor, counts: torch.Tensor) -> None:
        self._buffers(sq.device)
        self.buf[0].add_(sq)
        self.buf[1].add_(s)
        if self.dev_counts is None:
            self.dev_counts = _zeros(self.n_mat, dtype=torch.int64, device=counts.device)
        self.dev_counts.add_(counts)

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sums2 float64, sums float64, counts float64) since the last take; resets to zero."""
        if self.buf is None:
            z = np.zeros((self.n_mat, self.n_in))
            sums2, sums = z, z.copy()
        else:
            both = self.buf.double().cpu().numpy()
            sums2, sums = both[0], both[1]
            self.buf.zero_()
        counts = self.host_counts.astype(np.float64)
        self.host_counts[:] = 0
        if self.dev_counts is not None:
            counts = counts + self.dev_counts.cpu().numpy().astype(np.float64)
            self.dev_counts.zero_()
        return sums2, sums, counts


def _zeros(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Accumulator storage: a normal tensor even when first made inside torch.inference_mode(), so a
    flush outside it can still zero it in place."""
    with torch.inference_mode(False):
        return torch.zeros(*shape, dtype=dtype, device=device)


def _sums(x: torch.Tensor) -> torch.Tensor:
    """Per-channel (sum of squares, sum) in float32 over every token of x (T, n_in), stacked as (2, n_in).

    bfloat16 inputs are squared in bfloat16 (same range as float32, rounding unbiased) and summed in
    float32, which saves a float32 copy of every activation on the GPU; float16 is upcast first
    (squares above 65504 would overflow).
    """
    if x.dtype == torch.bfloat16:
        return torch.stack(((x * x).sum(0, dtype=torch.float32), x.sum(0, dtype=torch.float32)))
    xf = x if x.dtype == torch.float32 else x.float()
    return torch.stack((xf.square().sum(0), xf.sum(0)))


def _cosine_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum over tokens of cos(a_t, b_t) (float64 scalar), as F.cosine_similarity with eps 1e-8 gives."""
    a = a.detach().reshape(-1, a.shape[-1])
    b = b.detach().reshape(-1, b.shape[-1])
    if a.dtype == torch.float16:
        a, b = a.float(), b.float()
    dot = (a * b).sum(-1, dtype=torch.float32)
    na = (a * a).sum(-1, dtype=torch.float32)
    nb = (b * b).sum(-1, dtype=torch.float32)
    return (dot / (na * nb).clamp_min(1e-16).sqrt()).sum(dtype=torch.float64)


def find_blocks(model: nn.Module, n_layers: int | None) -> tuple[str, nn.ModuleList] | None:
    """The ModuleList of decoder blocks: the longest one (of length num_hidden_layers when known)."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if n_layers and len(module) == n_layers and ".experts" not in name and "experts" != name:
                if best is None or len(name) < len(best[0]) or len(best[1]) != n_layers:
                    best = (name, module)
            elif best is None or (len(module) > len(best[1]) and len(best[1]) != n_layers):
                best = (name, module)
    return best


def _is_fused_experts(module: nn.Module) -> bool:
    w = getattr(module, "down_proj", None)
    return isinstance(w, nn.Parameter) and w.dim() == 3 and (
        isinstance(getattr(module, "gate_up_proj", None), nn.Parameter)
        or isinstance(getattr(module, "up_proj", None), nn.Parameter))


def _is_router(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return (not isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)) and isinstance(w, nn.Parameter)
            and w.dim() == 2 and "norm" not in type(module).__name__.lower())


class Collector:
    """Hooks one model; `flush()` hands back what was accumulated since the last flush."""

    def __init__(self, model: nn.Module, *, process_output: bool = False, layer_similarity: bool = True):
        config = model.config
        n_layers = getattr(config, "num_hidden_layers", None)
        found = find_blocks(model, n_layers)
        if found is None:
            raise ValueError("found no decoder blocks (no nn.ModuleList of layers) in this model")
        self.blocks_name, self.blocks = found
        self.n_blocks = len(self.blocks)
        # per block, on that block's device: float64 sums of cosines, and (Triton path) this step's float32 sums
        self._sim_sums: list[torch.Tensor | None] = [None] * self.n_blocks
        self._sim_steps: list[torch.Tensor | None] = [None] * self.n_blocks
        self._sim_tokens = np.zeros(self.n_blocks)
        self.mapper = NameMapper(getattr(config, "model_type", ""), self.n_blocks)
        self.accumulators: dict[str, Accumulator] = {}
        self.unmapped: list[str] = []
        self.unsupported: list[str] = []
        self._handles: list = []
        self._registrations: list = []  # (module, hook, pre, with_kwargs): for detach() / attach()
        # q/k/v (and gate/up) get one input tensor: its sums are computed once. _last is (that input, its
        # (2, n_in) sums or None, the id of the hook that computed them); hooks seen to be followed by
        # another on the same input become leaders, which keep their sums for the followers.
        self._last: tuple | None = None
        self._leaders: set[int] = set()
        self._n_dense_hooks = 0
        self._scratch: dict[tuple[torch.device, int], torch.Tensor] = {}
        self.layer_similarity = layer_similarity
        self._model = model
        self._mla_taps: list[mla.MlaTap] = []
        self._mla_previous: str | None = None  # the attention implementation to put back

        covered: set[str] = set()
        skipped: set[str] = set()  # modules whose work another hook does (an MLA kv_b_proj)
        for bi, block in enumerate(self.blocks):
            prefix = f"{self.blocks_name}.{bi}"
            for sub, module in block.named_modules():
                full = f"{prefix}.{sub}" if sub else prefix
                if full in skipped or any(full.startswith(c + ".") for c in covered):
                    continue
                if _is_fused_experts(module):
                    covered.add(full)
                    self._hook_fused_experts(full, module)
                elif mla.is_mla_attention(module) and self._hook_mla(full, module):
                    skipped.add(f"{full}.kv_b_proj")
                elif isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
                    self._hook_linear(full, module)
                elif _is_router(module):
                    self._hook_linear(full, module)
            if layer_similarity:
                self._register(block, self._similarity_hook(bi), pre=False, with_kwargs=True)
        if process_output:
            head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            if head is None:
                self.unmapped.append("lm_head (the model has no output head)")
            else:
                acc = self._accumulator("output.weight", 1, head.weight.shape[1])
                self._register(head, self._dense_hook(acc, 0))
        if self._mla_taps:
            try:
                self._mla_previous = mla.install(model, self._mla_taps)
            except ValueError:
                self.remove()
                raise

    # -- registration ---------------------------------------------------------------------------
    def _register(self, module: nn.Module, hook, *, pre: bool = True, with_kwargs: bool = False) -> None:
        self._registrations.append((module, hook, pre, with_kwargs))
        self._handles.append(self._attach_one(module, hook, pre, with_kwargs))

    @staticmethod
    def _attach_one(module, hook, pre, with_kwargs):
        if pre:
            return module.register_forward_pre_hook(hook, with_kwargs=with_kwargs)
        return module.register_forward_hook(hook, with_kwargs=with_kwargs)

    def detach(self) -> None:
        """Take the hooks off (the sums stay); attach() puts the same hooks back."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for tap in self._mla_taps:
            tap.active = False

    def attach(self) -> None:
        if not self._handles:
            self._handles = [self._attach_one(*r) for r in self._registrations]
        for tap in self._mla_taps:
            tap.active = True

    def _accumulator(self, name: str, n_mat: int, n_in: int) -> Accumulator:
        acc = self.accumulators.get(name)
        if acc is None:
            acc = self.accumulators[name] = Accumulator(name, n_mat, n_in)
        elif acc.n_in != n_in:
            raise ValueError(f"{name}: inputs of {n_in} and {acc.n_in} channels map to one GGUF tensor")
        elif n_mat > acc.n_mat:
            acc.n_mat = n_mat
            acc.host_counts = np.zeros(n_mat, dtype=np.int64)
        return acc

    def _hook_linear(self, full: str, module: nn.Module) -> None:
        target = self.mapper.dense(full)
        if target is None:
            self.unmapped.append(full)
            return
        # transformers' Conv1D (GPT-2 family) stores its weight as (n_in, n_out)
        n_in = module.weight.shape[0] if type(module).__name__ == "Conv1D" else module.weight.shape[1]
        n_mat = 1
        if target.expert is not None:
            n_mat = self._n_experts_hint(full, target.expert)
        acc = self._accumulator(target.name, n_mat, n_in)
        self._register(module, self._dense_hook(acc, target.expert or 0))

    def _n_experts_hint(self, full: str, expert: int) -> int:
        head = full[: full.index(".experts.") + len(".experts")]
        for bi, block in enumerate(self.blocks):
            prefix = f"{self.blocks_name}.{bi}."
            if head.startswith(prefix):
                try:
                    return len(block.get_submodule(head[len(prefix):]))
                except (AttributeError, TypeError):
                    break
        return expert + 1

    def _hook_mla(self, full: str, module: nn.Module) -> bool:
        """attn_k_b and attn_v_b of an MLA attention module; False where the GGUF keeps attn_kv_b."""
        names = self.mapper.mla(full)
        if names is None:
            return False
        n_head = module.num_heads
        tap = mla.MlaTap(module, self._accumulator(names[0], 1, n_head * module.qk_nope_head_dim),
                         self._accumulator(names[1], 1, n_head * module.kv_lora_rank), self._add_tokens)
        self._mla_taps.append(tap)
        self._register(module.kv_b_proj, tap.latent_hook)
        return True

    @staticmethod
    def _add_tokens(acc: Accumulator, flat: torch.Tensor) -> None:
        """Sums of a (tokens, n_in) input into a dense accumulator, and its tokens."""
        acc._buffers(flat.device)
        if kernels.usable(flat):
            kernels.colsum_(flat, acc.buf[0, 0], acc.buf[1, 0], None)
        else:
            acc.buf[:, 0].add_(_sums(flat))
        acc.host_counts[0] += flat.shape[0]

    def _hook_fused_experts(self, full: str, module: nn.Module) -> None:
        names = self.mapper.fused_experts(full)
        has_gate = bool(getattr(module, "has_gate", hasattr(module, "gate_up_proj")))
        if names is None:
            self.unmapped.append(full)
            return
        if not hasattr(module, "num_experts") or (has_gate and not hasattr(module, "_apply_gate")
                                                  and not hasattr(module, "act_fn")):
            self.unsupported.append(full)
            return
        gate_name, up_name, down_name = names
        n_exp = int(module.num_experts)
        down = module.down_proj
        transposed = bool(getattr(module, "is_transposed", False))
        n_in_down = down.shape[1] if transposed else down.shape[2]
        n_hidden = down.shape[2] if transposed else down.shape[1]
        accs = [self._accumulator(up_name, n_exp, n_hidden)]
        if has_gate:
            accs.insert(0, self._accumulator(gate_name, n_exp, n_hidden))
        acc_down = self._accumulator(down_name, n_exp, n_in_down)
        self._register(module, self._experts_hook(accs, acc_down, has_gate, transposed), with_kwargs=True)

    # -- hooks ----------------------------------------------------------------------------------
    def _dense_hook(self, acc: Accumulator, row: int):
        hook_id = self._n_dense_hooks
        self._n_dense_hooks += 1

        views: list = []  # (buf[0, row], buf[1, row], buf[:, row]) once the buffer exists

        def hook(module, args):
            x = args[0]
            flat = x.detach().reshape(-1, x.shape[-1])
            if not views:
                acc._buffers(flat.device)
                views.extend((acc.buf[0, row], acc.buf[1, row], acc.buf[:, row]))
            elif flat.device != views[0].device:  # a layer fed from another device than its first input
                x = flat = flat.to(views[0].device)
            last = self._last
            if last is not None and last[0] is x:
                if last[1] is not None:  # the same input as the hook before: add its sums
                    views[2].add_(last[1])
                    acc.host_counts[row] += flat.shape[0]
                    return
                self._leaders.add(last[2])  # from the next step on, that hook keeps its sums for this one
            if kernels.usable(flat):  # one fused pass over the input, added in place
                keep = None
                if hook_id in self._leaders:
                    keep = self._scratch_for(flat)
                    keep.zero_()
                kernels.colsum_(flat, views[0], views[1], keep)
            else:
                keep = _sums(flat)
                views[2].add_(keep)
            acc.host_counts[row] += flat.shape[0]
            self._last = (x, keep, hook_id)
        return hook

    def _scratch_for(self, flat: torch.Tensor) -> torch.Tensor:
        """One (2, n_in) float32 buffer per device and width: only the latest input's sums are kept."""
        key = (flat.device, flat.shape[-1])
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = _zeros(2, flat.shape[-1], dtype=torch.float32, device=flat.device)
        return buf

    def _experts_hook(self, accs: list[Accumulator], acc_down: Accumulator, has_gate: bool, transposed: bool):
        def hook(module, args, kwargs):
            names = ("hidden_states", "top_k_index", "top_k_weights")
            vals = list(args) + [kwargs.get(k) for k in names[len(args):]]
            hidden, top_k_index = vals[0], vals[1]
            n_exp = int(module.num_experts)
            x = hidden.detach().reshape(-1, hidden.shape[-1])
            idx = top_k_index.reshape(x.shape[0], -1)
            # one row per token, a 1 for every expert that token was routed to (sentinels >= n_exp dropped)
            mask = torch.zeros(x.shape[0], n_exp + 1, dtype=torch.float32, device=x.device)
            mask.scatter_(1, idx.clamp(max=n_exp).long(), 1.0)
            mask = mask[:, :n_exp]
            xf = x.float()
            sq = mask.t() @ xf.square()
            s = mask.t() @ xf
            counts = mask.sum(0).long()
            for acc in accs:
                acc.add_experts(sq, s, counts)
            # the down projection's input, act(gate) * up, recomputed for the experts hit
            hit = torch.nonzero(counts).flatten().tolist()
            sq_d = torch.zeros(n_exp, acc_down.n_in, dtype=torch.float32, device=x.device)
            s_d = torch.zeros_like(sq_d)
            with torch.no_grad():
                for e in hit:
                    tokens = torch.nonzero(mask[:, e]).flatten()
                    xe = x[tokens]
                    w = module.gate_up_proj[e] if has_gate else module.up_proj[e]
                    h = xe @ w if transposed else nn.functional.linear(xe, w)
                    bias_name = "gate_up_proj_bias" if has_gate else "up_proj_bias"
                    if getattr(module, "has_bias", False) and getattr(module, bias_name, None) is not None:
                        h = h + getattr(module, bias_name)[e]
                    if has_gate:
                        h = module._apply_gate(h) if hasattr(module, "_apply_gate") else \
                            (lambda g, u: module.act_fn(g) * u)(*h.chunk(2, dim=-1))
                    else:
                        h = module.act_fn(h)
                    hf = h.float()
                    sq_d[e] = hf.square().sum(0)
                    s_d[e] = hf.sum(0)
            acc_down.add_experts(sq_d, s_d, counts)
        return hook

    def _similarity_hook(self, index: int):
        def hook(module, args, kwargs, output):
            h_in = args[0] if args else kwargs.get("hidden_states")
            h_out = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(h_in, torch.Tensor) or not isinstance(h_out, torch.Tensor) \
                    or h_in.shape != h_out.shape:
                return
            if h_in.device != h_out.device:  # a model spread over devices: the block's input came from
                h_in = h_in.to(h_out.device)  # the previous device (accelerate moves it inside forward)
            if self._sim_sums[index] is None:
                self._sim_sums[index] = _zeros(1, dtype=torch.float64, device=h_in.device)
            if kernels.usable(h_in) and h_out.dtype == h_in.dtype:
                if self._sim_steps[index] is None:
                    self._sim_steps[index] = _zeros(1, dtype=torch.float32, device=h_in.device)
                width = h_in.shape[-1]
                kernels.cosine_sum_(h_in.detach().reshape(-1, width), h_out.detach().reshape(-1, width),
                                    self._sim_steps[index])
            else:
                self._sim_sums[index] += _cosine_sum(h_in, h_out)
            self._sim_tokens[index] += h_in.numel() // h_in.shape[-1]
        return hook

    def _fold_similarity(self) -> None:
        """Adds the Triton path's float32 per-step sums into the float64 totals (two launches)."""
        steps = [t for t in self._sim_steps if t is not None]
        if steps:
            totals = [self._sim_sums[i] for i, t in enumerate(self._sim_steps) if t is not None]
            torch._foreach_add_(totals, steps)
            torch._foreach_zero_(steps)

    # -- results --------------------------------------------------------------------------------
    def end_step(self) -> None:
        """After each forward pass: drop the reference to the last input, fold the step's sums."""
        self._last = None
        self._fold_similarity()

    def flush(self) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
        """({name: (sums2, sums, counts)}, similarity sums, similarity tokens) since the last flush."""
        self._last = None
        self._fold_similarity()
        sums = {name: acc.take() for name, acc in sorted(self.accumulators.items())}
        sim = np.array([0.0 if t is None else float(t.item()) for t in self._sim_sums])
        for t in self._sim_sums:
            if t is not None:
                t.zero_()
        tok = self._sim_tokens.copy()
        self._sim_tokens[:] = 0
        return sums, sim, tok

    def remove(self) -> None:
        self.detach()
        if self._mla_previous is not None:
            mla.uninstall(self._model, self._mla_previous, self._mla_taps)
            self._mla_previous = None
