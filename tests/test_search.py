"Optuna sweeps on tiny-llama: storage and resume, recorded attributes, the Pareto front, YAML out, pruning, the CLI."
import argparse
import contextlib
import io
import json
import sys
from unittest import mock

import pytest

optuna = pytest.importorskip("optuna")
from optuna.distributions import FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState, create_trial  # noqa: E402

from hypercompress.config import load_config  # noqa: E402
from hypercompress.search import (PruningRule, add_search_command, best_configs_by_size, dominates,  # noqa: E402
                                  pareto_front, peer_dev_bpbs, plot_pareto, search, trial_browser, trial_report)

SAMPLE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
          "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 60
BASE = ["targets.compression_ratio=1", "data.seq_len=32", "data.batch_size=2", "distillation.batch_size=4",
        "evaluation.seq_len=64", "finetune.patience=10"]
SMALL_SPACE = {"branches.lra.rank": IntDistribution(2, 8, log=True), "branches.kv.rank": IntDistribution(2, 8),
               "distillation.learning_rate": FloatDistribution(1e-4, 1e-3, log=True)}
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(SAMPLE)
    return path


def base_config(tmp_path, *extra):
    return load_config(None, [*BASE, f"logging.log_dir={tmp_path}/logs", *extra])


def run_search(tmp_path, corpus, **kwargs):
    arguments = dict(teacher_model="tiny-llama", distill_data=str(corpus), trial_tokens=256, output_dir=str(tmp_path),
                     log=lambda message: None)
    return search(base_config(tmp_path), **(arguments | kwargs))


@pytest.fixture(scope="module")
def swept(tmp_path_factory, corpus):
    "A 3-trial sweep over the default space with SQLite storage, then resumed with 1 more trial."
    folder = tmp_path_factory.mktemp("sweep")
    storage = f"sqlite:///{folder / 'shared.db'}"
    first = run_search(folder, corpus, trials=3, storage=storage, study_name="tiny")
    numbers = [t.number for t in first.trials]
    study = run_search(folder, corpus, trials=1, storage=storage, study_name="tiny")
    return folder, storage, numbers, study


def test_sweep_records_and_resumes(swept):
    folder, storage, numbers, study = swept
    assert numbers == [0, 1, 2]
    reloaded = optuna.load_study(study_name="tiny", storage=storage)  # everything below is read back from the database
    assert [t.number for t in reloaded.trials] == [0, 1, 2, 3]
    complete = reloaded.get_trials(states=(TrialState.COMPLETE,))
    assert complete, [trial_report(t) for t in reloaded.trials]
    for trial in complete:
        attrs = trial.user_attrs
        assert {"config", "plan", "summary", "overrides", "budget", "dev_bpb_curve", "distill_curve", "output_dir"} <= set(attrs)
        json.dumps(attrs)  # JSON all the way down
        assert trial.values[0] == attrs["summary"]["student_params"] == attrs["planned_params"]  # planned exactly
        assert trial.values[1] == attrs["summary"]["student_bpb"]
        assert attrs["config"]["distillation"]["token_budget"] == 256 and attrs["budget"]["distillation.token_budget"] == 1_000_000
        assert attrs["config"]["branches"]["lra"]["rank"] == trial.params["branches.lra.rank"]
        assert attrs["plan"]["lra_rank"] is not None and attrs["dev_bpb_curve"][0][0] == 0
        assert (folder / "tiny" / f"trial-{trial.number}" / "summary.json").is_file()
    assert reloaded.user_attrs["size"] == "params" and reloaded.user_attrs["teacher_params"] == 90_560


def test_pareto_front_is_not_dominated(swept):
    _, _, _, study = swept
    rows = pareto_front(study)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert rows and [r["student_params"] for r in rows] == sorted(r["student_params"] for r in rows)
    for row in rows:
        point = (row["student_params"], row["student_bpb"])
        assert not any(dominates(tuple(t.values), point) for t in complete)
    on_front = {r["trial"] for r in rows}
    for trial in complete:  # and every trial off the front is dominated by one on it
        if trial.number not in on_front:
            assert any(dominates((r["student_params"], r["student_bpb"]), tuple(trial.values)) for r in rows)
    assert plot_pareto(study).axes[0].get_xscale() == "log"


def test_best_configs_written_as_loadable_yaml(swept, tmp_path, corpus):
    _, _, _, study = swept
    best = best_configs_by_size(study, output_dir=tmp_path / "best")
    assert len(best) == len(study.best_trials)
    for bucket, config in best.items():
        path = tmp_path / "best" / f"size-le-{int(bucket)}.yaml"
        reloaded = load_config(path)
        assert reloaded == config and reloaded.distillation.token_budget == 1_000_000
        assert reloaded.data.distill == str(corpus)
    as_swept = best_configs_by_size(study, [max(t.values[0] for t in study.best_trials)], full_budget=False)
    assert next(iter(as_swept.values())).distillation.token_budget == 256


