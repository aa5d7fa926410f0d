from __future__ import annotations

import csv
import fcntl
import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_models import shared_data_dir
from torch.optim.optimizer import register_optimizer_step_pre_hook

from lmembed.cli import main
from lmembed.experiments import ablate, ablation_report
from lmembed.experiments.ablate import load_sweep, run_ablation
from lmembed.training.trainer import NonFiniteLossError

REPO = Path(__file__).resolve().parents[2]
STUDIES = {
    "lr": {"grid": {"lr": [1e-2, 1e-3]}},
    "hard_negatives": {
        "runs": [{"name": "on", "hard_negatives": True}, {"name": "off", "hard_negatives": False}]
    },
    "broken": {"runs": [{"name": "bad-target", "lora_targets": ["no_such_layer"]}]},
}


def sweep_dict(model: Path, data: Path, sts: Path, studies: dict | None = None) -> dict:
    return {
        "model": str(model),
        "base": {"data": str(data), "steps": 2, "batch_size": 4, "lr": 1e-3, "warmup": 0,
                 "dtype": "fp32", "max_length": 48, "save_every": 1},
        "tasks": ["stsb", "biosses"],
        "data_dir": str(sts),
        "eval_batch_size": 8,
        "studies": STUDIES if studies is None else studies,
    }  # fmt: skip


@pytest.fixture(scope="module")
def finished(tiny_llama, nli_csv, sts_dir, tmp_path_factory) -> tuple[dict, Path]:
    """One completed sweep (with a failing run), shared by the read-only tests."""
    config = sweep_dict(tiny_llama, nli_csv, sts_dir)
    output = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMEMBED_CACHE", str(tmp_path_factory.mktemp("cache")))
        run_ablation(config, output)
    return config, output


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------- parsing and planning


def test_unknown_option_in_a_study_is_named(tiny_llama, nli_csv, sts_dir, tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"model: {tiny_llama}\nbase: {{data: {nli_csv}, steps: 2}}\ndata_dir: {sts_dir}\n"
        "tasks: [stsb]\nstudies:\n  speed:\n    grid: {lrr: [5e-3, 5e-4]}\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=r"sweep\.yaml, study 'speed'.*unknown option\(s\) lrr"):
        load_sweep(path, tmp_path / "out")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"base": {"stepz": 3}}, r"base: unknown option\(s\) stepz"),
        ({"studiez": {}}, r"unknown key\(s\) studiez"),
        ({"studies": {"x": {"grid": {"steps": ["ten"]}}}}, r"study 'x'.*steps must be"),
        ({"studies": {"x": {"runs": [{"output": "elsewhere"}]}}}, r"output is set by the runner"),
        ({"studies": {"x": {"grid": {"pooling": ["max"]}}}}, r"study 'x'.*pooling must be one of"),
        ({"studies": {"x": {"grid": {"lr": [1e-3]}, "repeat": 2}}}, r"study 'x'.*repeat"),
        ({"tasks": ["stsb", "nope"]}, r"unknown STS task 'nope'"),
    ],
)
def test_invalid_sweeps_fail_up_front(tiny_llama, nli_csv, sts_dir, tmp_path, change, message):
    config = {**sweep_dict(tiny_llama, nli_csv, sts_dir), **change}
    if "base" in change:
        config["base"] = {**sweep_dict(tiny_llama, nli_csv, sts_dir)["base"], **change["base"]}
    with pytest.raises(ValueError, match=message):
        load_sweep(config, tmp_path)


