"""imatui collect, the parts that need no real model: names, chunking, hooks on tiny random models (MoE too)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from imatui.collect.chunks import make_chunks  # noqa: E402
from imatui.collect.hooks import Collector  # noqa: E402
from imatui.collect.names import NameMapper, resolve_arch  # noqa: E402
from imatui.collect.run import _boundary_after, main  # noqa: E402


def test_names_from_gguf_tables():
    m = NameMapper("llama", 4)
    assert m.dense("model.layers.3.self_attn.q_proj").name == "blk.3.attn_q.weight"
    assert m.dense("model.layers.0.mlp.down_proj").name == "blk.0.ffn_down.weight"
    assert m.dense("lm_head").name == "output.weight"
    t = m.dense("model.layers.1.block_sparse_moe.experts.5.w1")  # transformers 4 Mixtral layout
    assert (t.name, t.expert) == ("blk.1.ffn_gate_exps.weight", 5)
    assert m.dense("model.layers.1.self_attn.rotary_thing") is None
    q = NameMapper("qwen2_moe", 2)
    assert q.fused_experts("model.layers.1.mlp.experts") == (
        "blk.1.ffn_gate_exps.weight", "blk.1.ffn_up_exps.weight", "blk.1.ffn_down_exps.weight")
    assert q.dense("model.layers.0.mlp.shared_expert_gate").name == "blk.0.ffn_gate_inp_shexp.weight"
    assert resolve_arch("mixtral")[1] and not resolve_arch("no_such_model")[1]


def test_chunks_as_llama_imatrix():
    tokens = np.arange(100, 100 + 10 * 8)  # 80 tokens
    c = make_chunks(tokens, 8, None, add_bos=True, bos_id=1)
    assert c.n_chunk == 10
    assert c.chunk(2).tolist() == [1] + list(range(117, 124))  # first token of a chunk becomes the BOS
    assert c.batch(0, 2).shape == (2, 8)
    assert (c.ppl_first, c.ppl_tokens_per_chunk) == (4, 3)
    assert make_chunks(tokens, 8, 3, False, None).chunk(1).tolist() == list(range(108, 116))
    with pytest.raises(ValueError, match="at least 96"):
        make_chunks(tokens, 48, None, False, None)


def test_checkpoint_boundaries():
    # llama counts --in-file chunks too: with 3 prior chunks and -ofreq 5 the first save is after 2 chunks
    assert _boundary_after(0, 3, [5, 0], 100) == 2
    assert _boundary_after(2, 3, [5, 4], 100) == 5  # total 8 (save-frequency 4) comes first
    assert _boundary_after(98, 0, [10], 100) == 100


def _tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_dense_hooks_sum_squares_and_count_tokens_of_3d_inputs():
    model = _tiny_llama()
    col = Collector(model, process_output=True)
    seen = {}
    handles = [model.model.layers[1].mlp.down_proj.register_forward_pre_hook(
        lambda mod, a: seen.__setitem__("down", a[0].detach().clone()))]
    ids = torch.randint(0, 64, (3, 10))
    with torch.inference_mode():  # as run.py calls it; the flush below happens outside
        hidden = model(ids, output_hidden_states=True).hidden_states
    for h in handles:
        h.remove()
    sums, sim, sim_tok = col.flush()
    assert set(sums) == {f"blk.{b}.{k}.weight" for b in (0, 1) for k in
                         ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")} | {
                            "output.weight"}
    s2, s, counts = sums["blk.1.ffn_down.weight"]
    x = seen["down"].double().reshape(-1, 48)
    assert counts.tolist() == [30.0]  # tokens of a (3, 10, 48) input, not 3 rows
    np.testing.assert_allclose(s2[0], (x ** 2).sum(0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(s[0], x.sum(0).numpy(), rtol=1e-4, atol=1e-5)
    # q, k and v share one input
    np.testing.assert_array_equal(sums["blk.0.attn_q.weight"][0], sums["blk.0.attn_v.weight"][0])
    assert sim_tok.tolist() == [30.0, 30.0]
    # block 0: mean cosine between its input (the embeddings) and its output, over all 30 tokens
    cos0 = torch.nn.functional.cosine_similarity(hidden[0].double(), hidden[1].double(), dim=-1).mean()
    assert sim[0] / 30 == pytest.approx(float(cos0), abs=1e-6)
    # a flush resets
    assert not col.flush()[0]["blk.0.attn_q.weight"][2].any()
    col.remove()


def _torch_colsum(x, sums2, sums, keep=None):
    """The Triton kernel's contract, in torch: lets the CPU tests walk the hooks' CUDA branch."""
    xf = x.float()
    assert keep is None or (keep.shape == (2, x.shape[1]) and keep.is_contiguous())
    for s2, s1 in [(sums2, sums)] + ([] if keep is None else [(keep[0], keep[1])]):
        s2.add_(xf.square().sum(0))
        s1.add_(xf.sum(0))


@pytest.mark.parametrize("kernel_branch", [False, True])
def test_shared_inputs_are_summed_once_and_stay_exact(monkeypatch, kernel_branch):
    """q/k/v share one input: its sums are computed once and handed on, over several steps, and a
    layer called alone or with another input (or not at all) still gets exactly its own inputs' sums."""
    from imatui.collect import kernels

    passes = []
    if kernel_branch:
        monkeypatch.setattr(kernels, "usable", lambda x: True)
        monkeypatch.setattr(kernels, "colsum_", lambda *a: passes.append(1) or _torch_colsum(*a))
    model = _tiny_llama()
    attn = model.model.layers[0].self_attn
    col = Collector(model, layer_similarity=False)
    seen = {k: [] for k in ("q", "k", "v")}
    handles = [getattr(attn, f"{k}_proj").register_forward_pre_hook(
        lambda mod, a, k=k: seen[k].append(a[0].detach().double().reshape(-1, 32).clone())) for k in seen]
    torch.manual_seed(3)
    with torch.inference_mode():
        per_step = []
        for _ in range(3):  # full steps: the first learns who shares, the next two hand the sums on
            model(torch.randint(0, 64, (2, 5)))
            col.end_step()
            per_step.append(len(passes))
        x1, x2, x3 = (torch.randn(4, 32) for _ in range(3))
        attn.q_proj(x1), attn.k_proj(x1), attn.v_proj(x2)  # v gets another input than its leader q
        col.end_step()
        attn.q_proj(x3)  # q alone: its followers get nothing
        col.end_step()
        attn.v_proj(x3), attn.k_proj(x3)  # followers without their leader
        col.end_step()
    for h in handles:
        h.remove()
    sums, _, _ = col.flush()
    assert bool(col._leaders) == kernel_branch  # the kernel branch learns who shares; torch's keeps all
    if kernel_branch:  # per block: 7 passes over inputs in the first step, then q|k|v, o, gate|up, down
        assert per_step == [14, 22, 30]
    for k, name in (("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v")):
        xs = torch.cat(seen[k])
        s2, s1, counts = sums[f"blk.0.{name}.weight"]
        assert counts.tolist() == [float(xs.shape[0])]
        np.testing.assert_allclose(s2[0], (xs ** 2).sum(0).numpy(), rtol=1e-5, err_msg=k)
        np.testing.assert_allclose(s1[0], xs.sum(0).numpy(), rtol=1e-4, atol=1e-5, err_msg=k)
    assert [x.shape[0] for x in seen["q"]] == [10, 10, 10, 4, 4] and len(seen["v"]) == 5