def test_resume_refuses_another_size_objective(swept, corpus):
    folder, storage, _, _ = swept
    with pytest.raises(ValueError, match="cannot be resumed with size='bytes'"):
        run_search(folder, corpus, trials=1, storage=storage, study_name="tiny", size="bytes")


def test_trial_browser_degrades_to_text(swept):
    _, _, _, study = swept
    assert type(trial_browser(study)).__name__ == "VBox"
    with mock.patch.dict(sys.modules, {"ipywidgets": None}):
        text = trial_browser(study)
    assert isinstance(text, str) and "trial 0 (" in text and "trial 3 (" in text


def test_pruning_rule():
    rule = PruningRule(margin=0.05, min_peers=2)
    assert rule.reason(0, 5.0, [1.0]) is None  # too few peers
    assert rule.reason(0, 2.1, [2.0, 2.0]) is None  # within the margin
    assert "more than 5% above the median 2.0000 of 2" in rule.reason(64, 2.11, [2.0, 2.0])
    assert "max_dev_bpb" in PruningRule(max_dev_bpb=3.0).reason(0, 3.5, [])

    def finished(params, curve, state=TrialState.COMPLETE):
        return create_trial(state=state, values=[params, curve[-1][1]] if state == TrialState.COMPLETE else None,
                            user_attrs=dict(summary=dict(student_params=params), dev_bpb_curve=curve))
    trials = [finished(100, [[0, 2.0]]), finished(300, [[0, 1.0]]), finished(100, [[0, 2.2], [64, 2.1]]),
              finished(10, [[0, 9.0]], TrialState.PRUNED)]
    assert peer_dev_bpbs(trials, 0) == [2.0, 1.0, 2.2]  # only finished trials
    assert peer_dev_bpbs(trials, 0, params=200) == [2.0, 2.2]  # only trials no larger than this one
    assert peer_dev_bpbs(trials, 64, params=200) == [2.1]


def test_sweep_prunes_by_threshold(tmp_path, corpus):
    study = run_search(tmp_path, corpus, trials=2, study_name="threshold", space=SMALL_SPACE,
                       rule=PruningRule(max_dev_bpb=1.0))
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    for trial in study.trials:
        assert "above max_dev_bpb 1" in trial.user_attrs["pruned_reason"]
        assert [step for step, _ in trial.user_attrs["dev_bpb_curve"]] == [0]  # stopped at the first evaluation
        assert not (tmp_path / "threshold" / f"trial-{trial.number}" / "summary.json").exists()
    assert pareto_front(study) == []


class PruneWhenPeers(PruningRule):
    "Prunes as soon as any peer exists: checks which peers the sweep hands to the rule."
    def reason(self, tokens, dev_bpb, peer_bpbs):
        return f"{len(peer_bpbs)} peers at {tokens}" if peer_bpbs else None


def test_sweep_prunes_against_no_larger_peers(tmp_path, corpus):
    storage = f"sqlite:///{tmp_path / 'peers.db'}"
    queued = optuna.create_study(storage=storage, study_name="peers", directions=["minimize", "minimize"])
    for rank in (4, 8, 2):  # the rank-8 trial is larger than the rank-4 one; the rank-2 trial is smaller than both
        queued.enqueue_trial({"branches.lra.rank": rank, "branches.kv.rank": 4, "distillation.learning_rate": 1e-3})
    study = run_search(tmp_path, corpus, trials=3, storage=storage, study_name="peers", space=SMALL_SPACE,
                       rule=PruneWhenPeers())
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    pruned = study.trials[1]
    assert pruned.user_attrs["pruned_reason"] == "1 peers at 0"
    assert pruned.user_attrs["planned_params"] > study.trials[0].values[0]
    assert study.trials[2].values[0] < study.trials[0].values[0]  # smaller than every finished trial: no peer, not pruned


def test_infeasible_trial_is_pruned_with_reason(tmp_path, corpus):
    config = base_config(tmp_path, "targets.compression_ratio=3")
    study = search(config, teacher_model="tiny-llama", distill_data=str(corpus), trials=1, study_name="infeasible",
                   output_dir=str(tmp_path), trial_tokens=128, log=lambda m: None,
                   space={"branches.lra.rank": IntDistribution(24, 32)})
    (trial,) = study.trials  # run_pipeline would design a smaller student, ignoring the drawn rank: pruned before it runs
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["pruned_reason"].startswith("infeasible: teacher 90,560 parameters; target 3x allows at most 30,186")
    assert trial.user_attrs["plan"]["feasible"] is False and trial.user_attrs["planned_params"] > 30_186
    assert not (tmp_path / "infeasible" / "trial-0").exists()


