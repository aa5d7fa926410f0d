from __future__ import annotations

from pathlib import Path

from lmembed.evaluation import STSResult, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _result(model: str, scores: dict[str, float], adapter: str | None = None) -> STSResult:
    tasks = {n: {"spearman": s, "pearson": s, "pairs": 100} for n, s in scores.items()}
    mean = sum(scores.values()) / len(scores)
    return STSResult.from_dict(
        {"model": model, "adapter": adapter, "prompt": None, "pooling": "mean",
         "max_length": 128, "dtype": "float32", "tasks": tasks,
         "average": {"spearman": mean, "pearson": mean}}
    )  # fmt: skip


def test_write_report(tmp_path: Path) -> None:
    before = _result("Qwen/Qwen2-0.5B", {"stsb": 40.0, "biosses": 55.5, "sts17": 60.0})
    after = _result("Qwen/Qwen2-0.5B", {"stsb": 80.25, "biosses": 70.0, "sts17": 82.0}, "runs/x")
    baseline = _result("paper", {"stsb": 81.0, "biosses": 72.0})
    md, png = write_report(
        tmp_path / "out", before, after, baseline, title="Qwen2 0.5B + LoRA",
        notes={"command": "`lmembed train ...`", "hardware": "1x H200"},
    )  # fmt: skip
    assert (md, png) == (tmp_path / "out/report.md", tmp_path / "out/report.png")
    text = md.read_text()
    assert text.startswith("# Qwen2 0.5B + LoRA")
    assert "| task | before | after | Δ | baseline |" in text
    for line in (
        "| stsb | 40.00 | 80.25 | +40.25 | 81.00 |",
        "| sts17 | 60.00 | 82.00 | +22.00 | – |",
    ):
        assert line in text
    # Averages are over the tasks all three results share (stsb, biosses).
    assert "| **average** (2 tasks) | 47.75 | 75.12 | +27.38 | 76.50 |" in text
    assert "![STS scores before and after](report.png)" in text
    assert "- **hardware**: 1x H200" in text and "adapter `runs/x`" in text
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000


def test_write_report_without_baseline(tmp_path: Path) -> None:
    before = _result("m", {"stsb": 10.0})
    after = _result("m", {"stsb": -5.0})
    md, png = write_report(tmp_path, before, after)
    text = md.read_text()
    assert "baseline" not in text and "| stsb | 10.00 | -5.00 | -15.00 |" in text
    assert "## Notes" not in text
    assert png.read_bytes().startswith(PNG_MAGIC)
