"""The collector's CUDA path (Triton kernels, shared-input hand-over) against its plain-torch path.

Skipped without CUDA and Triton (CI has neither); run on a GPU machine with
`python -m pytest tests/test_collect_cuda.py` or `python tests/test_collect_cuda.py`.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from imatui.collect import kernels  # noqa: E402
from imatui.collect.hooks import Collector  # noqa: E402

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.AVAILABLE),
                                reason="needs CUDA and Triton")


_KINDS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down"}


def _collect(model, batches, use_triton: bool):
    """The collector's flush after the batches, and float64 sums of every hooked input (the reference)."""
    saved = kernels.AVAILABLE
    kernels.AVAILABLE = use_triton
    ref: dict[str, list] = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        for sub, kind in _KINDS.items():
            name = f"blk.{i}.{kind}.weight"
            ref[name] = [0.0, 0.0]

            def record(mod, args, name=name):
                x = args[0].detach().double().reshape(-1, args[0].shape[-1])
                ref[name][0] = ref[name][0] + x.square().sum(0)
                ref[name][1] = ref[name][1] + x.sum(0)
            handles.append(layer.get_submodule(sub).register_forward_pre_hook(record))
    try:
        col = Collector(model)
        with torch.inference_mode():
            for ids in batches:
                model(input_ids=ids, use_cache=False)
                col.end_step()
        out = col.flush()
        col.remove()
        return out, {k: (v[0].cpu().numpy(), v[1].cpu().numpy()) for k, v in ref.items()}
    finally:
        kernels.AVAILABLE = saved
        for h in handles:
            h.remove()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_triton_path_matches_torch_path(dtype):
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=576, intermediate_size=1536, num_hidden_layers=3,
                                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=1024)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(getattr(torch, dtype)).cuda().eval()
    # odd token counts (not a multiple of any block), and a step count that exercises the hand-over
    batches = [torch.randint(0, 512, (b, t), device="cuda") for b, t in ((3, 333), (5, 401), (1, 77), (4, 256))]
    (sums_t, sim_t, tok_t), ref = _collect(model, batches, True)
    (sums_r, sim_r, tok_r), ref_r = _collect(model, batches, False)
    assert set(sums_t) == set(sums_r) == set(ref) and len(sums_t) == 3 * 7
    # the kernel squares in float32 (exact for bfloat16 inputs); torch's path squares bfloat16 in bfloat16
    rtol_torch = 2e-5 if dtype == "float32" else 1e-2
    for name in sums_t:
        (a2, a1, ac), (b2, b1, bc) = sums_t[name], sums_r[name]
        np.testing.assert_array_equal(ac, bc, err_msg=name)
        assert ac.tolist() == [3 * 333 + 5 * 401 + 77 + 4 * 256]
        np.testing.assert_allclose(ref[name][0], ref_r[name][0], rtol=1e-12)  # the same inputs both times
        np.testing.assert_allclose(a2[0], ref[name][0], rtol=2e-5, err_msg=name)
        np.testing.assert_allclose(b2[0], ref[name][0], rtol=rtol_torch, err_msg=name)
        scale = np.abs(ref[name][1]).max()
        np.testing.assert_allclose(a1[0], ref[name][1], rtol=1e-4, atol=1e-5 * scale, err_msg=name)
        np.testing.assert_allclose(b1[0], ref[name][1], rtol=1e-4, atol=1e-5 * scale, err_msg=name)
    np.testing.assert_array_equal(tok_t, tok_r)
    np.testing.assert_allclose(sim_t, sim_r, rtol=1e-5 if dtype == "float32" else 1e-3)



@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_model_spread_over_two_gpus(tmp_path):
    """--device-map auto: layers on two GPUs. The kernels must run on each layer's own GPU and stream."""
    pytest.importorskip("accelerate")
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=576, intermediate_size=1536, num_hidden_layers=4,
                                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=1024)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto",
                                                              dtype=torch.float32).eval()
    assert {str(d) for d in model.hf_device_map.values()} >= {"0", "1"}
    batches = [torch.randint(0, 512, (b, t), device="cuda:0") for b, t in ((8, 512), (5, 401), (8, 512))]
    (sums_t, sim_t, tok_t), ref = _collect(model, batches, True)
    (sums_r, sim_r, tok_r), _ = _collect(model, batches, False)
    for name in sums_t:
        np.testing.assert_array_equal(sums_t[name][2], sums_r[name][2], err_msg=name)
        np.testing.assert_allclose(sums_t[name][0][0], ref[name][0], rtol=2e-5, err_msg=name)
        np.testing.assert_allclose(sums_r[name][0][0], ref[name][0], rtol=2e-5, err_msg=name)
    np.testing.assert_allclose(sim_t, sim_r, rtol=1e-5)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-v"]))
