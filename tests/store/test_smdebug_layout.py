"""The reader of SageMaker Debugger's layout: the real fixture bit for bit, our writer
against it, dtypes smdebug gets wrong, workers, refresh, and hostile files."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from pytest_modelrules.exceptions import (
    CorruptRunError,
    InvalidWorker,
    NoMoreData,
    StepNotYetAvailable,
    StepUnavailable,
)
from pytest_modelrules.rules.custom import Rule, invoke_rule
from pytest_modelrules.store import open_run
from pytest_modelrules.store.smdebug_writer import SMDebugWriter
from pytest_modelrules.store.tfrecord import (
    SMDEBUG_FOOTER,
    decode_event,
    encode_event,
    frame_record,
    iter_records,
    masked_crc,
)

NAMES = [
    "CrossEntropyLoss_output_0",
    "CrossEntropyLoss_input_0",
    "CrossEntropyLoss_input_1",
    "layer1.relu_output_0",
    "layer2.relu_output_0",
]


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_fixture_reads_back_bit_for_bit(smdebug_fixture_dir, smdebug_truth):
    run = open_run(smdebug_fixture_dir)
    assert run.layout == "smdebug"
    assert run.has_ended
    assert run.num_workers == 1 and run.workers() == ["worker_0"]
    assert run.tensor_names() == sorted(NAMES)
    checked = 0
    for key, truth in smdebug_truth.items():
        if key == "__steps__":
            continue
        g, name = key.split("/", 1)
        got = run.tensor(name).value(int(g))
        assert same(got, truth), key
        checked += 1
    assert checked == 200
    # the same values through the bulk path
    for name in NAMES:
        values = run.tensor(name).values()
        assert all(same(v, smdebug_truth[f"{g}/{name}"]) for g, v in values.items())


def test_fixture_steps_per_mode(smdebug_fixture_dir, smdebug_truth):
    run = open_run(smdebug_fixture_dir)
    rows = smdebug_truth["__steps__"]
    saved = rows[rows[:, 3] == 1]
    assert run.steps() == saved[:, 0].tolist()
    assert run.steps("GLOBAL") == saved[:, 0].tolist()
    for mode, label in ((1, "TRAIN"), (2, "EVAL")):
        sel = saved[saved[:, 1] == mode]
        assert run.steps(label) == sorted(sel[:, 2].tolist())
        for g, _m, ms, _s in sel.tolist():
            assert run.mode(g) == mode and run.mode_step(g) == ms
            assert run.global_step(label, ms) == g
            assert same(
                run.tensor("CrossEntropyLoss_input_1").value(ms, mode=label),
                smdebug_truth[f"{g}/CrossEntropyLoss_input_1"],
            )
    assert run.tensor("CrossEntropyLoss_output_0").steps("EVAL") == list(range(16))
    assert run.collection("losses").tensor_names == ["CrossEntropyLoss_output_0"]
    assert run.tensor_names(collection="relu_output") == [
        "layer1.relu_output_0",
        "layer2.relu_output_0",
    ]


def _first_wall_time(path: Path) -> float:
    buf = path.read_bytes()
    start, end = iter_records(buf)[0]
    return decode_event(buf, start + 12, end - 4).wall_time


def test_writer_reproduces_the_fixture_files(tmp_path, smdebug_fixture_dir, smdebug_truth):
    fx = smdebug_fixture_dir
    cols = json.loads(next((fx / "collections").rglob("*.json")).read_text())["collections"]
    out = tmp_path / "run"
    w = SMDebugWriter(out, collections=cols)
    for g, mode, ms, _saved in smdebug_truth["__steps__"].tolist():
        wall = _first_wall_time(fx / "events" / f"{g:012d}" / f"{g:012d}_worker_0.tfevents")
        for name in NAMES:
            w.write(name, smdebug_truth[f"{g}/{name}"], g, mode, ms, wall_time=wall)
    w.close()
    ours = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(fx) for p in fx.rglob("*") if p.is_file())
    assert ours == theirs
    differing = [str(p) for p in theirs if (out / p).read_bytes() != (fx / p).read_bytes()]
    assert differing == []
    run = open_run(out)
    for g in (0, 7, 39):
        assert same(run.tensor(NAMES[1]).value(g), smdebug_truth[f"{g}/{NAMES[1]}"])


ALL_DTYPES = [
    "float16", "float32", "float64", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128",
]  # fmt: skip


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (2, 3), (1,) * 12])
def test_every_dtype_round_trips(tmp_path, shape):
    rng = np.random.default_rng(1)
    w = SMDebugWriter(tmp_path / "r")
    arrays = {}
    for step in (0, 1):
        for dt in ALL_DTYPES:
            a = (rng.standard_normal(shape) * 100).astype(dt)
            arrays[(f"t_{dt}", step)] = a
            w.write(f"t_{dt}", a.T, step)  # non-contiguous input is written in C order
    w.close()
    run = open_run(tmp_path / "r")
    for (name, step), a in arrays.items():
        got = run.tensor(name).value(step)
        assert same(got, np.ascontiguousarray(a.T).reshape(a.T.shape)), name
        assert got.flags.writeable
    assert run.tensor("t_int8").value(0).dtype == np.int8  # smdebug gives uint8


def test_strings_and_bfloat16_and_true_checksums(tmp_path):
    w = SMDebugWriter(tmp_path / "r", write_checksum=True)
    w.write("names", np.array(["stop", "yield", "Vorfahrt ä"]), 0)
    w.write("x", np.arange(6, dtype=np.float32).reshape(2, 3), 0)
    w.close()
    run = open_run(tmp_path / "r")
    assert run.tensor("names").value(0).tolist() == ["stop", "yield", "Vorfahrt ä"]
    assert run.tensor("x").value(0).tolist() == [[0, 1, 2], [3, 4, 5]]
    ev = next((tmp_path / "r" / "events").rglob("*.tfevents")).read_bytes()
    footer = struct.unpack_from("<I", ev, len(ev) - 4)[0]
    assert footer != SMDEBUG_FOOTER  # a real CRC32C was written and verified on read
    # bfloat16 (TF code 14): read as float32, exactly
    vals = np.array([1.5, -2.0, 3.25], np.float32)
    bf = (vals.view(np.uint32) >> 16).astype("<u2").tobytes()
    tensor = b"\x08\x0e" + b"\x12\x04\x12\x02\x08\x03" + b"\x22\x06" + bf
    value = b"\x0a\x01b" + b"\x42" + bytes([len(tensor)]) + tensor
    event = b"\x09" + struct.pack("<d", 1.0) + b"\x2a" + bytes([len(value) + 2]) + b"\x0a"
    event += bytes([len(value)]) + value
    got = decode_event(event, 0, len(event), "b")
    assert got.value.dtype == np.float32 and got.value.tolist() == vals.tolist()


def test_a_flipped_payload_byte_fails_the_real_checksum(tmp_path):
    w = SMDebugWriter(tmp_path / "r", write_checksum=True)
    w.write("x", np.arange(64, dtype=np.float32), 0)
    w.close()
    ev = next((tmp_path / "r" / "events").rglob("*.tfevents"))
    data = bytearray(ev.read_bytes())
    data[-20] ^= 0x01
    ev.write_bytes(bytes(data))
    with pytest.raises(CorruptRunError, match="checksum mismatch of the record payload") as err:
        open_run(tmp_path / "r").tensor("x").value(0)
    assert str(ev) in str(err.value)


def test_step_complete_only_when_every_worker_wrote_it(tmp_path):
    root = tmp_path / "r"
    w0 = SMDebugWriter(root, "worker_0", num_workers=2)
    w1 = SMDebugWriter(root, "worker_1", num_workers=2)
    for g in range(3):
        w0.write("loss", np.float32(g), g)
        w1.write("loss", np.float32(10 + g), g)
    w0.write("loss", np.float32(3), 3)
    w0.end_step()
    w1.end_step()
    run = open_run(root)
    assert run.workers() == ["worker_0", "worker_1"]
    assert run.steps() == [0, 1, 2]  # step 3 waits for worker_1
    assert run.steps(show_incomplete_steps=True) == [0, 1, 2, 3]
    t = run.tensor("loss")
    assert t.value(2).item() == 2.0
    assert t.value(2, worker="worker_1").item() == 12.0
    assert t.workers(1) == ["worker_0", "worker_1"]
    with pytest.raises(StepUnavailable):
        t.value(3)
    w1.write("loss", np.float32(13), 3)
    w1.close()
    w0.close()
    run.refresh()
    assert run.steps() == [0, 1, 2, 3]
    assert run.tensor("loss").value(3, worker="worker_1").item() == 13.0


def test_missing_steps_and_workers_raise_smdebugs_exceptions(tmp_path, smdebug_fixture_dir):
    """As SageMaker Debugger: past the last saved step NoMoreData once the run ended (the
    documented way to stop a polling loop), StepNotYetAvailable while it grows, both a
    StepUnavailable; an unknown worker is InvalidWorker naming the workers (it was a
    StepUnavailable for "step -1", which invoke_rule skipped silently at every step)."""
    run = open_run(smdebug_fixture_dir)
    loss = run.tensor("CrossEntropyLoss_output_0")
    with pytest.raises(NoMoreData, match="no TRAIN step 24; its TRAIN steps run from 0 to 23"):
        loss.value(24, mode="TRAIN")
    with pytest.raises(NoMoreData, match=r"no step 40; .*the run has ended"):
        loss.value(40)
    with pytest.raises(StepUnavailable) as gap:
        loss.value(-1)
    assert type(gap.value) is StepUnavailable
    with pytest.raises(InvalidWorker, match="no worker 'worker_9'; its workers: worker_0"):
        loss.value(0, worker="worker_9")

    class ReadsWorker9(Rule):
        def invoke_at_step(self, step):
            return loss.value(step, worker="worker_9") > 0

    with pytest.raises(InvalidWorker):
        invoke_rule(ReadsWorker9(run))

    w = SMDebugWriter(tmp_path / "live")
    w.write("loss", np.float32(1), 0)
    w.end_step()
    live = open_run(tmp_path / "live")
    with pytest.raises(StepNotYetAvailable, match=r"no step 1; .*the run has not ended"):
        live.tensor("loss").value(1)
    w.close()


def test_refresh_sees_new_steps_and_ignores_tmp_files(tmp_path):
    root = tmp_path / "r"
    w = SMDebugWriter(root)
    for g in range(3):
        w.write("loss", np.float32(g), g)
    w.end_step()
    run = open_run(root)
    assert run.steps() == [0, 1, 2] and not run.has_ended
    # a half-written step: index still *.tmp
    (root / "index" / "000000000" / "000000000003_worker_0.json.tmp").write_text("{")
    # steps past 999 land in the next index folder
    w.write("loss", np.float32(1000), 1000)
    w.end_step()
    run.refresh()
    assert run.steps() == [0, 1, 2, 1000]
    assert run.tensor("loss").value(1000).item() == 1000.0
    w.close()
    run.refresh()
    assert run.has_ended
    assert run.tensor("loss").steps() == [0, 1, 2, 1000]


def _one_step_run(root: Path, **kw) -> Path:
    w = SMDebugWriter(root, **kw)
    w.write("loss", np.float32(0.5), 0)
    w.write("logits", np.ones((4, 3), np.float32), 0)
    w.close()
    return root


def _index(root: Path) -> Path:
    return root / "index" / "000000000" / "000000000000_worker_0.json"


def _event(root: Path) -> Path:
    return root / "events" / "000000000000" / "000000000000_worker_0.tfevents"


def test_event_with_a_lying_length(tmp_path):
    root = _one_step_run(tmp_path / "r")
    ev = _event(root)
    data = bytearray(ev.read_bytes())
    data[0:8] = struct.pack("<Q", 10**15)
    ev.write_bytes(bytes(data))
    with pytest.raises(CorruptRunError, match="claims") as err:
        open_run(root).tensor("loss").values()
    assert str(ev) in str(err.value)


def test_index_with_bad_json(tmp_path):
    root = _one_step_run(tmp_path / "r")
    _index(root).write_text('{"meta": {"mode": "TRAIN", ')
    with pytest.raises(CorruptRunError, match="invalid JSON") as err:
        open_run(root)
    assert str(_index(root)) in str(err.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["meta"].update(mode="TRAINING"), "unknown mode"),
        (lambda d: d["meta"].update(mode_step=-1), "invalid mode_step"),
        (lambda d: d["meta"].update(event_file_name="../../etc/passwd"), "event_file_name"),
        (lambda d: d["tensor_payload"][0].update(length=10**14), "invalid length"),
        (lambda d: d["tensor_payload"][0].update(start_idx="0"), "invalid start_idx"),
        (lambda d: d.update(tensor_payload={"a": 1}), "must be lists"),
    ],
)
def test_index_with_wrong_fields(tmp_path, change, message):
    root = _one_step_run(tmp_path / "r")
    data = json.loads(_index(root).read_text())
    change(data)
    _index(root).write_text(json.dumps(data))
    with pytest.raises(CorruptRunError, match=message) as err:
        open_run(root)
    assert str(_index(root)) in str(err.value)


def test_index_pointing_past_the_event_file(tmp_path):
    root = _one_step_run(tmp_path / "r")
    data = json.loads(_index(root).read_text())
    data["tensor_payload"][1]["length"] = 10**9  # the allocation must be bounded by the file
    _index(root).write_text(json.dumps(data))
    with pytest.raises(CorruptRunError, match="the file ends first"):
        open_run(root).tensor("logits").value(0)


def test_truncated_event_file(tmp_path):
    root = _one_step_run(tmp_path / "r")
    ev = _event(root)
    ev.write_bytes(ev.read_bytes()[:-30])
    run = open_run(root)
    assert run.tensor("loss").value(0).item() == 0.5  # the first record is intact
    with pytest.raises(CorruptRunError) as err:
        run.tensor("logits").value(0)
    assert str(ev) in str(err.value)


def _rewrite_event(root: Path, payload: bytes) -> None:
    rec = frame_record(payload)
    _event(root).write_bytes(rec)
    data = json.loads(_index(root).read_text())
    data["tensor_payload"] = [{"tensorname": "loss", "start_idx": 0, "length": len(rec)}]
    _index(root).write_text(json.dumps(data))


def _tensor_event(tensor: bytes) -> bytes:
    value = b"\x0a\x04loss\x42" + bytes([len(tensor)]) + tensor
    summary = b"\x0a" + bytes([len(value)]) + value
    return b"\x09" + struct.pack("<d", 1.0) + b"\x2a" + bytes([len(summary)]) + summary


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (b"\x08\x63\x22\x04abcd", "unsupported TensorFlow dtype 99"),
        (b"\x08\x01\x12\x0d\x12\x0b\x08" + b"\xff" * 9 + b"\x01\x22\x00", "negative dimension"),
        (b"\x08\x01\x12\x04\x12\x02\x08\x05\x22\x04abcd", "holds 4 bytes, not 20"),
        (b"\x08\x01\x12\x06\x12\x04\x08\x80\x80\x04\x22\x00", "holds 0 bytes"),
        (b"\x08\x01\x22\x10abcd", "past its message"),
        (b"\x0b\x01", "wire type 3"),
    ],
)
def test_hostile_tensor_protos(tmp_path, tensor, message):
    root = _one_step_run(tmp_path / "r")
    _rewrite_event(root, _tensor_event(tensor))
    with pytest.raises(CorruptRunError, match=message) as err:
        open_run(root).tensor("loss").value(0)
    assert str(_event(root)) in str(err.value)


def test_event_whose_step_disagrees_with_its_index(tmp_path):
    root = _one_step_run(tmp_path / "r")
    payload = encode_event("loss", np.float32(1), step=5, wall_time=1.0, mode=1, mode_step=0)
    _rewrite_event(root, payload)
    with pytest.raises(CorruptRunError, match="holds step 5, its index says 0"):
        open_run(root).tensor("loss").value(0)


def test_bad_length_checksum_and_collections_json(tmp_path):
    root = _one_step_run(tmp_path / "r")
    data = bytearray(_event(root).read_bytes())
    data[8] ^= 0xFF
    _event(root).write_bytes(bytes(data))
    with pytest.raises(CorruptRunError, match="checksum mismatch of the record length"):
        open_run(root).tensor("loss").value(0)
    cfile = next((root / "collections").rglob("*.json"))
    cfile.write_text('{"collections": {}, "_meta": {"num_workers": "two"}}')
    with pytest.raises(CorruptRunError, match="num_workers") as err:
        open_run(root)
    assert str(cfile) in str(err.value)


def test_masked_crc_matches_the_reference():
    # TFRecord's masked CRC32C of an empty payload, as TensorFlow writes it
    assert masked_crc(b"") == 0xA282EAD8
    assert (
        masked_crc(b"123456789")
        == (((0xE3069283 >> 15) | (0xE3069283 << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    )


def test_copy_of_fixture_still_reads(tmp_path, smdebug_fixture_dir):
    root = tmp_path / "copy"
    shutil.copytree(smdebug_fixture_dir, root)
    (root / "training_job_end.ts").unlink()
    run = open_run(root)
    assert not run.has_ended and len(run.steps()) == 40


def test_string_tensor_too_large_for_a_fixed_width_array(tmp_path, monkeypatch):
    from pytest_modelrules.store import tfrecord

    w = SMDebugWriter(tmp_path / "r")
    w.write("names", np.array(["x" * 50, "y", "z"]), 0)
    w.close()
    monkeypatch.setattr(tfrecord, "MAX_STRING_ARRAY_BYTES", 100)
    with pytest.raises(CorruptRunError, match="string tensor too large"):
        open_run(tmp_path / "r").tensor("names").value(0)


def test_oversized_index_is_refused_before_reading_it(tmp_path, monkeypatch):
    from pytest_modelrules.store import smdebug

    root = _one_step_run(tmp_path / "r")
    monkeypatch.setattr(smdebug, "MAX_INDEX_BYTES", 64)
    with pytest.raises(CorruptRunError, match="larger than 64 bytes") as err:
        open_run(root)
    assert str(_index(root)) in str(err.value)


def test_tensor_steps_prev_steps_and_shape_as_smdebug(tmp_path, smdebug_fixture_dir):
    """smdebug's Tensor.steps(mode, show_incomplete_steps), prev_steps(step, n, mode) and
    shape(step): a positional True was read as a worker name."""
    run = open_run(smdebug_fixture_dir)
    loss = run.tensor("CrossEntropyLoss_output_0")
    assert loss.steps("EVAL", True) == loss.steps("EVAL") == list(range(16))
    assert loss.prev_steps(5, 2, mode="EVAL") == [4, 5]
    assert loss.prev_steps(2) == [0, 1, 2]
    assert run.tensor("layer1.relu_output_0").shape(3, mode="EVAL") == (64, 128)

    root = tmp_path / "r"
    w0 = SMDebugWriter(root, "worker_0", num_workers=2)
    w1 = SMDebugWriter(root, "worker_1", num_workers=2)
    w0.write("loss", np.float32(0), 0)
    w1.write("loss", np.float32(0), 0)
    w0.write("loss", np.float32(1), 1)
    w0.close()
    w1.close()
    t = open_run(root).tensor("loss")
    assert t.steps() == [0] and t.steps(show_incomplete_steps=True) == [0, 1]
    assert t.steps(None, True, worker="worker_1") == [0]
    with pytest.raises(TypeError, match=r"worker=\.\.\."):  # this API's order before smdebug's
        t.steps(None, "worker_1")