def test_bad_arguments(tmp_path, corpus):
    with pytest.raises(ValueError, match="'params' or 'bytes'"): run_search(tmp_path, corpus, trials=1, size="flops")
    with pytest.raises(ValueError, match="'tpe' or 'nsga2'"): run_search(tmp_path, corpus, trials=1, sampler="grid", space=SMALL_SPACE)
    with pytest.raises(ValueError, match="did you mean 'rank'"):
        run_search(tmp_path, corpus, trials=1, space={"branches.lra.rnk": IntDistribution(2, 4)})
    with pytest.raises(ValueError, match="run_ppl"):
        run_search(tmp_path, corpus, trials=1, space=SMALL_SPACE, overrides=["evaluation.run_ppl=false"])


def test_cli_search(tmp_path, corpus):
    parser = argparse.ArgumentParser(prog="hypercompress")
    add_search_command(parser.add_subparsers(dest="command", required=True))
    storage = f"sqlite:///{tmp_path / 'cli.db'}"
    args = parser.parse_args(["search", "--teacher-model", "tiny-llama", "--distill-data", str(corpus), "--trials", "2",
                              "--storage", storage, "--study", "cli", "--size", "bytes", "--sampler", "nsga2",
                              "--trial-tokens", "128", "--out", str(tmp_path / "sweeps"),
                              *[a for s in [*BASE, f"logging.log_dir={tmp_path}/logs"] for a in ("--set", s)]])
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        study = args.func(args)
    folder = tmp_path / "sweeps" / "cli"
    assert len(study.trials) == 2 and f"{len(study.trials)} trials in study 'cli'" in printed.getvalue()
    rows = json.loads((folder / "pareto.json").read_text())
    assert rows and all(row["storage_bytes"] == t.values[0] for row in rows for t in study.trials if t.number == row["trial"])
    assert (folder / "pareto.png").stat().st_size > 0
    written = sorted((folder / "best").glob("size-le-*.yaml"))
    assert len(written) == len(rows) and all(load_config(p).data.distill == str(corpus) for p in written)
    assert type(study.sampler).__name__ == "NSGAIISampler"


def test_console_script_search(tmp_path, corpus):
    "`hypercompress search` end to end through the installed console script, and bad input as one clear line."
    import shutil
    import subprocess
    exe = shutil.which("hypercompress") or pytest.skip("console script not installed")
    common = ["search", "--teacher-model", "tiny-llama", "--distill-data", str(corpus), "--trials", "1", "--study", "cli",
              "--trial-tokens", "128", "--out", str(tmp_path / "sweeps"),
              *[a for s in [*BASE, f"logging.log_dir={tmp_path}/logs"] for a in ("--set", s)]]
    done = subprocess.run([exe, *common], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 trials in study 'cli'" in done.stdout and (tmp_path / "sweeps" / "cli" / "pareto.json").is_file()
    bad = subprocess.run([exe, *common, "--set", "distillation.kl_wieght=1"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "did you mean 'kl_weight'" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


HANGING = '''
import sys, time
import hypercompress.pipeline as pipeline
pipeline.run_pipeline = lambda *args, **kwargs: time.sleep(600)  # a trial still running when its process is killed
from hypercompress.cli import main
main(sys.argv[1:])
'''


def test_killed_trial_is_failed_and_retried_on_resume(tmp_path, corpus):
    "SIGKILL mid-trial: on resume Optuna's heartbeat marks the trial failed (not RUNNING for ever) and its settings run again."
    import signal
    import subprocess
    import time
    storage = f"sqlite:///{tmp_path / 'killed.db'}"
    common = ["search", "--teacher-model", "tiny-llama", "--distill-data", str(corpus), "--trials", "1", "--study", "killed",
              "--storage", storage, "--trial-tokens", "128", "--out", str(tmp_path / "sweeps"), "--heartbeat", "1",
              *[a for s in [*BASE, f"logging.log_dir={tmp_path}/logs"] for a in ("--set", s)]]
    hanging = subprocess.Popen([sys.executable, "-c", HANGING, *common], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and hanging.poll() is None:
            try: trials = optuna.load_study(study_name="killed", storage=storage).trials
            except Exception: trials = []  # the study is not there yet
            if trials and trials[0].state == TrialState.RUNNING and "output_dir" in trials[0].user_attrs: break
            time.sleep(0.2)
        assert hanging.poll() is None, hanging.communicate()[1][-3000:]
        time.sleep(1)  # a heartbeat or two
    finally:
        hanging.send_signal(signal.SIGKILL)
        hanging.wait()
    time.sleep(4)  # silent for longer than the grace period (twice the heartbeat interval; SQLite times are to the second)
    lines = []
    study = search(base_config(tmp_path), teacher_model="tiny-llama", distill_data=str(corpus), trials=1, storage=storage,
                   study_name="killed", trial_tokens=128, output_dir=str(tmp_path / "sweeps"), heartbeat_interval=1,
                   log=lines.append)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE], ([trial_report(t) for t in study.trials], lines)
    assert study.trials[1].params == study.trials[0].params  # the killed trial's settings ran again
    assert "1 trials so far" in lines[0] and any("trial 0 stopped without finishing" in line for line in lines), lines