def test_grid_is_a_cartesian_product_and_identical_runs_share_a_folder(
    tiny_llama, nli_csv, sts_dir, tmp_path
):
    studies = {
        "grid": {"grid": {"lr": [1e-3, 1e-2], "lora_r": [4, 8]}},
        "explicit": {"runs": [{"name": "same-as-base", "lr": 1e-3}, {"prompt": "{s} is: "}]},
    }
    sweep = load_sweep(sweep_dict(tiny_llama, nli_csv, sts_dir, studies), tmp_path)
    names = [(s.study, s.name) for s in sweep.settings]
    assert names == [
        ("grid", "lr=0.001,lora_r=4"),
        ("grid", "lr=0.001,lora_r=8"),
        ("grid", "lr=0.01,lora_r=4"),
        ("grid", "lr=0.01,lora_r=8"),
        ("explicit", "same-as-base"),
        ("explicit", "prompt={s} is: "),
    ]
    folders = [s.folder for s in sweep.settings]
    # lr=1e-3, lora_r=8 is the base config, as is "same-as-base": one run, folder "default".
    assert folders[1] == folders[4] == "default"
    assert len(sweep.configs) == 5
    config = sweep.configs[folders[2]]
    assert (config.lr, config.lora.r, config.resume) == (1e-2, 4, True)
    assert Path(config.output) == tmp_path / "runs" / folders[2]
    assert sweep.varied == ["lr", "lora_r", "prompt"]
    assert len(sweep.embeddings()) == 2  # the base model without and with the prompt


def test_yaml_file_reads_exponent_floats_and_base_config(tiny_llama, nli_csv, sts_dir, tmp_path):
    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text(f"model: {tiny_llama}\ndata: {nli_csv}\nsteps: 7\nlr: 5e-4\n")
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"base_config: {train_yaml}\nbase: {{batch_size: 4}}\ndata_dir: {sts_dir}\n"
        "tasks: stsb\nstudies:\n  lr:\n    grid: {lr: [5e-3, 5.0e-5]}\n"
    )
    sweep = load_sweep(path, tmp_path / "out", model=str(tiny_llama))
    assert (sweep.base.steps, sweep.base.batch_size, sweep.base.lr) == (7, 4, 5e-4)
    assert [sweep.configs[s.folder].lr for s in sweep.settings] == [5e-3, 5e-5]


def test_a_folder_from_another_config_is_refused(finished, tmp_path):
    config, output = finished
    changed = {**config, "base": {**config["base"], "seed": 7}}
    with pytest.raises(ValueError, match=r"holds a run with other options \(seed: 42 -> 7\)"):
        load_sweep(changed, output)


def test_a_run_saved_before_an_option_existed_still_matches(finished, tmp_path):
    """A newer lmembed adds options (``attention``, ``compile``); a sweep folder written
    before them holds their default behaviour and resumes, unless the option changed."""
    config, output = finished
    copy = tmp_path / "older"
    shutil.copytree(output, copy)
    saved = sorted(copy.glob("runs/*/train_config.json"))
    for path in saved:
        options = json.loads(path.read_text())
        del options["attention"], options["compile"]
        path.write_text(json.dumps(options))
    load_sweep(config, copy)
    changed = {**config, "base": {**config["base"], "attention": "bidirectional"}}
    with pytest.raises(ValueError, match=r"attention: 'causal' -> 'bidirectional'"):
        load_sweep(changed, copy)


def test_scoring_during_training_reads_the_sweeps_data_dir(
    tiny_llama, nli_csv, sts_dir, tmp_path, monkeypatch
):
    """``eval_every`` scores stsb-dev by default; with the data dir given to the sweep only
    (no $LMEMBED_DATA_DIR) the runs find it there, and a folder from before still resumes."""
    monkeypatch.delenv("LMEMBED_DATA_DIR", raising=False)
    data = tmp_path / "data"
    shutil.copytree(sts_dir, data)
    shutil.copy(data / "sts" / "stsb_test.tsv", data / "sts" / "stsb_dev.tsv")
    config = sweep_dict(tiny_llama, nli_csv, data, {"lr": {"grid": {"lr": [1e-3]}}})
    config["base"]["eval_every"] = 1
    run_ablation(config, tmp_path / "out")
    run = tmp_path / "out" / "runs" / "default"
    assert json.loads((run / "result.json").read_text())["status"] == "ok"
    steps = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and all("stsb-dev" in s["metrics"] for s in steps)
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["eval_data_dir"] == str(data)
    saved["eval_data_dir"] = None  # as a sweep saved it before the runner filled it in
    (run / "train_config.json").write_text(json.dumps(saved))
    load_sweep(config, tmp_path / "out")


# ----------------------------------------------------------------- a finished sweep


