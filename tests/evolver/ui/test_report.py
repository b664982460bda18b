import json

from evolver.ui.report import summarize, write_report

RESULTS = [
    {"proposal_id": "a", "cycle": 1, "verdict": "merged", "failed_stage": None,
     "comparison": {"candidate": [0.8, 0.9], "baseline": [0.7, 0.8]},
     "timings": {"llm": 2.0, "patch": 0.1, "train": 60.0, "evaluate": 4.0}},
    {"proposal_id": "b", "cycle": 2, "verdict": "failed", "failed_stage": "smoke", "reason": "boom",
     "timings": {"llm": 1.0, "patch": 0.1, "smoke": 3.0}},
    {"proposal_id": "c", "cycle": 3, "verdict": "rejected", "failed_stage": None,
     "comparison": {"candidate": [0.7, 0.7], "baseline": [0.8, 0.9]},
     "timings": {"llm": 1.0, "train": 60.0, "evaluate": 4.0}},
]


def test_summary_counts_and_shares():
    s = summarize(RESULTS)
    assert s["candidates"] == 3
    assert s["verdicts"] == {"merged": 1, "failed": 1, "rejected": 1}
    assert s["failures_by_stage"] == {"smoke": 1}
    assert s["best"] == {"proposal_id": "a", "score": 0.8500000000000001}
    total = 2 + 0.1 + 60 + 4 + 1 + 0.1 + 3 + 1 + 60 + 4
    assert abs(s["non_training_share"] - (1 - 128 / total)) < 1e-9


def test_write_report_makes_json_and_pngs(tmp_path):
    paths = write_report(RESULTS, tmp_path, baseline={"scores": [0.7, 0.8]})
    data = json.loads(paths["summary"].read_text())
    assert data["summary"]["candidates"] == 3
    for key in ("scores", "failures", "times"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
