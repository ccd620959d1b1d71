"""benchmarks/gpu_check.py runs on a CPU with --quick (tiny settings)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def test_gpu_check_quick_on_cpu(tmp_path: Path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = module.main(["--quick", "--out", str(tmp_path), "--json", str(tmp_path / "f.json")])
    out = capsys.readouterr().out
    assert "without Recorder" in out and "with Recorder" in out and "overhead" in out
    assert figures["without Recorder"]["images_per_second"] > 0
    assert figures["with Recorder"]["images_per_second"] > 0
    assert (tmp_path / "recorded").is_dir() and (tmp_path / "f.json").is_file()
