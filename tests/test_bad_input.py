"""Bad input: one line on stderr naming the file and the problem, exit 2, never a traceback, and
never a silently different number (truncation and byte-flip corpora over the real fixtures)."""

from __future__ import annotations

import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest

from imatui.cli import main
from imatui.errors import CorruptError, FormatError, ImatrixError, NotFoundError, TruncatedError
from imatui.formats import load, save
from imatui.imatrix import Entry, Imatrix
from imatui.printers import tensor_row
from imatui.stats import compute_stats
from tests.conftest import FIXTURES

GGUF = FIXTURES / "smollm2-prose.imatrix.gguf"
DAT = FIXTURES / "smollm2-prose.imatrix.dat"
GGUF_DATA_START = 25600  # first tensor's data offset in GGUF (header, KVs, tensor infos, padding before it)
GGUF_DATA_END = 631332  # end of the last tensor's data; zero padding follows to the 32-byte alignment


def cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, path, *words: str) -> None:
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"imatui: {path}: "), lines[0]
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


def rows_of(report) -> list[str]:
    return [tensor_row(t) for t in report.tensors] + [
        f"{x.layer} {x.sum!r} {x.zd!r} {x.cossim!r}" for x in report.layers]


@pytest.fixture(scope="module")
def reference_rows() -> dict[str, list[str]]:
    return {"gguf": rows_of(compute_stats(load(GGUF))), "dat": rows_of(compute_stats(load(DAT)))}


def outcome(path) -> list[str] | ImatrixError:
    """The statistics of `path`, or the ImatrixError it raised (anything else fails the test)."""
    try:
        return rows_of(compute_stats(load(path)))
    except ImatrixError as exc:
        return exc


# --- files that are not imatrices -------------------------------------------------------------

def test_missing_file(capsys, tmp_path):
    p = tmp_path / "nope.gguf"
    rc, out, err = cli(capsys, "stats", p)
    assert_one_line_error(rc, err, p, "no such file")
    assert out == ""
    with pytest.raises(NotFoundError):
        load(p)


def test_directory(capsys, tmp_path):
    rc, _, err = cli(capsys, "stats", tmp_path)
    assert_one_line_error(rc, err, tmp_path, "directory")


def test_empty_file(capsys, tmp_path):
    p = tmp_path / "empty.gguf"
    p.write_bytes(b"")
    rc, _, err = cli(capsys, "stats", p)
    assert_one_line_error(rc, err, p, "empty")


@pytest.mark.parametrize("content", [
    np.random.default_rng(7).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
    b"These are not the weights you are looking for.\n" * 40,
    b"\x01\x00\x00\x00" + b"\xff" * 60,  # one entry whose name length is absurd
    b"GGUF" + b"\x00" * 3,  # the magic, then nothing
], ids=["random-bytes", "text", "legacy-absurd-name", "gguf-magic-only"])
def test_not_an_imatrix(capsys, tmp_path, content):
    p = tmp_path / "x.gguf"
    p.write_bytes(content)
    rc, _, err = cli(capsys, "stats", p)
    assert_one_line_error(rc, err, p)
    with pytest.raises(FormatError):
        load(p)


