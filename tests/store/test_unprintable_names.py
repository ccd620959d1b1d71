"""Names and texts from a run never reach a CI log with control characters: a newline could
start a line of the CI system's own commands (GitHub's ``::...::``), an escape sequence
rewrite what the log shows. Readers refuse such tensor and collection names; writers never
write them; class names, metadata keys and the end reason are shown escaped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pytest_modelrules import RunWriter, cli, open_run
from pytest_modelrules.exceptions import CorruptRunError
from pytest_modelrules.store.smdebug_writer import SMDebugWriter

HOSTILE = ["evil\n::error::all good", "x\x1b[2Kok", "tab\tname", "c1\x85", "lone\ud800"]


@pytest.mark.parametrize("name", HOSTILE)
def test_writers_refuse_names_no_reader_accepts(tmp_path: Path, name: str) -> None:
    w = RunWriter(tmp_path / "r")
    with pytest.raises(ValueError, match="control character or a lone surrogate"):
        w.write(name, np.float32(1.0), 0)
    with pytest.raises(ValueError, match="control character"):  # checked before writing
        w.write_step(0, [("loss", np.float32(1.0)), (name, np.float32(2.0))])
    w.write("loss", np.float32(1.0), 0)
    w.close()
    run = open_run(tmp_path / "r")
    assert run.tensor_names() == ["loss"] and run.tensor("loss").steps() == [0]


def test_a_native_file_named_with_a_newline_is_refused_at_open(tmp_path: Path) -> None:
    with RunWriter(tmp_path / "r") as w:
        w.write("loss", np.float32(1.0), 0)
    worker = tmp_path / "r" / "workers" / "worker_0"
    end = json.loads((worker / "END").read_text())
    del end["files"]  # a run of an older writer: END lists no files (else: "missing")
    (worker / "END").write_text(json.dumps(end))
    tensors = worker / "tensors"
    (tensors / "loss.mrt").rename(tensors / "evil%0A%3A%3Aerror%3A%3Afine.mrt")
    with pytest.raises(CorruptRunError, match=r"tensor name 'evil\\n::error::fine' holds a"):
        open_run(tmp_path / "r")


def test_an_smdebug_tag_with_an_escape_is_refused_at_open(tmp_path: Path) -> None:
    w = SMDebugWriter(tmp_path / "sm")  # the test writer writes what it is given
    w.write("x\x1b[2Kgood", np.float32(0.5), 0, wall_time=1.0)
    w.close()
    with pytest.raises(CorruptRunError, match=r"tensor name 'x\\x1b\[2Kgood'"):
        open_run(tmp_path / "sm")


def test_a_collection_name_with_a_newline_is_refused(tmp_path: Path) -> None:
    with RunWriter(tmp_path / "r") as w:
        w.write("loss", np.float32(1.0), 0)
    wfile = tmp_path / "r" / "workers" / "worker_0" / "worker.json"
    info = json.loads(wfile.read_text())
    info["collections"] = {"losses\n::warning::x": {"tensor_names": ["loss"]}}
    wfile.write_text(json.dumps(info))
    with pytest.raises(CorruptRunError, match="collection name"):
        open_run(tmp_path / "r")


def test_class_names_metadata_keys_and_the_end_reason_are_shown_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = {"class_names": ["stop", "curve\n::error::left"], "key\x1b[31m": 1}
    with RunWriter(tmp_path / "r", metadata=meta) as w:
        w.write("loss", np.float32(1.0), 0)
    end = tmp_path / "r" / "workers" / "worker_0" / "END"
    data = json.loads(end.read_text())
    data["reason"] = "stopped\n::error::by rule"
    end.write_text(json.dumps(data))
    run = open_run(tmp_path / "r")
    assert run.class_names == ["stop", "curve\\n::error::left"]
    assert cli.main(["info", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "ended (stopped\\n::error::by rule)" in out and "key\\x1b[31m" in out
    assert not any(line.startswith("::") for line in out.splitlines())


@pytest.mark.parametrize("name", HOSTILE)
def test_a_collection_name_no_reader_accepts_is_refused_when_given(
    tmp_path: Path, name: str
) -> None:
    """The writer wrote such a collection name and the Recorder took it, making a run that
    its own reader then refused as corrupt."""
    from pytest_modelrules.capture.config import CollectionConfig

    with pytest.raises(ValueError, match=r"collection name .* holds a control character"):
        CollectionConfig(name=name, include_regex=".*")
    w = RunWriter(tmp_path / "r")
    with pytest.raises(ValueError, match=r"collection name .* holds a control character"):
        w.set_collections({name: {"tensor_names": ["loss"]}})
    w.set_collections({"losses": {"tensor_names": ["loss"]}})
    w.write("loss", np.float32(1.0), 0)
    w.close()
    assert list(open_run(tmp_path / "r").collections()) == ["losses"]
