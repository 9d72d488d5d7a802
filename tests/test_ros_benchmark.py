"""benchmarks/node.py runs end to end (tiny pipeline, one query per mode) and writes its JSON and Markdown."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_node_benchmark_writes_results(tmp_path):
    spec = importlib.util.spec_from_file_location("node_benchmark", ROOT / "benchmarks" / "node.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--queries", "1", "--max-new-tokens", "2", "--width", "96", "--height", "64",
                        "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "node.json").read_text())
    assert results["latency_new_frame_s"]["n"] == 1 and results["latency_new_frame_s"]["median"] > 0
    assert results["intake_hz_during_query"] > 0 and results["intake_hz_idle"] > 0
    assert "images/s" in (tmp_path / "node.md").read_text()
