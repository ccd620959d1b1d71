"""Fraction records (format version 3): unsigned counts over a denominator, read back as the
float32 fractions they stand for, through every read path, and refused when malformed."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_modelrules.store import Fraction, RunWriter, open_run
from pytest_modelrules.store.format import fraction_values


def _expected(counts: np.ndarray, n: int) -> np.ndarray:
    """What the Recorder stored as float32 before fraction records: counts / n in float32."""
    with np.errstate(invalid="ignore"):
        return counts.astype(np.float32) / np.float32(n)


def _counts(rng: np.random.Generator, n: int, shape=(3, 4)) -> np.ndarray:
    dtype = np.uint8 if n <= 255 else np.uint16
    return rng.integers(0, n + 1, size=shape).astype(dtype)


@pytest.mark.parametrize("steps", [3, 40], ids=["few records", "a vectorised run"])
def test_fractions_read_back_bit_for_bit_as_float32_counts_over_n(tmp_path, steps):
    """Whatever the batch size of each step (the last batch of an epoch is smaller, an EVAL
    batch other again), every read path gives float32 counts / n, equal bit for bit to the
    division the Recorder made before, in a quarter of float32's bytes."""
    rng = np.random.default_rng(0)
    sizes = [64 if s % 7 else 41 for s in range(steps)]
    written, fractions = {}, {}
    with RunWriter(tmp_path / "run") as w:
        for step, n in enumerate(sizes):  # write() for the first tensor ...
            counts = _counts(rng, n)
            written[step] = _expected(counts, n)
            fractions[step] = Fraction(counts, n)
            w.write("frac", fractions[step], step)
        for step in range(steps):  # ... write_step() (the Recorder's) for the second
            w.write_step(step + steps, [("frac2", fractions[step])])
    run = open_run(tmp_path / "run")
    tensor = run.tensor("frac")
    values = tensor.values()
    assert list(values) == list(range(steps))
    for step, want in written.items():
        for got in (values[step], tensor.value(step), run.tensor("frac2").value(step + steps)):
            assert got.dtype == np.float32 and got.shape == (3, 4)
            np.testing.assert_array_equal(got, want)
        assert not values[step].flags.writeable  # as values() hands out every value
    stacked = tensor.series().stack()
    np.testing.assert_array_equal(stacked, np.stack([written[s] for s in range(steps)]))
    on_disk = (tmp_path / "run" / "workers" / "worker_0" / "tensors" / "frac.mrt").stat()
    assert on_disk.st_size < steps * (48 + 16 + 12 * 4)  # uint8 payloads, not float32


def test_an_empty_batch_reads_as_nan_without_a_warning(tmp_path):
    with RunWriter(tmp_path / "run") as w:
        w.write("frac", Fraction(np.zeros(5, np.uint8), 0), 0)
    with np.errstate(all="raise"):
        got = open_run(tmp_path / "run").tensor("frac").value(0)
    assert got.dtype == np.float32 and np.isnan(got).all()


def test_fractions_and_plain_values_of_one_tensor_read_one_by_one(tmp_path):
    """A tensor written as plain float32 at one step and as a fraction at another reads each
    value as written (the stacked read declines the mix)."""
    with RunWriter(tmp_path / "run") as w:
        w.write("t", np.full(3, 0.25, np.float32), 0)
        w.write("t", Fraction(np.array([1, 2, 3], np.uint8), 4), 1)
    values = open_run(tmp_path / "run").tensor("t").values()
    np.testing.assert_array_equal(values[0], [0.25, 0.25, 0.25])
    np.testing.assert_array_equal(values[1], [0.25, 0.5, 0.75])


@pytest.mark.parametrize(
    "value,error,message",
    [
        (Fraction(np.array([0.5], np.float32), 2), TypeError, "must be unsigned integers"),
        (Fraction(np.array([1], np.int16), 2), TypeError, "must be unsigned integers"),
        (Fraction(np.array([1], np.uint8), -1), ValueError, r"must be in \[0, 2\*\*32\)"),
        (Fraction(np.array([1], np.uint8), 2**32), ValueError, "denominator must be in"),
    ],
    ids=["float counts", "signed counts", "negative denominator", "too large a denominator"],
)
def test_a_malformed_fraction_is_refused_before_anything_is_written(
    tmp_path, value, error, message
):
    with RunWriter(tmp_path / "run") as w:
        with pytest.raises(error, match=message):
            w.write("t", value, 0)
        w.write("ok", np.float32(1.0), 0)
    run = open_run(tmp_path / "run")
    assert run.tensor_names() == ["ok"]


def test_fraction_values_divides_each_row_by_its_own_denominator():
    counts = np.array([[1, 2], [3, 4]], np.uint8)
    got = fraction_values(counts, np.array([2, 8]))
    np.testing.assert_array_equal(got, np.array([[0.5, 1.0], [0.375, 0.5]], np.float32))


