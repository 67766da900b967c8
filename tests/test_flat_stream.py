"""The flat index written as a stream (storage.indexes.write_flat_index): FAISS's own bytes, in
memory bounded by one chunk, and what the indexing pipeline now commits."""

import tracemalloc

import faiss
import numpy as np
import pytest

import saliencydb
from saliencydb.storage.indexes import build_index, flat_file_layout, new_index, write_flat_index


def _chunks(seed: int, sizes: list[int], dim: int, start: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        out.append((np.arange(start, start + n, dtype=np.int64) * 3 + 1, rng.normal(size=(n, dim)).astype(np.float32)))
        start += n
    return out


def _faiss_bytes(index, path) -> bytes:
    faiss.write_index(index, str(path))
    return path.read_bytes()


@pytest.mark.parametrize("sizes", [[7, 1, 12], [1], []])
def test_the_stream_is_faiss_own_file_byte_for_byte(tmp_path, sizes):
    chunks = _chunks(0, sizes, 6)
    want = _faiss_bytes(build_index(6, lambda: iter(chunks), "flat"), tmp_path / "want.faiss")
    assert write_flat_index(tmp_path / "got.faiss", 6, iter(chunks)) == sum(sizes)
    assert (tmp_path / "got.faiss").read_bytes() == want
    assert flat_file_layout(tmp_path / "got.faiss") == (6, sum(sizes))
    back = faiss.read_index(str(tmp_path / "got.faiss"))
    assert back.ntotal == sum(sizes) and back.d == 6


def test_extending_a_file_equals_extending_the_index(tmp_path):
    first, more = _chunks(1, [9, 4], 5), _chunks(2, [3, 8], 5, start=100)
    base = build_index(5, lambda: iter(first), "flat")
    write_flat_index(tmp_path / "base.faiss", 5, iter(first))
    want = _faiss_bytes(build_index(5, lambda: iter(more), "flat", base=base), tmp_path / "want.faiss")
    assert write_flat_index(tmp_path / "got.faiss", 5, iter(more), base=tmp_path / "base.faiss") == 24
    assert (tmp_path / "got.faiss").read_bytes() == want


def test_other_files_are_not_taken_for_a_flat_index(tmp_path):
    rows = np.random.default_rng(3).normal(size=(400, 8)).astype(np.float32)
    ivf = build_index(8, lambda: iter([(np.arange(400), rows)]), "ivf", 400)
    faiss.write_index(ivf, str(tmp_path / "ivf.faiss"))
    assert flat_file_layout(tmp_path / "ivf.faiss") is None
    write_flat_index(tmp_path / "flat.faiss", 8, iter([(np.arange(400), rows)]))
    data = (tmp_path / "flat.faiss").read_bytes()
    (tmp_path / "cut.faiss").write_bytes(data[:-8])  # truncated: its size no longer matches its header
    assert flat_file_layout(tmp_path / "cut.faiss") is None
    assert flat_file_layout(tmp_path / "missing.faiss") is None
    with pytest.raises(ValueError, match="not a flat index file"):
        write_flat_index(tmp_path / "x.faiss", 8, iter([]), base=tmp_path / "ivf.faiss")
    with pytest.raises(ValueError, match="8 dimensions"):
        write_flat_index(tmp_path / "y.faiss", 8, iter([(np.arange(3), rows[:3, :5])]))
    assert new_index(8, "flat").ntotal == 0


def test_memory_holds_one_chunk_not_the_index(tmp_path):
    dim, rows, chunks = 512, 1024, 40  # 80 MiB of vectors, 2 MiB per chunk

    def gen():
        rng = np.random.default_rng(4)
        for c in range(chunks):
            yield np.arange(c * rows, (c + 1) * rows), rng.random((rows, dim), dtype=np.float32)

    tracemalloc.start()
    try:
        write_flat_index(tmp_path / "big.faiss", dim, gen())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    total = chunks * rows * dim * 4
    assert peak < 4 * rows * dim * 4 + (1 << 20) < total / 5  # a few chunks' worth, against 80 MiB
    assert flat_file_layout(tmp_path / "big.faiss") == (dim, chunks * rows)


def test_an_index_job_commits_the_streamed_index(digits_copy):
    """The committed flat index holds exactly the database's search vectors, under their sample ids."""
    db = saliencydb.open(digits_copy)
    entry = db.manifest.indexes["saliency"]
    assert (entry.kind, entry.built_kind) == ("auto", "flat")  # the default: auto, exact flat at this size
    assert flat_file_layout(digits_copy / entry.file) == (db.manifest.n_units, db.manifest.rows())
    index = db.snapshot.read_index("saliency")
    ids = faiss.vector_to_array(index.id_map)
    stored = faiss.rev_swig_ptr(faiss.downcast_index(index.index).get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    want = db.vectors("saliency", ids)
    np.testing.assert_allclose(stored, want, rtol=1e-6, atol=1e-7)
    db.close()