@pytest.mark.parametrize("kind", ["qwen2_moe", "mixtral"])
def test_moe_experts_per_expert_sums_and_counts(kind):
    torch.manual_seed(1)
    if kind == "qwen2_moe":
        cfg = transformers.Qwen2MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                          moe_intermediate_size=24, shared_expert_intermediate_size=40,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          num_experts=6, num_experts_per_tok=2, max_position_embeddings=64)
        model = transformers.Qwen2MoeForCausalLM(cfg).eval()
        moe = model.model.layers[1].mlp
    else:
        cfg = transformers.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, num_local_experts=6,
                                         num_experts_per_tok=2, max_position_embeddings=64)
        model = transformers.MixtralForCausalLM(cfg).eval()
        moe = model.model.layers[1].mlp
    with torch.no_grad():  # random routers are near-uniform: make them decisive
        moe.gate.weight.normal_(0, 1.0)
    col = Collector(model)
    assert not col.unmapped and not col.unsupported
    seen = {}
    h = moe.experts.register_forward_pre_hook(
        lambda mod, a: seen.update(x=a[0].detach().clone(), idx=a[1].detach().clone()))
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        model(ids)
    h.remove()
    sums, _, _ = col.flush()
    x, idx = seen["x"].double(), seen["idx"]
    exp = moe.experts
    inter = exp.down_proj.shape[2]
    want_sq = np.zeros((6, 32))
    want_down = np.zeros((6, inter))
    want_n = np.zeros(6)
    for t in range(x.shape[0]):  # token by token, expert by expert
        for e in idx[t].tolist():
            want_n[e] += 1
            want_sq[e] += (x[t] ** 2).numpy()
            gu = exp.gate_up_proj[e].detach().double() @ x[t]
            gate, up = gu[:inter], gu[inter:]
            hdn = torch.nn.functional.silu(gate) * up
            want_down[e] += (hdn ** 2).numpy()
    assert want_n.sum() == 48 and (want_n > 0).sum() >= 3
    for name in ("blk.1.ffn_gate_exps.weight", "blk.1.ffn_up_exps.weight"):
        s2, _, counts = sums[name]
        assert s2.shape == (6, 32)
        np.testing.assert_array_equal(counts, want_n)
        np.testing.assert_allclose(s2, want_sq, rtol=1e-5, atol=1e-6)
    s2, _, counts = sums["blk.1.ffn_down_exps.weight"]
    np.testing.assert_array_equal(counts, want_n)
    np.testing.assert_allclose(s2, want_down, rtol=1e-4, atol=1e-6)
    # the router (ffn_gate_inp) sees every token once
    assert sums["blk.1.ffn_gate_inp.weight"][2].tolist() == [24.0]
    if kind == "qwen2_moe":
        for k in ("ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp", "ffn_gate_inp_shexp"):
            assert sums[f"blk.1.{k}.weight"][2].tolist() == [24.0]


def test_cli_errors_are_one_line(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello " * 100)
    out = tmp_path / "o.gguf"
    assert main(["nope/model", "-f", str(text), "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main([str(tmp_path), "-f", str(tmp_path / "missing.txt"), "-o", str(out)]) == 2
    assert "missing.txt: no such text file" in capsys.readouterr().err
    out.write_bytes(b"x")
    assert main([str(tmp_path), "-f", str(text), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    empty = tmp_path / "model"
    empty.mkdir()
    assert main([str(empty), "-f", str(text), "-o", str(tmp_path / "n.gguf")]) == 2
    assert "no config.json" in capsys.readouterr().err
    (empty / "x.gguf").write_bytes(b"not a gguf")  # a folder with one .gguf: that file is the model
    assert main([str(empty), "-f", str(text), "-o", str(tmp_path / "n.gguf")]) == 2
    err = capsys.readouterr().err
    assert "cannot load the model" in err and err.count("\n") == 1
    assert main(["--bogus"]) == 2