def test_gguf_model_is_not_an_imatrix(capsys, tmp_path):
    from gguf import GGUFWriter

    p = tmp_path / "model.gguf"
    w = GGUFWriter(p, arch="llama")
    w.add_block_count(1)
    w.add_tensor("blk.0.attn_q.weight", np.ones((8, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    rc, _, err = cli(capsys, "stats", p)
    assert_one_line_error(rc, err, p, "model", "llama", "not an imatrix")


def test_legacy_with_absurd_value_count(capsys, tmp_path):
    name = b"blk.0.attn_k.weight"
    p = tmp_path / "absurd.dat"
    p.write_bytes(struct.pack("<ii", 1, len(name)) + name + struct.pack("<ii", 10, 2**31 - 1)
                  + b"\x00" * 64)
    rc, _, err = cli(capsys, "stats", p)
    assert_one_line_error(rc, err, p, "blk.0.attn_k.weight")
    with pytest.raises(TruncatedError):
        load(p)


def test_legacy_with_absurd_entry_count(capsys, tmp_path):
    data = bytearray(DAT.read_bytes())
    data[0:4] = struct.pack("<i", 10**9)
    p = tmp_path / "absurd-count.dat"
    p.write_bytes(bytes(data))
    rc, _, err = cli(capsys, "stats", p)
    assert_one_line_error(rc, err, p)


def test_legacy_negative_call_count(capsys, tmp_path):
    data = bytearray(DAT.read_bytes())
    name_len = struct.unpack_from("<i", data, 4)[0]
    struct.pack_into("<i", data, 8 + name_len, -3)  # ncall of the first entry
    p = tmp_path / "neg.dat"
    p.write_bytes(bytes(data))
    rc, _, err = cli(capsys, "stats", p)
    assert_one_line_error(rc, err, p, "blk.0.attn_k.weight", "negative")


# --- imatrices with impossible values ---------------------------------------------------------

def small_imatrix(sums2=None, counts=None, name="blk.0.ffn_down_exps.weight", sums=None) -> Imatrix:
    rng = np.random.default_rng(3)
    if sums2 is None:
        sums2 = rng.random((4, 16), dtype=np.float32) * 10
    if counts is None:
        counts = np.array([5.0, 7.0, 0.0, 3.0])
    other = Entry.from_arrays("blk.0.attn_k.weight", rng.random(16, dtype=np.float32), [12.0])
    e = Entry.from_arrays(name, sums2, counts, sums)
    return Imatrix(entries=dict(sorted({name: e, other.name: other}.items())), datasets=["t"],
                   chunk_count=1, chunk_size=512)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_name_the_tensor(capsys, tmp_path, bad):
    sums2 = np.full((4, 16), 2.0, dtype=np.float32)
    sums2[1, 5] = bad
    p = tmp_path / "nan.imatrix.gguf"
    save(small_imatrix(sums2), p)
    rc, out, err = cli(capsys, "stats", p)
    assert_one_line_error(rc, err, p, "blk.0.ffn_down_exps.weight", "NaN or Inf")
    assert out == ""
    with pytest.raises(CorruptError):
        compute_stats(load(p))


def test_non_finite_value_in_an_unused_expert_is_still_reported(capsys, tmp_path):
    sums2 = np.full((4, 16), 2.0, dtype=np.float32)
    sums2[2, 0] = np.nan  # expert 2 has count 0: its row is skipped, but the file is still damaged
    p = tmp_path / "nan-unused.imatrix.gguf"
    save(small_imatrix(sums2), p)
    rc, _, err = cli(capsys, "stats", p)
    assert_one_line_error(rc, err, p, "blk.0.ffn_down_exps.weight")


def test_nan_in_legacy_values(capsys, tmp_path):
    data = bytearray(DAT.read_bytes())
    name_len = struct.unpack_from("<i", data, 4)[0]
    struct.pack_into("<f", data, 16 + name_len + 4 * 10, float("nan"))  # 11th value of entry 1
    p = tmp_path / "nan.dat"
    p.write_bytes(bytes(data))
    rc, _, err = cli(capsys, "stats", p)
    assert_one_line_error(rc, err, p, "blk.0.attn_k.weight", "NaN or Inf")


@pytest.mark.parametrize("count", [-1.0, np.nan, np.inf])
def test_corrupt_counts(capsys, tmp_path, count):
    p = tmp_path / "counts.imatrix.gguf"
    save(small_imatrix(counts=np.array([5.0, count, 1.0, 3.0])), p)
    rc, _, err = cli(capsys, "stats", p)
    assert_one_line_error(rc, err, p, "blk.0.ffn_down_exps.weight", "counts")
    with pytest.raises(CorruptError):
        load(p)


def test_negative_sums_of_squares(capsys, tmp_path):
    sums2 = np.full((4, 16), 2.0, dtype=np.float32)
    sums2[0, 3] = -1.0
    p = tmp_path / "neg.imatrix.gguf"
    save(small_imatrix(sums2), p)
    rc, _, err = cli(capsys, "stats", p)
    assert_one_line_error(rc, err, p, "blk.0.ffn_down_exps.weight", "negative")


def test_zero_counts_are_skipped_and_said(capsys, tmp_path):
    sums2 = np.arange(64, dtype=np.float32).reshape(4, 16)
    sums2[2] = 0.0  # llama leaves an expert that was never hit at zero
    p = tmp_path / "zero.imatrix.gguf"
    save(small_imatrix(sums2), p)
    rc, out, err = cli(capsys, "stats", p)
    assert rc == 0 and err == ""
    assert "1 matrices with a zero count were skipped" in out
    report = compute_stats(load(p))
    t = report.tensor("blk.0.ffn_down_exps.weight")
    assert t.n == 48 and t.skipped_matrices == 1 and t.experts_unused == 1
    assert t.expert_counts == [5, 7, 0, 3]
    live = np.concatenate([sums2[0] / 5, sums2[1] / 7, sums2[3] / 3])
    assert t.sum == pytest.approx(float(live.sum()), rel=1e-6)
    assert report.skipped_matrices == 1


def test_a_tensor_with_only_zero_counts_is_skipped_and_said(capsys, tmp_path):
    p = tmp_path / "allzero.imatrix.gguf"
    save(small_imatrix(sums2=np.zeros((4, 16), np.float32), counts=np.zeros(4)), p)
    rc, out, err = cli(capsys, "stats", p)
    assert rc == 0
    assert "blk.0.ffn_down_exps.weight skipped" in out
    assert [t.name for t in compute_stats(load(p)).tensors] == ["blk.0.attn_k.weight"]


def _rewrite_gguf(src, dst, edit) -> None:
    """Copy a GGUF imatrix tensor by tensor through gguf-py, letting `edit(name, array)` change shapes."""
    from gguf import GGUFReader, GGUFWriter

    r = GGUFReader(src)
    w = GGUFWriter(dst, arch="")
    w.kv_data[0].pop("general.architecture", None)
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["x"])
    w.add_uint32("imatrix.chunk_count", 40)
    w.add_uint32("imatrix.chunk_size", 512)
    for t in r.tensors:
        arr = edit(t.name, np.array(t.data, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)]))
        if arr is not None:
            w.add_tensor(t.name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("case", ["two-counts-for-a-dense-row", "rows-vs-counts", "missing-counts",
                                  "missing-in_sum2", "in_sum-size"])
def test_shape_mismatch(capsys, tmp_path, case):
    target = "blk.3.attn_q.weight"

    def edit(name, arr):
        if not name.startswith(target + "."):
            return arr
        suffix = name[len(target):]
        if case == "two-counts-for-a-dense-row" and suffix == ".counts":
            return np.array([arr[0], arr[0]], dtype=np.float32)  # 576 values, 2 counts: 2 x 288?
        if case == "rows-vs-counts" and suffix == ".in_sum2":
            return arr.reshape(2, 288)  # 2 rows, 1 count
        if case == "missing-counts" and suffix == ".counts":
            return None
        if case == "missing-in_sum2" and suffix == ".in_sum2":
            return None
        return arr

    src = FIXTURES / "smollm2-prose.imatrix.gguf"
    p = tmp_path / f"{case}.gguf"
    if case == "in_sum-size":
        im = load(src).materialize()
        e = im.entries[target]
        im.entries[target] = Entry(name=target, shape=e.shape, counts=e.counts, _sums2=e.sums2,
                                   _sums=np.ones(e.size, np.float32))
        save(im, p)
        # shorten the in_sum tensor: rewrite through gguf-py
        q = tmp_path / "tmp.gguf"
        p.rename(q)
        _rewrite_gguf(q, p, lambda n, a: a[..., :100] if n == target + ".in_sum" else a)
    else:
        _rewrite_gguf(src, p, edit)
    rc, _, err = cli(capsys, "stats", p)
    assert_one_line_error(rc, err, p, target)
    with pytest.raises(CorruptError):
        load(p)


# --- a lazily read file that changes under the reader ------------------------------------------

def test_lazy_gguf_truncated_after_loading(tmp_path):
    p = tmp_path / "lazy.gguf"
    p.write_bytes(GGUF.read_bytes())
    im = load(p)  # header only; tensors are read when statistics ask for them
    with open(p, "r+b") as f:
        f.truncate(GGUF_DATA_START + 5000)
    with pytest.raises(TruncatedError) as info:
        compute_stats(im)
    assert str(info.value).startswith(f"{p}: ")


def test_lazy_gguf_rewritten_after_loading(tmp_path):
    p = tmp_path / "lazy.gguf"
    data = GGUF.read_bytes()
    p.write_bytes(data)
    im = load(p)
    p.write_bytes(data[:-4] + b"\x00\x00\x80\x7f")  # same size, new mtime, last count changed
    import os

    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(TruncatedError, match="changed"):
        compute_stats(im)


# --- truncation corpus ------------------------------------------------------------------------

def _gguf_cut_offsets() -> list[int]:
    size = GGUF.stat().st_size
    every = list(range(0, 400))  # magic, version, counts, every KV, the first tensor infos
    header = list(range(400, GGUF_DATA_START + 64, 53))  # through all 420 tensor infos and the padding
    data = np.linspace(GGUF_DATA_START + 64, size - 1, 50).astype(int).tolist()
    return every + header + data + [size - 4, size - 1]


def test_truncated_gguf_corpus(tmp_path, reference_rows):
    data = GGUF.read_bytes()
    p = tmp_path / "cut.gguf"
    kinds: dict[str, int] = {}
    for off in _gguf_cut_offsets():
        p.write_bytes(data[:off])
        res = outcome(p)
        if isinstance(res, ImatrixError):
            assert "\n" not in str(res) and str(res).startswith(f"{p}: "), (off, str(res))
            assert off < GGUF_DATA_END, off
            kinds[type(res).__name__] = kinds.get(type(res).__name__, 0) + 1
        else:
            # only a cut inside the zero padding after the last tensor may still load, and then
            # it must give exactly the same numbers
            assert off >= GGUF_DATA_END and res == reference_rows["gguf"], off
            kinds["same"] = kinds.get("same", 0) + 1
    assert kinds["same"] == len([o for o in _gguf_cut_offsets() if o >= GGUF_DATA_END])
    assert kinds["TruncatedError"] > 500


def test_truncated_dat_corpus(tmp_path, reference_rows):
    data = DAT.read_bytes()
    size = len(data)
    p = tmp_path / "cut.dat"
    offsets = list(range(0, 400)) + np.linspace(400, size - 200, 50).astype(int).tolist() + list(
        range(size - 200, size))  # the last entry's values and the chunk/dataset trailer
    same = errors = 0
    for off in offsets:
        p.write_bytes(data[:off])
        res = outcome(p)
        if isinstance(res, ImatrixError):
            assert "\n" not in str(res) and str(res).startswith(f"{p}: "), (off, str(res))
            errors += 1
        else:
            assert res == reference_rows["dat"], off
            same += 1
    # the trailer is optional: a cut right after the last value is a complete legacy file
    assert same <= 2 and errors == len(offsets) - same


def test_truncated_files_through_the_cli(capsys, tmp_path):
    data = GGUF.read_bytes()
    for off in (3, 23, 100, 5000, GGUF_DATA_START + 1000, GGUF_DATA_END - 2):
        p = tmp_path / f"cut{off}.gguf"
        p.write_bytes(data[:off])
        rc, out, err = cli(capsys, "stats", p)
        assert_one_line_error(rc, err, p)
        assert out == ""


# --- random byte flips ------------------------------------------------------------------------

def _tensor_at(offset: int):
    from gguf import GGUFReader

    for t in GGUFReader(GGUF).tensors:
        if t.data_offset <= offset < t.data_offset + t.n_bytes:
            return t
    return None


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_random_byte_flips(capsys, tmp_path, fmt):
    src = GGUF if fmt == "gguf" else DAT
    data = src.read_bytes()
    rng = np.random.default_rng(20240 + len(fmt))
    p = tmp_path / f"flip.{fmt}"
    n_variants = 120 if fmt == "gguf" else 80
    results = {"error": 0, "valid": 0}
    for i in range(n_variants):
        buf = bytearray(data)
        # half the variants hit the header region, where parsing decisions are made
        hi = GGUF_DATA_START if (fmt == "gguf" and i % 2 == 0) else len(buf)
        where = rng.integers(0, hi if fmt == "gguf" else min(hi, 4000 if i % 2 == 0 else hi),
                             size=int(rng.integers(1, 4)))
        for w in where:
            buf[w] ^= int(rng.integers(1, 256))
        p.write_bytes(bytes(buf))
        with warnings.catch_warnings(record=True) as caught:  # a warning is more lines on stderr
            warnings.simplefilter("always")
            rc, out, err = cli(capsys, "stats", p, "--format", "csv")
        assert not caught, (i, [str(w.message) for w in caught])
        assert rc in (0, 2), (i, err)
        if rc == 2:
            assert_one_line_error(rc, err, p)
            results["error"] += 1
            continue
        assert err == "" and out.startswith("name,layer,kind,sum")
        # a valid result: every number it printed is finite (NaN or Inf would have been an error)
        cells = [c for line in out.splitlines()[1:] for c in line.split(",")[3:]]
        assert not [c for c in cells if c.lower() in ("nan", "inf", "-inf")], i
        results["valid"] += 1
    # both outcomes occur: header damage is caught, a changed float in the data is a valid file
    assert results["error"] > 10 and results["valid"] > 10, results


def test_flip_to_nan_in_gguf_data_is_reported(capsys, tmp_path):
    data = bytearray(GGUF.read_bytes())
    rng = np.random.default_rng(5)
    for off in rng.integers(GGUF_DATA_START, len(data) - 4, 12):
        off = int(off) & ~3  # a float's first byte
        t = _tensor_at(off)
        buf = bytearray(data)
        buf[off:off + 4] = struct.pack("<f", float("nan"))
        p = tmp_path / "nan.gguf"
        p.write_bytes(bytes(buf))
        rc, _, err = cli(capsys, "stats", p)
        base = t.name.rsplit(".", 1)[0]
        assert_one_line_error(rc, err, p, base)


# --- a real process -----------------------------------------------------------------------------

def test_subprocess_bad_input_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(GGUF.read_bytes()[:9000])
    for target, word in ((bad, "truncated"), (tmp_path / "missing.gguf", "no such file")):
        proc = subprocess.run([sys.executable, "-m", "imatui", "stats", str(target)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith(f"imatui: {target}: ") and word in proc.stderr


# --- nothing the user had is overwritten ---------------------------------------------------------

@pytest.mark.parametrize("cmd", ["convert", "merge"])
def test_refuses_to_overwrite_without_force(capsys, tmp_path, cmd):
    out = tmp_path / "existing.gguf"
    before = b"precious bytes, not an imatrix"
    out.write_bytes(before)
    args = ([cmd, GGUF, "-o", out] if cmd == "convert"
            else [cmd, GGUF, FIXTURES / "smollm2-code.imatrix.gguf", "-o", out])
    rc, _, err = cli(capsys, *args)
    assert_one_line_error(rc, err, out, "--force")
    assert out.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["existing.gguf"]  # no temporary left
    rc, _, err = cli(capsys, *args, "--force")
    assert rc == 0
    assert out.read_bytes() != before and load(out).chunk_count in (40, 80)


def test_refuses_to_overwrite_an_input(capsys, tmp_path):
    p = tmp_path / "in.gguf"
    p.write_bytes(GGUF.read_bytes())
    rc, _, err = cli(capsys, "convert", p, "-o", p, "--force")
    assert rc == 2 and "input" in err and err.count("\n") == 1
    assert p.read_bytes() == GGUF.read_bytes()


def test_file_truncated_while_its_header_is_parsed_is_an_error_not_a_crash(tmp_path):
    """llama-imatrix rewrites its file in place. gguf-py parses through a memory map, and a map of a
    file truncated under it kills the process (SIGBUS): the header is parsed from a private copy."""
    path = tmp_path / "live.imatrix.gguf"
    path.write_bytes(GGUF.read_bytes())
    child = r"""
import os, sys, gguf
from imatui.errors import ImatrixError
from imatui.formats import load
path = sys.argv[1]
build = gguf.GGUFReader._build_tensor_info
def truncate_first(self, offs, count):  # the writer starts over while the tensor list is parsed
    os.truncate(path, 64)
    return build(self, offs, count)
gguf.GGUFReader._build_tensor_info = truncate_first
try:
    load(path)
except ImatrixError as exc:
    print("error:", exc)
"""
    run = subprocess.run([sys.executable, "-c", child, str(path)], capture_output=True, text=True, timeout=120,
                         cwd=str(FIXTURES.parents[1]))
    assert run.returncode == 0, (run.returncode, run.stderr[-500:])  # -7 would be SIGBUS
    assert run.stdout.startswith(f"error: {path}: ") and "changed while it was being read" in run.stdout
    assert path.stat().st_size == 64  # (the child did truncate it)


def test_a_header_longer_than_the_first_copy_is_parsed_whole(monkeypatch):
    from imatui.formats import gguf as gguf_format

    want = load(GGUF, lazy=False)
    monkeypatch.setattr(gguf_format, "_HEADER_PREFIX", 256)  # the tensor list goes on far beyond
    got = load(GGUF, lazy=False)
    assert list(got.entries) == list(want.entries) and got.datasets == want.datasets
    for name, e in want.entries.items():
        assert np.array_equal(got[name].sums2, e.sums2) and np.array_equal(got[name].counts, e.counts)