def test_sweep_writes_csv_report_and_plots(finished):
    config, output = finished
    rows = read_csv(output / "results.csv")
    assert [(r["study"], r["name"], r["run"]) for r in rows] == [
        ("base-model", "base model", ""),
        ("lr", "lr=0.01", "lr=0.01"),
        ("lr", "lr=0.001", "default"),
        ("hard_negatives", "on", "default"),
        ("hard_negatives", "off", "off"),
        ("broken", "bad-target", "bad-target"),
    ]
    assert list(rows[0])[:5] == ["study", "name", "run", "lr", "hard_negatives"]
    assert {r["status"] for r in rows[:5]} == {"ok"}
    for row in rows[:5]:
        scores = [float(row["stsb"]), float(row["biosses"])]
        assert float(row["average"]) == pytest.approx(sum(scores) / 2, abs=1e-3)
    assert float(rows[1]["final_loss"]) > 0 and float(rows[1]["train_s"]) > 0
    assert (rows[4]["hard_negatives"], rows[3]["hard_negatives"]) == ("False", "True")
    # The shared default run trained once; the base model was scored once.
    assert sorted(p.name for p in (output / "runs").iterdir()) == [
        "bad-target", "default", "lr=0.01", "off"
    ]  # fmt: skip
    assert len(list((output / "base-model").glob("*.json"))) == 1

    report = (output / "report.md").read_text(encoding="utf-8")
    for text in (
        "## Study: lr",
        "## Study: hard_negatives",
        "*base model*",
        "Reduced setting",
        "2 steps x 4 triplets",
        "tasks: stsb, biosses",
        "hardware",
        "## Failed runs",
    ):
        assert text in report  # fmt: skip
    for name in ablation_report.PLOTS:
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in report


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(finished):
    _, output = finished
    rows = {r["run"]: r for r in read_csv(output / "results.csv")}
    failed = rows["bad-target"]
    assert failed["status"] == "failed"
    assert "no_such_layer" in failed["error"] and failed["average"] == ""
    # It ran third of four folders; the run after it still finished.
    assert rows["off"]["status"] == "ok"
    record = json.loads((output / "runs" / "bad-target" / "result.json").read_text())
    assert record["error"].startswith("ValueError: LoRA target(s) ['no_such_layer'] not found")
    assert "no_such_layer" in (output / "report.md").read_text(encoding="utf-8")


# ----------------------------------------------------------------- resuming


def test_rerun_skips_finished_and_failed_runs(finished, tmp_path, monkeypatch):
    config, source = finished
    output = tmp_path / "copy"
    shutil.copytree(source, output)

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished run was trained or scored again")

    monkeypatch.setattr(ablate, "train", forbidden)
    monkeypatch.setattr(ablate, "evaluate", forbidden)
    run_ablation(config, output)
    assert read_csv(output / "results.csv") == read_csv(source / "results.csv")


def test_retry_failed_reruns_only_the_failed_run(finished, tmp_path, monkeypatch):
    config, source = finished
    output = tmp_path / "copy"
    shutil.copytree(source, output)
    trained = []
    monkeypatch.setattr(ablate, "train", lambda c, data: trained.append(Path(c.output).name))
    run_ablation(config, output, retry_failed=True)
    assert trained == ["bad-target"]  # then scoring fails: no adapter was saved
    row = {r["run"]: r for r in read_csv(output / "results.csv")}["bad-target"]
    assert row["status"] == "failed" and "not an lmembed adapter folder" in row["error"]


def test_half_finished_run_continues_from_its_checkpoint(tiny_llama, nli_csv, sts_dir, tmp_path):
    studies = {"lr": {"grid": {"lr": [1e-3]}}}
    config = sweep_dict(tiny_llama, nli_csv, sts_dir, studies)
    config["base"]["steps"] = 3  # checkpoints after steps 1 and 2 (save_every 1)
    steps = []

    def count_and_stop_at(stop: int | None):
        def hook(optimizer, args, kwargs):
            steps.append(len(steps) + 1)
            if len(steps) == stop:
                raise KeyboardInterrupt  # Ctrl-C is not a failed run: it stops the sweep

        return register_optimizer_step_pre_hook(hook)

    handle = count_and_stop_at(3)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(config, tmp_path)
    handle.remove()
    assert not (tmp_path / "runs" / "default" / "result.json").exists()

    steps.clear()
    handle = count_and_stop_at(None)
    try:
        run_ablation(config, tmp_path)
    finally:
        handle.remove()
    assert steps == [1]  # only step 3 was left
    log = (tmp_path / "runs" / "default" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3]
    record = json.loads((tmp_path / "runs" / "default" / "result.json").read_text())
    assert record["status"] == "ok" and record["steps_done"] == 3


