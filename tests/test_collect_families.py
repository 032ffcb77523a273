"""imatui collect on the MoE families that transformers and llama.cpp both support, as tiny random models.

Names and shapes are checked against what gguf-py says llama.cpp's GGUF holds for the architecture
(gguf.TensorNameMap and MODEL_TENSORS, the tables convert_hf_to_gguf.py uses), derived here from the
model's *parameters*, not from the modules the collector hooks. The recomputed inputs (an expert's
down projection, DeepSeek's attn_k_b / attn_v_b) are checked against the model's own computation.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from imatui.collect.hooks import Collector  # noqa: E402

HIDDEN = 32
COMMON = dict(vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)
# MLA: 4 heads, q_nope 8, rope 4, v 12, latent 16 (all different, so a mix-up shows in the shapes)
MLA = dict(kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=12,
           n_routed_experts=6, num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
           moe_intermediate_size=20, intermediate_size=48, n_group=1, topk_group=1,
           **dict(COMMON, num_key_value_heads=4))


def _config(kind: str):
    T = transformers
    if kind == "mixtral":
        return T.MixtralConfig(intermediate_size=20, num_local_experts=6, num_experts_per_tok=2, **COMMON)
    if kind == "qwen2_moe":
        return T.Qwen2MoeConfig(intermediate_size=48, moe_intermediate_size=20, shared_expert_intermediate_size=40,
                                num_experts=6, num_experts_per_tok=2, **COMMON)
    if kind == "qwen3_moe":
        return T.Qwen3MoeConfig(intermediate_size=48, moe_intermediate_size=20, num_experts=6, num_experts_per_tok=2,
                                head_dim=8, **COMMON)
    if kind == "olmoe":
        return T.OlmoeConfig(intermediate_size=20, num_experts=6, num_experts_per_tok=2, eos_token_id=1,
                             pad_token_id=1, **COMMON)
    if kind == "gpt_oss":
        return T.GptOssConfig(intermediate_size=20, num_local_experts=6, num_experts_per_tok=2, head_dim=8,
                              layer_types=["sliding_attention", "full_attention"], sliding_window=8,
                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **COMMON)
    if kind == "glm4_moe":
        return T.Glm4MoeConfig(intermediate_size=48, moe_intermediate_size=20, n_routed_experts=6,
                               num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, n_group=1,
                               topk_group=1, head_dim=8, **COMMON)
    if kind == "deepseek_v2":
        return T.DeepseekV2Config(**MLA)
    if kind == "deepseek_v2_lite":  # no q LoRA: one q_proj (llama.cpp's attn_q)
        return T.DeepseekV2Config(**dict(MLA, q_lora_rank=None))
    if kind == "deepseek_v3":
        return T.DeepseekV3Config(**MLA)
    if kind == "glm4_moe_lite":
        return T.Glm4MoeLiteConfig(**MLA)
    raise AssertionError(kind)


# model_type -> llama.cpp architecture of the GGUF convert_hf_to_gguf.py writes for it
FAMILIES = {"mixtral": "llama", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "olmoe": "olmoe",
            "gpt_oss": "gpt-oss", "glm4_moe": "glm4moe", "deepseek_v2": "deepseek2", "deepseek_v2_lite": "deepseek2",
            "deepseek_v3": "deepseek2", "glm4_moe_lite": "deepseek2"}


def _model(kind: str, attn: str | None = None):
    torch.manual_seed(0)
    kw = {} if attn is None else {"attn_implementation": attn}
    model = transformers.AutoModelForCausalLM.from_config(_config(kind), **kw).eval()
    for name, p in model.named_parameters():  # decisive routers; biases and all else away from zero
        with torch.no_grad():
            if name.endswith(("mlp.gate.weight", "router.weight")):
                p.normal_(0, 1.0)
            elif "bias" in name and "e_score" not in name:
                p.normal_(0, 0.5)
    return model


def _expected_from_weights(model, arch) -> dict[str, tuple[int, int]]:
    """GGUF weight name -> (n_mat, n_in) that llama-imatrix records, from the model's parameters and
    gguf's tables, with the renames convert_hf_to_gguf.py makes: fused gate_up split in two, and for
    deepseek2 kv_b_proj split into the per-head attn_k_b / attn_v_b."""
    cfg = model.config
    n_blocks = cfg.num_hidden_layers
    table = gguf.get_tensor_name_map(arch, n_blocks)
    out = {}
    for pname, p in model.named_parameters():
        if not pname.startswith("model.layers.") or p.dim() < 2 or pname.endswith("bias"):
            continue  # norms, biases (GPT-OSS's experts have 2-D ones): no matrix product
        stem = pname.removesuffix(".weight")
        if stem.endswith(".experts.gate_up_proj"):
            for part in ("gate_proj", "up_proj"):
                out[table.get_name(stem.replace("gate_up_proj", part))] = (p.shape[0], HIDDEN)
        elif stem.endswith(".experts.down_proj"):
            n_in = [d for d in p.shape[1:] if d != HIDDEN]
            out[table.get_name(stem)] = (p.shape[0], n_in[0])
        elif stem.endswith("kv_b_proj") and gguf.MODEL_TENSOR.ATTN_K_B in gguf.MODEL_TENSORS[arch]:
            heads = cfg.num_attention_heads
            out[table.get_name(stem.replace("kv_b", "k_b"))] = (1, heads * cfg.qk_nope_head_dim)
            out[table.get_name(stem.replace("kv_b", "v_b"))] = (1, heads * cfg.kv_lora_rank)
        else:
            out[table.get_name(stem)] = (1, p.shape[1])
    assert None not in out, f"a parameter gguf's {arch} tables do not name: {sorted(out)}"
    return {f"{k}.weight": v for k, v in out.items()}


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_names_and_shapes_as_gguf_has_them(kind):
    model = _model(kind)
    col = Collector(model, layer_similarity=False)
    arch = col.mapper.arch
    assert gguf.MODEL_ARCH_NAMES[arch] == FAMILIES[kind] and col.mapper.exact_arch
    assert not col.unmapped and not col.unsupported
    with torch.inference_mode():
        model(torch.randint(0, 64, (2, 20)))
    sums, _, _ = col.flush()
    col.remove()
    got = {name: s2.shape for name, (s2, _, _) in sums.items()}
    assert got == _expected_from_weights(model, arch)
    allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[arch]}
    assert {"blk.{bid}." + name.split(".")[2] for name in got} <= allowed
    for name, (_, _, counts) in sums.items():  # every token once through each matrix, top-2 for experts
        assert counts.sum() == (80 if "_exps" in name else 40), name
    if FAMILIES[kind] == "deepseek2":
        assert "blk.1.attn_kv_b.weight" not in got  # the GGUF has no such weight
        assert ("blk.1.attn_q.weight" in got) == (kind == "deepseek_v2_lite") != ("blk.1.attn_q_a.weight" in got)
        assert got["blk.1.attn_k_b.weight"] == (1, 4 * 8) and got["blk.1.attn_v_b.weight"] == (1, 4 * 16)


FUSED = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", "glm4_moe", "deepseek_v3"]


@pytest.mark.parametrize("kind", FUSED)
def test_recomputed_down_input_gives_the_experts_output(kind):
    """For one token sent to one expert with weight 1, the signed sums of ffn_down_exps' row are the
    down projection's input h itself: down(h) (+ bias) must be what the experts module returns. This
    checks the recomputation (gate/up layout, interleaving, clamps, biases) against the module's own
    forward, whichever expert implementation transformers picked."""
    model = _model(kind)
    block = model.model.layers[1]
    experts = block.mlp.experts
    col = Collector(model, layer_similarity=False)
    down_name = [n for n in col.accumulators if n.startswith("blk.1.ffn_down_exps")][0]
    n_exp = col.accumulators[down_name].n_mat
    torch.manual_seed(5)
    x = torch.randn(1, HIDDEN)
    down = experts.down_proj.detach()
    for e in range(n_exp):
        with torch.inference_mode():
            y = experts(x, torch.tensor([[e]]), torch.ones(1, 1))
        sums, _, _ = col.flush()
        s2, s, counts = sums[down_name]
        assert counts.tolist() == [1.0 if i == e else 0.0 for i in range(n_exp)]
        h = torch.from_numpy(s[e]).float()
        np.testing.assert_allclose(s2[e], s[e] ** 2, rtol=1e-5, atol=1e-12)
        want = h @ down[e] if getattr(experts, "is_transposed", False) else torch.nn.functional.linear(h, down[e])
        if getattr(experts, "has_bias", False):
            want = want + experts.down_proj_bias[e].detach()
        np.testing.assert_allclose(want.numpy(), y[0].numpy(), rtol=1e-4, atol=1e-5, err_msg=f"expert {e}")
    col.remove()


@pytest.mark.parametrize("kind,attn", [("deepseek_v3", "sdpa"), ("deepseek_v3", "eager"), ("deepseek_v2", "sdpa"),
                                       ("deepseek_v2_lite", "sdpa"), ("glm4_moe_lite", "sdpa")])
def test_mla_inputs_are_the_absorbed_attentions(kind, attn):
    """attn_k_b's input is each head's q_nope; attn_v_b's is each head's attention output in the latent
    space, z_h = sum_j p_hij c_j, laid end to end by head. Checked against the probabilities the eager
    attention returns, and through the absorption identity: each head's value output is W_vb_h z_h."""
    model = _model(kind, attn)
    cfg = model.config
    heads, nope, rank, vdim = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.kv_lora_rank, cfg.v_head_dim
    ids = torch.randint(0, 64, (2, 10))
    with torch.inference_mode():
        plain = model(ids).logits
    col = Collector(model, layer_similarity=False)
    assert model.config._attn_implementation == f"imatui_mla_{attn}"
    attn_mod = model.model.layers[1].self_attn
    seen = {}
    q_last = attn_mod.q_proj if attn_mod.q_b_proj is None else attn_mod.q_b_proj  # V2-Lite has no q LoRA
    handles = [
        q_last.register_forward_hook(lambda m, a, o: seen.update(q=o.detach().clone())),
        attn_mod.kv_b_proj.register_forward_pre_hook(lambda m, a: seen.update(c=a[0].detach().clone())),
        attn_mod.o_proj.register_forward_pre_hook(lambda m, a: seen.update(o=a[0].detach().clone())),
    ]
    with torch.inference_mode():
        hooked = model(ids).logits
    for h in handles:
        h.remove()
    sums, _, _ = col.flush()
    col.remove()
    assert model.config._attn_implementation == attn  # put back
    torch.testing.assert_close(hooked, plain, rtol=0, atol=0)  # the model's output is untouched

    # reference probabilities from the eager attention of the same weights
    ref = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    ref.load_state_dict(model.state_dict())
    with torch.inference_mode():
        probs = ref(ids, output_attentions=True).attentions[1].double()  # (batch, head, seq, seq)
    c = seen["c"].double().reshape(2, 10, rank)  # kv_a_layernorm'd latent, the keys' and values' source
    z = torch.einsum("bhts,bsr->bthr", probs, c)  # (batch, seq, head, rank)
    q_nope = seen["q"].double().reshape(2, 10, heads, nope + cfg.qk_rope_head_dim)[..., :nope]

    s2, s, counts = sums["blk.1.attn_v_b.weight"]
    assert counts.tolist() == [20.0] and s2.shape == (1, heads * rank)
    np.testing.assert_allclose(s2[0], (z.reshape(20, heads * rank) ** 2).sum(0).numpy(), rtol=2e-4, atol=1e-7)
    np.testing.assert_allclose(s[0], z.reshape(20, heads * rank).sum(0).numpy(), rtol=2e-4, atol=1e-5)
    s2, s, counts = sums["blk.1.attn_k_b.weight"]
    assert counts.tolist() == [20.0] and s2.shape == (1, heads * nope)
    np.testing.assert_allclose(s2[0], (q_nope.reshape(20, heads * nope) ** 2).sum(0).numpy(), rtol=1e-5)
    # absorption: the value half of kv_b_proj, head by head, maps z to the attention's value output
    w_vb = attn_mod.kv_b_proj.weight.detach().double().reshape(heads, nope + vdim, rank)[:, nope:, :]
    per_head = torch.einsum("bthr,hvr->bthv", z, w_vb).reshape(2, 10, heads * vdim)
    torch.testing.assert_close(per_head, seen["o"].double(), rtol=1e-4, atol=1e-5)