def test_a_version_2_run_reads_as_before(tmp_path):
    """A run written before fraction records (float32 fractions, run.json version 2) opens
    and reads unchanged."""
    import json

    root = tmp_path / "run"
    with RunWriter(root) as w:
        for step in range(5):
            w.write("frac", np.full(4, step / 8, np.float32), step)
    info = json.loads((root / "run.json").read_text())
    (root / "run.json").write_text(json.dumps({**info, "version": 2}))
    values = open_run(root).tensor("frac").values()
    assert [float(v[0]) for v in values.values()] == [s / 8 for s in range(5)]
    assert all(v.dtype == np.float32 for v in values.values())


def test_fractions_of_two_workers_read_per_worker(tmp_path):
    """Two ranks each store their own batch's fractions (different batch sizes): each
    worker's values divide by that worker's denominators, and the default (lowest rank)
    reads rank 0's, stacked across steps."""
    root = tmp_path / "run"
    rng = np.random.default_rng(1)
    w0 = RunWriter(root, "worker_0", rank=0, num_workers=2)
    w1 = RunWriter(root, "worker_1", rank=1, num_workers=2)
    expected: dict[str, dict[int, np.ndarray]] = {"worker_0": {}, "worker_1": {}}
    for step in range(6):
        for w, name, n in ((w0, "worker_0", 32), (w1, "worker_1", 30 + step)):
            counts = _counts(rng, n, shape=(5,))
            expected[name][step] = _expected(counts, n)
            w.write("frac", Fraction(counts, n), step)
    w0.close()
    w1.close()
    tensor = open_run(root).tensor("frac")
    for worker, values in expected.items():
        for step, want in values.items():
            np.testing.assert_array_equal(tensor.value(step, worker=worker), want)
    np.testing.assert_array_equal(
        tensor.series().stack(), np.stack([expected["worker_0"][s] for s in range(6)])
    )


def test_fractions_read_while_written_stack_across_refreshes(tmp_path):
    """A run read while training writes it holds a tensor's records in several buffers (one
    per refresh); the stacked read divides each piece by its own records' denominators."""
    rng = np.random.default_rng(2)
    expected = []
    with RunWriter(tmp_path / "run") as w:
        run = None
        for step in range(12):
            n = 16 if step % 5 else 9
            counts = _counts(rng, n, shape=(2, 3))
            expected.append(_expected(counts, n))
            w.write("frac", Fraction(counts, n), step)
            if step in (4, 8):
                w.end_step()
                if run is None:
                    run = open_run(tmp_path / "run")
                else:
                    run.refresh()
                assert len(run.tensor("frac").values()) == step + 1  # reads what is there
    run.refresh()
    stacked = run.tensor("frac").series().stack()
    np.testing.assert_array_equal(stacked, np.stack(expected))


def test_an_in_memory_run_holds_a_fraction_as_the_values_a_reader_gives(tmp_path):
    """MemoryRunBuilder takes what RunWriter takes: a Fraction reads back as float32
    counts / n, in memory and once saved to disk; a malformed one is refused the same way."""
    from pytest_modelrules.store.memory import MemoryRunBuilder

    counts = np.array([0, 3, 8], np.uint8)
    builder = MemoryRunBuilder()
    builder.write("frac", Fraction(counts, 8), 0)
    with pytest.raises(TypeError, match="must be unsigned integers"):
        builder.write("bad", Fraction(np.array([1.0]), 2), 0)
    builder.end_step()
    run = builder.run()
    np.testing.assert_array_equal(run.tensor("frac").value(0), _expected(counts, 8))
    saved = run.save(tmp_path / "saved")
    np.testing.assert_array_equal(saved.tensor("frac").value(0), _expected(counts, 8))


def test_the_reference_array_at_reads_plain_and_fraction_records():
    """``format.array_at``, the few lines docs/format.md points a reader in another language
    to: a plain record as a view of the bytes, a fraction record as counts / denominator."""
    from pytest_modelrules.store.format import array_at, encode_record, parse_records

    counts = np.array([[0, 3], [5, 6]], np.uint8)
    plain = np.arange(6, dtype=np.float32).reshape(2, 3)
    buf = b"".join(
        encode_record(value, step=s, mode=1, mode_step=s, wall_time=0.0)
        for s, value in enumerate([plain, Fraction(counts, 6)])
    )
    index = parse_records(buf, "records", 0)
    first = array_at(buf, index, 0)
    np.testing.assert_array_equal(first, plain)
    assert first.base is not None and not first.flags.writeable  # a view of the bytes
    second = array_at(buf, index, 1)
    np.testing.assert_array_equal(second, _expected(counts, 6))
    assert second.dtype == np.float32 and not second.flags.writeable
