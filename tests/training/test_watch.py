"""Training you can watch: evaluation during training, the best step, early stopping,
TensorBoard and MLflow, and the run's report. Tiny models; a scorer with a known score
sequence gives the best-step logic teeth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from lmembed.training.config import TrainConfig
from lmembed.training.evaluator import DevEvaluator, EvalDuringTraining, metric_key
from lmembed.training.run_dir import RunDir
from lmembed.training.trackers import MissingExtraError, mlflow_name
from lmembed.training.trainer import train


def _config(model, data, output, **changes) -> TrainConfig:
    base = dict(
        model=str(model), data=str(data), output=str(output), steps=8, batch_size=8, lr=1e-3,
        warmup=1, dtype="fp32", save_every=4, seed=0,
    )  # fmt: skip
    return TrainConfig.from_flat(**{**base, **changes})


def _adapter(folder: Path) -> dict[str, bytes]:
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    return {name: t.numpy().tobytes() for name, t in tensors.items()}


class KnownScores:
    """Returns a fixed score sequence and snapshots the LoRA weights it was shown."""

    def __init__(self, scores: list[float]) -> None:
        self.scores, self.seen = list(scores), []

    def __call__(self, embedder) -> dict[str, float]:
        state = get_peft_model_state_dict(embedder.model)
        self.seen.append({k: v.detach().clone().numpy().tobytes() for k, v in state.items()})
        score = self.scores[len(self.seen) - 1]
        return {"dev": score, "dev/pearson": -score}


def test_evaluating_leaves_the_adapter_bit_identical(tiny_llama, triplets_csv, sts_tsv, tmp_path):
    plain = train(_config(tiny_llama, triplets_csv, tmp_path / "plain"))
    watched = train(
        _config(tiny_llama, triplets_csv, tmp_path / "watched", eval_tasks=str(sts_tsv),
                eval_every=2, eval_at_start=True)
    )  # fmt: skip
    assert _adapter(plain.output) == _adapter(watched.output)
    records = RunDir(watched.output).evaluations()
    assert [r["step"] for r in records] == [0, 2, 4, 6, 8]
    assert set(records[0]["metrics"]) == {str(sts_tsv), f"{sts_tsv}/pearson"}
    assert records[0]["metrics"] != records[-1]["metrics"], "training changed no score"
    assert watched.eval_seconds > 0 and watched.last_scores == records[-1]["metrics"]
    logged = RunDir(plain.output).metrics()
    assert {"loss", "lr", "grad_norm", "temperature", "triplets_per_s"} <= set(logged[0])


def test_evaluation_with_weight_averaging_scores_the_average_and_changes_nothing(
    tiny_llama, triplets_csv, tmp_path
):
    options = dict(ema_decay=0.5, eval_every=4, keep_best="dev")
    plain = train(_config(tiny_llama, triplets_csv, tmp_path / "plain", ema_decay=0.5))
    scorer = KnownScores([1.0, 2.0])
    watched = train(_config(tiny_llama, triplets_csv, tmp_path / "watched", **options), None,
                    scorer)  # fmt: skip
    run = RunDir(watched.output)
    assert _adapter(run.last) == _adapter(plain.output)  # the final average
    assert _adapter(run.last_step) == _adapter(RunDir(plain.output).last_step)
    assert _adapter(run.path) == _adapter(run.last)  # step 8 scored best
    assert scorer.seen[-1] == _adapter(run.path)  # evaluations score the average


@pytest.mark.parametrize(
    "scores, best_step", [([1, 5, 3, 4], 4), ([2, 3, 3, 1], 4), ([2, 2, 1, 3], 8)]
)
def test_keep_best_keeps_the_highest_scoring_step(
    tiny_llama, triplets_csv, tmp_path, scores, best_step
):
    scorer = KnownScores(scores)
    config = _config(tiny_llama, triplets_csv, tmp_path / "run", eval_every=2, keep_best="dev")
    result = train(config, None, scorer)
    run = RunDir(result.output)
    evaluated = [2, 4, 6, 8]
    assert run.best() == {"metric": "dev", "step": best_step, "score": max(scores)}
    assert result.best == run.best()
    assert _adapter(run.path) == scorer.seen[evaluated.index(best_step)]
    assert _adapter(run.last) == scorer.seen[-1]
    assert run.report_md.is_file() and run.report_png.read_bytes()[:4] == b"\x89PNG"
    assert f"| {best_step} (best) |" in run.report_md.read_text()


def test_early_stopping_stops_at_the_right_evaluation_and_stays_stopped(
    tiny_llama, triplets_csv, tmp_path
):
    config = _config(tiny_llama, triplets_csv, tmp_path / "run", steps=12, eval_every=2,
                     keep_best="dev", early_stopping_patience=2)  # fmt: skip
    # Best at step 4; steps 6 and 8 do not beat it: patience 2 stops at step 8.
    result = train(config, None, KnownScores([1, 5, 3, 4, 9, 9]))
    run = RunDir(result.output)
    assert result.stopped_early and result.steps == 8
    assert [r["step"] for r in run.metrics()] == list(range(1, 9))
    assert [r["step"] for r in run.evaluations()] == [2, 4, 6, 8]
    assert run.best()["step"] == 4
    again = train(config.replace(resume=True), None, KnownScores([]))
    assert again.steps == 8 and [r["step"] for r in run.metrics()] == list(range(1, 9))


def test_a_crash_inside_an_evaluation_then_resume_keeps_the_same_best(
    tiny_llama, triplets_csv, tmp_path
):
    """The step-6 evaluation dies (after the step-4 checkpoint); --resume replays from 4."""
    scores = [1, 5, 3, 4]
    config = _config(tiny_llama, triplets_csv, tmp_path / "straight", eval_every=2,
                     keep_best="dev")  # fmt: skip
    straight = train(config, None, KnownScores(scores))
    crashed = config.replace(output=str(tmp_path / "crashed"))

    def dies_at_step_6(embedder):
        if len(first.seen) == 2:
            raise RuntimeError("killed inside an evaluation")
        return first(embedder)

    first = KnownScores(scores)
    with pytest.raises(RuntimeError, match="inside an evaluation"):
        train(crashed, None, dies_at_step_6)
    resumed = train(crashed.replace(resume=True), None, KnownScores(scores[2:]))
    assert resumed.best == straight.best == {"metric": "dev", "step": 4, "score": 5}
    assert _adapter(resumed.output) == _adapter(straight.output)
    assert _adapter(RunDir(resumed.output).last) == _adapter(RunDir(straight.output).last)
    assert [r["step"] for r in RunDir(resumed.output).evaluations()] == [2, 4, 6, 8]


def test_eval_options_are_checked():
    with pytest.raises(ValueError, match="--keep-best needs.*--eval-every"):
        EvalDuringTraining(keep_best="stsb-dev")
    with pytest.raises(ValueError, match="--early-stopping-patience needs.*--keep-best"):
        EvalDuringTraining(eval_every=2, early_stopping_patience=3)
    names = ["stsb-dev", "stsb-dev/pearson", "beir", "beir/mrr@10"]
    assert metric_key("stsb-dev/spearman", names) == "stsb-dev"
    assert metric_key("beir/ndcg@10", names) == "beir"
    assert metric_key("beir/mrr@10", names) == "beir/mrr@10"
    with pytest.raises(ValueError, match="not an eval metric.*stsb-dev/pearson"):
        metric_key("sts12", names)
    with pytest.raises(ValueError, match="--report-to: unknown wandb"):
        TrainConfig.from_flat(report_to=["wandb"], data="x")


def test_dev_evaluator_names_every_metric_and_defaults_to_stsb_dev(tiny_llama, tmp_path):
    from tiny_models import require_shared

    root = require_shared().parent
    evaluator = DevEvaluator.from_options(EvalDuringTraining(eval_data_dir=str(root)))
    assert evaluator.metric_names == ["stsb-dev", "stsb-dev/pearson"]
    with pytest.raises(ValueError, match="stsb-dev by default.*--eval-tasks"):
        DevEvaluator.from_options(EvalDuringTraining(eval_data_dir=str(tmp_path)))
    retrieval = DevEvaluator("stsb-paraphrase-mini", root)
    assert retrieval.metric_names[0] == "stsb-paraphrase-mini"
    assert "stsb-paraphrase-mini/mrr@10" in retrieval.metric_names
    assert mlflow_name("stsb-paraphrase-mini/ndcg@10") == "stsb-paraphrase-mini/ndcg_at_10"


def test_tensorboard_event_files_hold_train_and_eval_scalars(tiny_llama, triplets_csv, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = _config(tiny_llama, triplets_csv, tmp_path / "run", eval_every=4,
                     report_to=["jsonl", "tensorboard"])  # fmt: skip
    train(config, None, lambda embedder: {"stsb-dev": 50.0, "stsb-dev/pearson": 40.0})
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("train/loss", "train/lr", "train/temperature", "train/grad_norm",
                "train/triplets_per_s", "eval/stsb-dev", "eval/stsb-dev/pearson"):  # fmt: skip
        assert tag in scalars, tag
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))
    assert [(e.step, e.value) for e in events.Scalars("eval/stsb-dev")] == [(4, 50.0), (8, 50.0)]
    logged = [r["loss"] for r in RunDir(config.output).metrics()]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(logged)


def test_mlflow_run_holds_params_metrics_and_the_adapter(tiny_llama, triplets_csv, tmp_path):
    from mlflow.tracking import MlflowClient

    config = _config(tiny_llama, triplets_csv, tmp_path / "run", eval_every=4,
                     report_to=["mlflow"])  # fmt: skip
    train(config, None, lambda embedder: {"beir": 30.0, "beir/mrr@10": 20.0})
    record = json.loads((tmp_path / "run" / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.data.params["lr"] == "0.001" and run.data.params["steps"] == "8"
    history = client.get_metric_history(run.info.run_id, "eval/beir/mrr_at_10")
    assert [(m.step, m.value) for m in history] == [(4, 20.0), (8, 20.0)]
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(1, 9))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in artifacts
    assert run.info.status == "FINISHED"


def test_a_missing_tracker_package_names_the_extra(tiny_llama, triplets_csv, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import fails as if not installed
    config = _config(tiny_llama, triplets_csv, tmp_path / "run", report_to=["tensorboard"])
    with pytest.raises(MissingExtraError, match=r"lmembed\[track\]"):
        train(config)


def test_trackers_get_nothing_but_their_files(tiny_llama, triplets_csv, tmp_path):
    """The default (jsonl) writes no tracker folders; the logs hold every step."""
    result = train(_config(tiny_llama, triplets_csv, tmp_path / "run"))
    names = {p.name for p in Path(result.output).iterdir()}
    assert not {"tensorboard", "mlruns"} & names
    assert {"log.jsonl", "report.md", "report.png", "data.json", "train_config.json"} <= names


def _torchrun(config: TrainConfig) -> None:
    flags = [
        f"--{key.replace('_', '-')}={value[0] if isinstance(value, list) else value}"
        for key, value in config.to_dict().items()
        if key in ("model", "data", "output", "steps", "batch_size", "lr", "warmup", "dtype",
                   "save_every", "seed", "eval_tasks", "eval_every", "keep_best")
        and value is not None
    ]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "lmembed", "train", *flags]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_under_torchrun_rank_0_evaluates_and_the_adapter_is_unchanged(
    tiny_llama, triplets_csv, sts_tsv, tmp_path
):
    plain = _config(tiny_llama, triplets_csv, tmp_path / "plain", steps=4, save_every=2)
    watched = plain.replace(output=str(tmp_path / "watched"), eval_tasks=str(sts_tsv),
                            eval_every=2, keep_best=str(sts_tsv))  # fmt: skip
    _torchrun(plain)
    _torchrun(watched)
    run = RunDir(watched.output)
    assert [r["step"] for r in run.evaluations()] == [2, 4]  # one writer
    assert run.best()["step"] in (2, 4)
    assert _adapter(run.last) == _adapter(Path(plain.output))
