"""imatui collect as a process: SIGKILL at several moments + --resume, Ctrl-C, 2-process torchrun (gloo).

A tiny random-weight llama with a byte-level tokenizer stands in for a real model, so every run is quick.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

TEXT = FIXTURES / "calibration" / "prose-16k.txt"  # 16,330 bytes: 127 chunks of 128 byte-tokens
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    folder = tmp_path_factory.mktemp("tiny-llama")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["<s>"], vocab["</s>"] = 256, 257
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 256)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>")
    tok.save_pretrained(folder)
    cfg = transformers.LlamaConfig(vocab_size=258, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   bos_token_id=256, eos_token_id=257)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def _args(model: Path, out: Path, *extra: str) -> list[str]:
    return [str(model), "-f", str(TEXT), "-o", str(out), "-c", "128", "--device", "cpu", "--quiet", *extra]


def _spawn(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "imatui", "collect", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _chunks_in(path: Path) -> int:
    from imatui.formats import load

    try:
        return load(path, lazy=False).chunk_count
    except Exception:  # noqa: BLE001 - absent: no checkpoint yet
        return -1


def _run_until_checkpoint(proc: subprocess.Popen, out: Path, chunks: int) -> None:
    """Let the collector run in short slices (SIGCONT ... SIGSTOP) until `out` holds `chunks` chunks,
    and leave it stopped: on a busy machine a plain polling loop saw it race past to the end."""
    deadline = time.monotonic() + 300  # a resumed run loads torch and the model first: slow on a busy machine
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGSTOP)
        done = _chunks_in(out)
        if done >= chunks:
            return
        proc.send_signal(signal.SIGCONT)
        # while it starts (torch, the model) or has many chunks to go, longer slices: 3 ms ones held
        # the start-up to a third of the time (30 s of this test); near the target, short ones
        time.sleep(0.003 if done >= chunks - 3 else 0.03)


def _assert_same(a_path: Path, b_path: Path, rtol: float = 1e-5) -> None:
    from imatui.formats import load

    a, b = load(a_path, lazy=False), load(b_path, lazy=False)
    assert a.names() == b.names() and len(a) == 21  # 3 blocks x 7 weights
    assert (a.chunk_count, a.chunk_size, a.datasets) == (b.chunk_count, b.chunk_size, b.datasets)
    for name in a.names():
        np.testing.assert_array_equal(a[name].counts, b[name].counts)
        np.testing.assert_allclose(a[name].sums2, b[name].sums2, rtol=rtol, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(a[name].sums, b[name].sums, rtol=rtol, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(a.metadata["imatui.layer_similarity"], b.metadata["imatui.layer_similarity"],
                               atol=1e-6)
    np.testing.assert_allclose(a.metadata["imatui.collect.nll"], b.metadata["imatui.collect.nll"], rtol=1e-5)


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory) -> Path:
    """One uninterrupted run, in this process: 60 chunks, a checkpoint after every chunk."""
    from imatui.collect.run import main

    out = tmp_path_factory.mktemp("ref") / "ref.gguf"
    assert main(_args(tiny_model, out, "--chunks", "60", "-b", "128", "--output-frequency", "1")) == 0
    return out


def test_reference_run(reference):
    from imatui.formats import load

    imx = load(reference, lazy=False)
    assert imx.chunk_count == 60 and imx.chunk_size == 128
    assert imx["blk.0.attn_q.weight"].counts.tolist() == [60 * 128.0]
    assert imx.metadata["imatui.collect.nll_tokens"] == 60 * 63  # second half of each chunk, as llama


def test_sigkill_at_several_moments_then_resume(tiny_model, reference, tmp_path):
    out = tmp_path / "killed.gguf"
    args = _args(tiny_model, out, "--chunks", "60", "-b", "128", "--output-frequency", "1")
    seen = []
    for i in range(2):
        # the second kill comes after the first one's checkpoint, wherever a busy machine let that be
        kill_after = 3 if not seen else seen[0] + max(1, (60 - seen[0]) // 3)
        proc = _spawn(args + (["--resume"] if i else []))
        _run_until_checkpoint(proc, out, kill_after)
        proc.send_signal(signal.SIGKILL)  # stopped wherever it was, mid-write included
        proc.communicate()
        n = _chunks_in(out)  # the last checkpoint always opens, whatever the moment of the kill
        assert 0 < n < 60, f"the collector was not killed mid-run (at {n} chunks)"
        from imatui.formats import load

        imx = load(out, lazy=False)
        assert imx["blk.2.ffn_down.weight"].counts.tolist() == [n * 128.0]
        assert imx.metadata["imatui.collect.chunks_done"] == n
        assert imx.metadata["imatui.collect.finished"] is False  # the live view's "finished" (issue 11)
        seen.append(n)
    assert seen[1] > seen[0]
    proc = _spawn(args + ["--resume"])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"resuming after chunk {seen[1]}" in err
    assert not list(tmp_path.glob(".killed.gguf.*.tmp"))  # a kill mid-write leaves no debris behind
    _assert_same(out, reference)


def test_ctrl_c_writes_a_checkpoint_and_resume_completes(tiny_model, reference, tmp_path):
    out = tmp_path / "interrupted.gguf"
    args = _args(tiny_model, out, "--chunks", "60", "-b", "128", "--output-frequency", "20")
    proc = _spawn(args)
    # wait until it runs (first checkpoint at 20 chunks), then Ctrl-C before the end
    deadline = time.monotonic() + 120
    while _chunks_in(out) < 20 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    n = _chunks_in(out)
    if proc.returncode == 0:
        pytest.skip("the run finished before Ctrl-C reached it")
    assert proc.returncode == 130, err
    assert f"interrupted after {n} of 60 chunks" in err and 20 <= n < 60
    proc = _spawn(args + ["--resume"])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    _assert_same(out, reference)


def test_resume_refuses_other_text(tiny_model, reference, tmp_path, capsys):
    from imatui.collect.run import main

    other = tmp_path / "other.txt"
    other.write_text(TEXT.read_text()[::-1])
    out = tmp_path / "o.gguf"
    out.write_bytes(reference.read_bytes())
    rc = main([str(tiny_model), "-f", str(other), "-o", str(out), "-c", "128", "--resume", "--quiet"])
    assert rc == 2 and "another text" in capsys.readouterr().err


def test_two_processes_equal_one(tiny_model, tmp_path):
    from imatui.collect.run import main

    one = tmp_path / "one.gguf"
    assert main(_args(tiny_model, one, "--chunks", "24", "-b", "256", "--output-frequency", "5",
                      "--save-frequency", "10")) == 0
    two = tmp_path / "two.gguf"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "imatui", "collect",
                           *_args(tiny_model, two, "--chunks", "24", "-b", "256", "--output-frequency", "5",
                                  "--save-frequency", "10")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 x cpu" in proc.stderr
    _assert_same(one, two)
    # llama-imatrix's snapshot names, from both runs
    assert sorted(p.name for p in tmp_path.glob("two.gguf.at_*")) == ["two.gguf.at_10", "two.gguf.at_20"]
    _assert_same(tmp_path / "one.gguf.at_20", tmp_path / "two.gguf.at_20")


def test_in_file_sums_come_first(tiny_model, reference, tmp_path):
    from imatui.collect.run import main
    from imatui.formats import load

    out = tmp_path / "more.gguf"
    assert main(_args(tiny_model, out, "--chunks", "4", "-b", "256", "--in-file", str(reference))) == 0
    ref, more = load(reference, lazy=False), load(out, lazy=False)
    assert more.chunk_count == 64 and more.datasets == [str(TEXT), str(TEXT)]
    assert more.metadata["imatui.collect.chunks_done"] == 4
    assert more.metadata["imatui.collect.finished"] is True  # the final save says so; --in-file's is not taken
    e, r = more["blk.1.attn_k.weight"], ref["blk.1.attn_k.weight"]
    assert e.counts.tolist() == [64 * 128.0]
    # the first 4 chunks are also the reference's first 4: sums grow by a bit less than 4/60
    grow = e.sums2.astype(np.float64).sum() / r.sums2.astype(np.float64).sum()
    assert 1.0 < grow < 1.0 + 8 / 60


def test_snapshots_of_an_earlier_run_are_not_replaced_without_force(tiny_model, tmp_path, capsys):
    from imatui.collect.run import main
    from imatui.formats import load

    out = tmp_path / "s.gguf"
    old = tmp_path / "s.gguf.at_4"
    old.write_bytes(b"an earlier run's snapshot")
    later = tmp_path / "s.gguf.at_12"  # past this run's 8 chunks: not in the way
    later.write_bytes(b"kept")
    args = _args(tiny_model, out, "--chunks", "8", "-b", "512", "--save-frequency", "4")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"imatui: {old}: already exists (use --force to replace)\n"
    assert old.read_bytes() == b"an earlier run's snapshot" and not out.exists()
    assert main([*args, "--force"]) == 0
    assert load(old, lazy=False).chunk_count == 4 and load(tmp_path / "s.gguf.at_8", lazy=False).chunk_count == 8
    assert later.read_bytes() == b"kept"
    # --resume: the snapshots at counts already done are left alone (not rewritten, not refused);
    # one in the way of the chunks still to do is refused like any other
    first = tmp_path / "r.gguf"
    assert main(_args(tiny_model, first, "--chunks", "4", "-b", "512", "--save-frequency", "4")) == 0
    at4 = (tmp_path / "r.gguf.at_4").read_bytes()
    (tmp_path / "r.gguf.at_8").write_bytes(b"in the way")
    capsys.readouterr()
    resume = _args(tiny_model, first, "--chunks", "12", "-b", "512", "--save-frequency", "4", "--resume")
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "r.gguf.at_8: already exists" in err
    (tmp_path / "r.gguf.at_8").unlink()
    assert main(resume) == 0
    assert (tmp_path / "r.gguf.at_4").read_bytes() == at4
    assert [load(tmp_path / f"r.gguf.at_{n}", lazy=False).chunk_count for n in (8, 12)] == [8, 12]


def test_write_and_torch_errors_are_one_line_exit_2(tiny_model, tmp_path, capsys, monkeypatch):
    import errno

    import imatui.formats.write as write_module
    from imatui.collect import hooks
    from imatui.collect.run import main

    text_file = tmp_path / "a-file"
    text_file.write_text("not a folder")
    assert main(_args(tiny_model, text_file / "out.gguf", "--chunks", "2")) == 2
    assert capsys.readouterr().err == f"imatui: {text_file / 'out.gguf'}: {text_file} is not a folder\n"

    real_save, calls = write_module.save, []

    def disk_full_on_second_write(imatrix, path, **kw):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) + ".tmp")
        return real_save(imatrix, path, **kw)

    monkeypatch.setattr(write_module, "save", disk_full_on_second_write)
    out = tmp_path / "full.gguf"
    assert main(_args(tiny_model, out, "--chunks", "4", "-b", "128", "--output-frequency", "2")) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"imatui: {out}: cannot write it: No space left on device"
    assert [line for line in err if line.startswith("imatui:")] == err[-1:]  # the notes say "imatui collect:"
    assert "Traceback" not in "\n".join(err) and _chunks_in(out) == 2  # the first checkpoint is intact
    monkeypatch.setattr(write_module, "save", real_save)

    def oom(self):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total "
                                          "capacity of 79.1 GiB\nsecond line")

    monkeypatch.setattr(hooks.Collector, "end_step", oom)
    assert main(_args(tiny_model, tmp_path / "oom.gguf", "--chunks", "2")) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == ("imatui: collect stopped: CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a "
                       "total capacity of 79.1 GiB (a smaller --batch-size may fit)")


def test_one_process_checkpoint_does_not_copy_every_sum_into_one_array(tiny_model, reference, tmp_path,
                                                                        monkeypatch):
    """Without torchrun the sums are added as they are: no all-reduce buffer holding a second copy of
    every weight's sums (two processes: test_two_processes_equal_one). Same numbers as the reference."""
    from imatui.collect import distributed as D
    from imatui.collect.run import main

    real_all_sum, sizes = D.all_sum, []

    def spy(dist, array, device):
        sizes.append(np.asarray(array).size)
        return real_all_sum(dist, array, device)

    monkeypatch.setattr(D, "all_sum", spy)
    out = tmp_path / "one.gguf"
    assert main(_args(tiny_model, out, "--chunks", "60", "-b", "512", "--output-frequency", "20")) == 0
    assert sizes == []  # (it was one array of 3,101 values per checkpoint: every sum, plus the tail)
    _assert_same(out, reference)


def test_checkpoint_frequency_below_the_step_is_reported(tiny_model, tmp_path, capsys):
    from imatui.collect.run import main

    out = tmp_path / "o.gguf"
    assert main(_args(tiny_model, out, "--chunks", "8", "-b", "512", "--output-frequency", "2")) == 0
    err = capsys.readouterr().err
    assert ("--output-frequency 2 cut(s) the 4-chunk steps short at every checkpoint; a frequency of 4 or "
            "more keeps full steps") in err
    assert main(_args(tiny_model, tmp_path / "p.gguf", "--chunks", "8", "-b", "512", "--output-frequency", "4")) == 0
    assert "cut(s)" not in capsys.readouterr().err