def test_unsupported_attention_is_refused_and_leaves_the_model_as_it_was():
    from imatui.collect import mla

    model = _model("deepseek_v3")
    model.config._attn_implementation_internal = "flex_attention"  # as if loaded with it
    with pytest.raises(ValueError, match="sdpa or eager attention, not 'flex_attention'"):
        Collector(model)
    assert model.config._attn_implementation == "flex_attention"
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert not len(mla._TAPS)


def test_mla_detach_attach_and_the_kernel_branch(monkeypatch):
    """detach() stops the MLA sums with the other hooks (the benchmark's plain steps), attach() resumes;
    on CUDA the sums go through the Triton kernel (its contract, in torch, here)."""
    from imatui.collect import kernels

    calls = []

    def colsum(x, sums2, sums, keep=None):
        calls.append(x.shape)
        assert sums2.shape == sums.shape == (x.shape[1],) and sums2.is_contiguous()
        sums2.add_(x.float().square().sum(0))
        sums.add_(x.float().sum(0))
        if keep is not None:
            keep[0].add_(x.float().square().sum(0))
            keep[1].add_(x.float().sum(0))

    monkeypatch.setattr(kernels, "usable", lambda x: True)
    monkeypatch.setattr(kernels, "colsum_", colsum)
    model = _model("deepseek_v3")
    col = Collector(model, layer_similarity=False)
    ids = torch.randint(0, 64, (2, 10))
    with torch.inference_mode():
        model(ids)
        col.end_step()
        first, _, _ = col.flush()
        col.detach()
        model(ids)
        col.end_step()
        off, _, _ = col.flush()
        col.attach()
        model(ids)
        col.end_step()
        again, _, _ = col.flush()
    col.remove()
    assert (20, 4 * 16) in calls and (20, 4 * 8) in calls  # attn_v_b's and attn_k_b's rows went through it
    for name in ("blk.0.attn_k_b.weight", "blk.1.attn_v_b.weight"):
        assert first[name][2].tolist() == again[name][2].tolist() == [20.0]
        assert off[name][2].tolist() == [0.0] and not off[name][0].any()
        np.testing.assert_allclose(again[name][0], first[name][0], rtol=1e-6)
