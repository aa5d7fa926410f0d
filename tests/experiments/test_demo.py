"""The demo end to end on a tiny model: before/after/baseline scores and the report."""

import json
import shutil
from pathlib import Path

import pytest
from tiny_models import SHARED_DATA, require_shared

from lmembed.experiments.demo import demo_config, run_demo
from lmembed.training.config import load_config
from lmembed.training.run_dir import RunDir

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.slow
def test_demo_writes_report_with_before_after_and_baseline(tiny_llama, sts_dir, nli_csv, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sts_dir, data)
    shutil.copy(data / "sts" / "biosses.tsv", data / "sts" / "sts17_en-en.tsv")
    shutil.copy(data / "sts" / "stsb_test.tsv", data / "sts" / "stsb_dev.tsv")
    (data / "nli").mkdir()
    # Under the name of the full SimCSE file, which the demo prefers when present.
    shutil.copy(nli_csv, data / "nli" / "nli_for_simcse.csv")
    require_shared("retrieval")
    retrieval = Path("retrieval") / "stsb-paraphrase"
    shutil.copytree(SHARED_DATA / retrieval, data / retrieval)

    report = run_demo(output=tmp_path / "demo", data_dir=data, steps=2, model=str(tiny_llama))

    text = report.read_text()
    for task in ("stsb", "biosses", "sts17"):
        assert f"| {task} |" in text
    assert (tmp_path / "demo" / "report.png").stat().st_size > 1000
    before = json.loads((tmp_path / "demo" / "before.json").read_text())
    after = json.loads((tmp_path / "demo" / "after.json").read_text())
    baseline = json.loads((tmp_path / "demo" / "baseline.json").read_text())
    assert before["adapter"] is None and after["adapter"] == str(tmp_path / "demo" / "adapter")
    assert baseline["model"] == "all-minilm-l6-v2" and baseline["pooling"] == "mean"
    assert after["tasks"]["stsb"]["pairs"] == 8
    assert before["tasks"]["stsb"] != after["tasks"]["stsb"]
    searched = json.loads((tmp_path / "demo" / "after-retrieval.json").read_text())
    assert searched["tasks"]["stsb-paraphrase-mini"]["documents"] == 1500
    assert "## Retrieval (stsb-paraphrase-mini)" in text and "ndcg@10" in text.lower()
    curve = [e["step"] for e in RunDir(tmp_path / "demo" / "adapter").evaluations()]
    assert curve == [0, 2], "STSb dev before training and at the end"
    assert "| 2 | " in text.split("## During training")[1]
    assert "(adapter/report.png)" in text and (tmp_path / "demo/adapter/report.png").is_file()


@pytest.mark.parametrize(
    ("recipe", "path"),
    [
        ("demo", "gemma-3-270m-cpu.yaml"),
        ("best", "gemma-3-270m-cpu-best.yaml"),
        ("distill", "gemma-3-270m-cpu-distill.yaml"),
    ],
)
def test_config_files_hold_the_demo_recipes(recipe, path, tmp_path):
    """``configs/`` is what users copy; ``lmembed demo`` runs the same options."""
    config = load_config(CONFIGS / path, output=str(tmp_path / "adapter"), resume=True)
    data = ",".join(config.dataset.data)
    assert config == demo_config(tmp_path, data, "gemma-3-270m", recipe)
    assert demo_config(tmp_path, data, "gemma-3-270m", recipe, steps=3).steps == 3