def test_cpu_lock_is_held_per_run_and_divergence_is_recorded(
    tiny_llama, nli_csv, sts_dir, tmp_path, monkeypatch
):
    lock = tmp_path / "cpu.lock"
    monkeypatch.setenv("LMEMBED_CPU_LOCK", str(lock))
    held = []

    def diverge(config, data):
        with lock.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        raise NonFiniteLossError("loss is nan at step 1; stopped")

    monkeypatch.setattr(ablate, "train", diverge)
    studies = {"lr": {"grid": {"lr": [1e-3, 1e-2]}}}
    run_ablation(sweep_dict(tiny_llama, nli_csv, sts_dir, studies), tmp_path)
    assert held == [True, True]
    rows = read_csv(tmp_path / "results.csv")
    assert [r["status"] for r in rows] == ["ok", "failed", "failed"]
    assert rows[1]["error"] == "NonFiniteLossError: loss is nan at step 1; stopped"
    with lock.open("a") as handle:  # released when the sweep ends
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_cli_reports_an_unknown_option_without_a_traceback(tmp_path, capsys, sts_dir):
    path = tmp_path / "bad.yaml"
    study = "studies: {s: {runs: [{lora_rank: 4}]}}"
    path.write_text(f"data_dir: {sts_dir}\ntasks: stsb\n{study}\n")
    with pytest.raises(SystemExit) as stop:
        main(["ablate", "--config", str(path), "--output", str(tmp_path / "out")])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert "bad.yaml, study 's', run 'lora_rank=4'" in error and "lora_rank" in error


def test_a_seed_only_study_reports_its_spread():
    def row(seed: int, average: float | None) -> ablation_report._Row:
        task = {"spearman": average, "pearson": average, "pairs": 10}
        scores = {"tasks": {"stsb": task}, "average": {"spearman": average}}
        record = {"status": "ok", "eval": scores}
        return ablation_report._Row(
            "seed", f"seed={seed}", f"seed={seed}", {"seed": seed}, ("seed",), "{}",
            record if average is not None else None,
        )  # fmt: skip

    text = ablation_report._seed_spread([row(1, 70.0), row(2, 74.0), row(3, 72.0), row(4, None)])
    assert "over 3 seeds: mean 72.00, standard deviation 2.00, range 70.00–74.00 (4.00" in text
    assert "needs two" in ablation_report._seed_spread([row(1, 70.0)])


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "ablations").glob("*.yaml")))
def test_every_shipped_sweep_file_plans(name, tmp_path, monkeypatch):
    """ablations/*.yaml (and the configs they extend) parse and plan, paths from the repo."""
    monkeypatch.chdir(REPO)
    sweep = load_sweep(REPO / "ablations" / name, tmp_path / "out", data_dir=shared_data_dir())
    assert sweep.configs and sweep.tasks


def test_runs_are_scored_on_the_device_accelerator_picks(
    tiny_llama, nli_csv, sts_dir, tmp_path, monkeypatch
):
    asked, scored_on = [], []

    def accelerator():  # the GPU where there is one; CI has none, so the CPU stands in
        asked.append(True)
        return torch.device("cpu")

    def evaluate(encoder, *args, **kwargs):
        scored_on.append(encoder.device)
        return real_evaluate(encoder, *args, **kwargs)

    real_evaluate = ablate.evaluate
    monkeypatch.setattr(ablate, "accelerator", accelerator)
    monkeypatch.setattr(ablate, "evaluate", evaluate)
    run_ablation(
        sweep_dict(tiny_llama, nli_csv, sts_dir, {"lr": {"grid": {"lr": [1e-3]}}}), tmp_path
    )
    assert len(asked) == 2  # the base model and the trained run
    assert scored_on == [torch.device("cpu")] * 2
