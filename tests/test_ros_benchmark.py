"""benchmarks/node.py end to end (the embedded default model, two queries per mode): the JSON holds a summary of every
query it ran and the Markdown table shows the same numbers. The numbers themselves are the benchmark's to report; a
test only checks that they are consistent."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_node_benchmark_writes_what_it_measured(tmp_path):
    spec = importlib.util.spec_from_file_location("node_benchmark", ROOT / "benchmarks" / "node.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--queries", "2", "--max-new-tokens", "24", "--width", "96", "--height", "64", "--threads", "1",
                        "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "node.json").read_text())
    assert results["model"] == "the embedded default model (trained tiny)" and results["torch_threads"] == 1
    assert results["image_size"] == [64, 96] and results["max_new_tokens"] == 24
    table = (tmp_path / "node.md").read_text()
    for key in ("latency_new_frame_s", "latency_cached_embedding_s"):
        latency = results[key]
        assert latency["n"] == 2 and 0 < latency["min"] <= latency["median"] <= latency["max"], (key, latency)
        assert f"{latency['median']} s [{latency['min']}, {latency['max']}]" in table, key
    # Images were taken in while the query ran (intake does not wait for the model), and the table says how many.
    assert results["intake_hz_during_query"] > 0 and results["intake_window_during_query_s"] > 0
    assert f"| {results['intake_hz_during_query']} images/s |" in table
    assert f"| {results['intake_hz_idle']} images/s |" in table
    # A moving 30 Hz camera: with precompute the answers use the embedded frame (the cache pays on a live stream).
    for key in ("live_30hz_precompute", "live_30hz_no_precompute"):
        assert results[key]["queries"] == 2 and results[key]["latency_s"]["n"] == 2, results[key]
    assert results["live_30hz_precompute"]["answers_on_cached_embedding"] >= 1, results["live_30hz_precompute"]
    assert results["live_30hz_no_precompute"]["answers_on_cached_embedding"] == 0
    # The trained model names an object, so the measured query ran the SAM decoders too, not only the LLM.
    assert results["answer_instances"] >= 1, results
