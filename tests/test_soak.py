"""Long runs on big corpora, measured: what train's log rows say about checkpoints and samples, epochs readable at a
billion characters, and the soak and start-up benchmarks (benchmarks.soak, benchmarks.startup, their page) run for
real at a small scale."""

import json
import math
import os
import subprocess
import time
import sys

import pytest

from benchmarks import launch, soak
from fastrnn.progress import epochs, status
from fastrnn.train import train

from conftest import make_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "lstm", "--layers", "1", "--hidden-size", "64", "--batch-size", "8", "--seq-len", "16"]


def log_rows(run_dir):
    return launch.read_rows(os.path.join(run_dir, "log.jsonl"))


def run_module(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", *[str(a) for a in args]], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def soak_corpus(tmp_path_factory):
    """A corpus of 300k characters, prepared by `fastrnn prepare` as a user would."""
    d = tmp_path_factory.mktemp("soak")
    (d / "text.txt").write_text(make_text(300_000, seed=4))
    r = run_module("fastrnn", "prepare", d / "text.txt", "--output", d / "c.h5", timeout=120)
    assert r.returncode == 0, r.stderr
    return str(d / "c.h5")


# ------------------------------------------------------------------------------------------- train's log rows


def test_log_rows_say_what_each_checkpoint_and_sample_took(small_corpus, tmp_path):
    """A checkpoint is written after its step's row: its seconds are in the next row (one entry per write); a
    sample is taken before its step's row: its seconds are in that row. The epoch has six significant digits."""
    seen = {}
    train(small_corpus, tmp_path / "r", dict(hidden_size=16, batch_size=4, seq_len=10, max_steps=30, log_every=5,
                                             checkpoint_every=10, sample_every=10, sample_length=20, eval_every=0,
                                             backend="numpy", threads=1),
          on_event=lambda kind, data: seen.setdefault(kind, data))
    rows = log_rows(tmp_path / "r")
    assert [r["step"] for r in rows if "checkpoint_seconds" in r] == [15, 25]
    assert all(len(r["checkpoint_seconds"]) == 1 and r["checkpoint_seconds"][0] > 0 for r in rows
               if "checkpoint_seconds" in r)
    assert [r["step"] for r in rows if "sample_seconds" in r] == [10, 20, 30]
    assert all(r["sample_seconds"] > 0 for r in rows if "sample_seconds" in r)
    spe = seen["start"]["steps_per_epoch"]
    assert all(r["epoch"] == float(f"{r['step'] / spe:.6g}") for r in rows)


def test_epochs_of_a_billion_characters_are_readable():
    assert [epochs(e) for e in (0, 2.5, 0.52, 0.02, 0.0045, 1.5e-6)] == ["0.00", "2.50", "0.52", "0.02", "0.0045",
                                                                        "0.0000015"]
    row = {"step": 10, "max_steps": 6_620_960, "epoch": 1.51e-5, "loss": 4.5, "chars_per_sec": 20_000.0,
           "rss_mb": 550.0, "eta": 6 * 86400 + 3 * 3600}
    assert status(row, None) == ("step 10/6,620,960 | epoch 0.000015 | loss 4.5000 | 20.0k chars/s | 550 MB | "
                                 "ETA 6d03h")


def test_a_resumed_run_does_not_hold_the_checkpoint_it_resumed_from(small_corpus, tmp_path, monkeypatch):
    """The checkpoint's arrays are copied into the run: the loaded copy is freed before training (a soak of a 2x512
    LSTM saw each resumed rank ~45 MB larger than before the kill)."""
    import gc
    import weakref

    from fastrnn import checkpoint as ckpt_io

    options = dict(hidden_size=16, batch_size=4, seq_len=10, eval_every=0, log_every=5, backend="numpy")
    train(small_corpus, tmp_path / "r", dict(options, max_steps=5))
    loaded, alive = [], []
    real = ckpt_io.load_for_resume

    def load_for_resume(run_dir):
        ckpt, warning = real(run_dir)
        loaded.append(weakref.ref(ckpt.params))
        return ckpt, warning

    def on_event(kind, data):
        if kind == "log":
            gc.collect()
            alive.append(loaded[0]() is not None)

    monkeypatch.setattr(ckpt_io, "load_for_resume", load_for_resume)
    train(small_corpus, tmp_path / "r", dict(options, max_steps=15), resume=True, on_event=on_event)
    assert len(loaded) == 1 and alive == [False, False]


def test_info_says_how_far_into_its_epoch_a_run_is(small_corpus, tmp_path):
    """`fastrnn info RUN`: the epoch with its fraction (a run on a billion characters shows more than 0)."""
    from click.testing import CliRunner

    from fastrnn.cli import main

    seen = {}
    train(small_corpus, tmp_path / "r", dict(hidden_size=8, batch_size=4, seq_len=10, max_steps=12, eval_every=0,
                                             backend="numpy"), on_event=lambda kind, data: seen.setdefault(kind, data))
    got = json.loads(CliRunner().invoke(main, ["info", str(tmp_path / "r"), "--json"]).stdout)
    assert got["training"]["epochs"] == 12 / seen["start"]["steps_per_epoch"] and got["training"]["epoch"] == 0
    text = CliRunner().invoke(main, ["info", str(tmp_path / "r")]).stdout
    assert f"step 12 (epoch {epochs(12 / seen['start']['steps_per_epoch'])})," in text


# ------------------------------------------------------------------------------------------- the soak's parts


def test_an_interval_row_sums_what_its_progress_rows_say():
    rows = [{"step": 10, "chars_per_sec": 100.0}, {"step": 20, "chars_per_sec": 300.0, "eval_seconds": 0.5},
            {"step": 30, "chars_per_sec": 200.0, "checkpoint_seconds": [0.25, 0.5], "sample_seconds": 0.1},
            {"step": 40, "chars_per_sec": None}]
    row = soak.interval_row(t=12.0, wall=10.0, session=2, rows=rows, rss_mb=123.0)
    assert row["step"] == 40 and row["rows"] == 4 and row["chars_per_sec"] == 200.0 and row["rss_mb"] == 123.0
    assert (row["eval_share"], row["checkpoint_share"], row["sample_share"]) == (0.05, 0.075, 0.01)
    empty = soak.interval_row(t=14.0, wall=2.0, session=2, rows=[], rss_mb=None)
    assert empty["chars_per_sec"] is None and empty["step"] is None and empty["eval_share"] == 0


def test_the_resume_check_fails_on_one_differing_field():
    ref = [{"step": s, "loss": 1 / s, "batch_loss": 2 / s, "grad_norm": 3.0, "lr": 0.002} for s in range(10, 121, 10)]
    same = [dict(r) for r in ref]
    verdict = soak.resume_verdict(ref, same, killed=same[:3], checkpoint_step=20, target=120)
    assert verdict["exact"] and verdict["resumed"]["rows_compared"] == 10
    assert verdict["before_kill"]["rows_compared"] == 1  # step 30: the killed run's rows up to 20 are history
    off = [dict(r) for r in ref]
    off[5]["grad_norm"] = math.nextafter(3.0, 4.0)  # one ulp
    verdict = soak.resume_verdict(ref, off, killed=[], checkpoint_step=20, target=120)
    assert not verdict["exact"] and verdict["resumed"]["mismatches"] == [
        {"step": 60, "field": "grad_norm", "reference": 3.0, "value": off[5]["grad_norm"]}]
    short = soak.resume_verdict(ref, same[:6], killed=[], checkpoint_step=20, target=120)
    assert not short["exact"]  # the resumed run did not get to the target: not proven


def test_the_log_tail_follows_a_file_rewritten_by_a_resume(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 10}\n{"step": 20}\n{"step": 3')
    tail = launch.LogTail(str(path))
    assert [r["step"] for r in tail.new()] == [10, 20]  # the row being written waits
    with open(path, "a") as f:
        f.write('0}\n')
    assert [r["step"] for r in tail.new()] == [30]
    tail.after = 10  # resumed at step 10: the file is rewritten with the rows up to 10, then new ones
    (tmp_path / "new").write_text('{"step": 10}\n{"step": 20, "x": 1}\n')
    os.replace(tmp_path / "new", path)
    assert tail.new() == [{"step": 20, "x": 1}]


def test_goals_judge_the_rows_after_each_launch_has_settled():
    def row(t, session, cps, rss):
        return {"t": t, "session": session, "chars_per_sec": cps, "rss_mb": rss, "rows": 1, "eval_seconds": 1.0,
                "checkpoint_seconds": 0.5}
    samples = [row(1, 1, 10.0, 100.0), row(5, 1, 100.0, 150.0), row(9, 1, 104.0, 160.0), row(11, 2, 50.0, 90.0),
               row(15, 2, 101.0, 200.0), row(19, 2, 103.0, 240.0)]
    g = soak.goals(samples, launches=[0.0, 10.0], settle=4, wall=60.0, check={"exact": True})
    assert g["chars_per_sec_flat"]["value"] == pytest.approx(0.04) and g["chars_per_sec_flat"]["passed"]
    assert g["rss_flat_mb"]["value"] == 40.0 and g["rss_flat_mb"]["passed"]
    assert g["eval_checkpoint_share"]["value"] == pytest.approx(9 / 60) and not g["eval_checkpoint_share"]["passed"]
    assert soak.goals(samples, [0.0, 10.0], settle=100, wall=60.0, check={"exact": None})["rss_flat_mb"]["passed"] \
        is None
    assert g["chars_per_sec_flat_vs_machine"]["passed"] is None  # (no yardstick in these rows)
    for r, gflops in zip(samples, (50.0, 100.0, 100.0, 50.0, 100.0, 110.0)):  # the machine 10% faster at the end
        r["sgemm_gflops"] = gflops
    g = soak.goals(samples, launches=[0.0, 10.0], settle=4, wall=60.0, check={"exact": True}, block=1)
    relative = g["chars_per_sec_flat_vs_machine"]
    assert relative["value"] == pytest.approx(1.04 / (103 / 110) - 1) and not relative["passed"]
    assert g["chars_per_sec_flat_blocks"]["value"] == pytest.approx(0.04)  # (blocks of one row: as the rows)
    two = soak.goals(samples, launches=[0.0, 10.0], settle=4, wall=60.0, check={"exact": True}, block=2)
    assert two["chars_per_sec_flat_blocks"]["value"] == 0.0 and two["chars_per_sec_flat_blocks"]["passed"]
    # blocks of two rows: each session one block, medians 102/100 and 102/105
    assert soak.against_machine([r for r in samples if r["t"] not in (1, 11)], block=2) == \
        pytest.approx([1.02, 102 / 105])


def test_the_yardstick_stops_the_training_while_it_measures_the_machine():
    """Launch.paused stops every process of the launch (a busy loop here: its CPU time stands still) and continues
    them after; machine_speed gives positive GFLOP/s and GB/s."""
    import psutil

    busy = launch.Training([sys.executable, "-c", "while True: pass"])
    try:
        proc = psutil.Process(busy.proc.pid)
        time.sleep(0.3)
        with busy.paused():
            assert proc.status() == psutil.STATUS_STOPPED
            cpu = sum(proc.cpu_times()[:2])
            speed = soak.machine_speed(1)
            assert sum(proc.cpu_times()[:2]) - cpu < 0.02
        time.sleep(0.3)
        assert proc.status() != psutil.STATUS_STOPPED and sum(proc.cpu_times()[:2]) - cpu > 0.05
    finally:
        busy.kill()
    assert speed["sgemm_gflops"] > 0 and speed["copy_gbs"] > 0


# ------------------------------------------------------------------------------------------- for real


@pytest.fixture(scope="module")
def soaked(soak_corpus, tmp_path_factory):
    """About 25 s of training sampled every 2 s, killed at 10 s and resumed: (its JSON, the folder it is in)."""
    d = tmp_path_factory.mktemp("soaked")
    results = d / "docs" / "benchmarks" / "2026-12-07"
    r = run_module("benchmarks.soak", "--corpus", soak_corpus, "--minutes", 0.4, "--interval", 2, "--ranks", 1,
                   *TINY, "--kill-at", 10, "--settle", 4, "--out", d / "out", "--json", results / "soak.json",
                   "--", "--checkpoint-every", 40, "--eval-every", 80, "--threads", 1, "--max-epochs", 1000)
    assert r.returncode == 0, r.stderr + r.stdout
    return json.loads((results / "soak.json").read_text()), results


def test_a_soak_samples_kills_resumes_and_checks_the_resume(soaked):
    """The rows of both sessions, the kill, and the resumed run's 100 steps after the kill's checkpoint equal to a
    run resumed from the same checkpoint and never killed."""
    data, results = soaked
    rows, kill, check = data["rows"], data["kill"], data["resume_check"]
    assert [s["session"] for s in rows] == sorted(s["session"] for s in rows) and {1, 2} == {s["session"] for s in rows}
    assert [s["event"] for s in rows if "event" in s] == ["kill"] and kill["at"] >= 10
    assert all(b["t"] > a["t"] for a, b in zip(rows, rows[1:]))
    trained = [s for s in rows if s["rows"]]
    assert trained and all(s["chars_per_sec"] > 0 and s["rss_mb"] > 20 for s in trained)
    assert trained[-1]["step"] >= kill["checkpoint_step"] + 100  # the resumed run trained the steps compared
    assert kill["checkpoint_step"] > 0 and kill["checkpoint_step"] % 40 == 0
    assert check["exact"] is True and check["resumed"]["rows_compared"] == 10 and not check["resumed"]["mismatches"]
    assert check["target_step"] == check["reference_last_step"] == kill["checkpoint_step"] + 100
    assert data["goals"]["resume_exact"]["passed"] is True
    assert data["sessions"][1]["startup"]["resumed_from"] == kill["checkpoint_step"]
    assert all(0 < st["startup"]["to_first_step"] <= st["startup"]["to_first_step_done"] for st in data["sessions"])
    assert data["machine"]["cpu"] and data["settings"]["kill_at"] == 10
    assert all(s["sgemm_gflops"] > 0 and s["copy_gbs"] > 0 and s["paused_seconds"] < 5 for s in rows)
    assert data["machine_speed"]["sgemm_spread"] is not None
    assert sorted(os.listdir(results.parents[2] / "out")) == ["check", "killed", "run"]


def test_report_renders_the_soak_page_with_its_chart(soaked, tmp_path):
    """docs/soak.md, dated and naming the CPU, with the goals, the chart (matplotlib: the [plot] extra) and the rows;
    docs/benchmarks.md links to it."""
    from click.testing import CliRunner

    from benchmarks import report

    data, results = soaked
    for charts, folder in (("--charts", tmp_path / "a"), ("--no-charts", tmp_path / "b")):
        out = CliRunner().invoke(report.main, ["--results", str(results), "--output", str(folder / "benchmarks.md"),
                                               "--readme", str(tmp_path / "none.md"), charts])
        assert out.exit_code == 0, out.output
        assert "wrote " in out.output and "soak.md" in out.output
        assert "[soak.md](soak.md)" in (folder / "benchmarks.md").read_text()
    text = (tmp_path / "a" / "soak.md").read_text()
    assert text.startswith(f"# Soak: lstm 1x64, 1 rank, 0.4 minutes, measured {data['machine']['time'][:10]}\n")
    assert data["machine"]["cpu"] in text and data["machine"]["time"] in text
    assert "| resume exact | yes | yes | pass |" in text and "![soak.png](soak.png)" in text
    assert "the machine's own speed measured" in text and "| chars/s per machine GFLOP/s flat |" in text
    assert "| chars/s flat, 5-row medians |" in text
    assert f"the newest checkpoint step {data['kill']['checkpoint_step']:,}," in text
    assert text.count("\n| ") >= len(data["rows"]) + 2 + 2  # a row each, the goals, the start-up
    assert (tmp_path / "a" / "soak.png").stat().st_size > 1000
    assert "Chart skipped: --no-charts." in (tmp_path / "b" / "soak.md").read_text()
    assert not (tmp_path / "b" / "soak.png").exists()


def test_startup_times_the_first_step_and_each_checkpoint_write(soak_corpus, tmp_path):
    """One launch: its start-up in order, two checkpoint writes timed; report's section shows them."""
    from click.testing import CliRunner

    from benchmarks import report

    r = run_module("benchmarks.startup", "--corpus", soak_corpus, *TINY, "--repeats", 1, "--checkpoints", 2,
                   "--json", tmp_path / "res" / "startup.json", "--", "--threads", 1)
    assert r.returncode == 0, r.stderr + r.stdout
    data = json.loads((tmp_path / "res" / "startup.json").read_text())
    (row,) = data["rows"]
    assert 0 < row["to_start_line"] <= row["to_first_step"] <= row["to_first_step_done"] <= row["wall_seconds"]
    assert 0 < row["first_step_seconds"] <= row["to_first_step_done"] and row["cpu_seconds_to_first_step_done"] > 0
    assert len(row["checkpoint_seconds"]) == 2 and all(s > 0 for s in row["checkpoint_seconds"])
    assert data["summary"]["goal"]["value"] == row["to_first_step_done"]
    out = CliRunner().invoke(report.main, ["--results", str(tmp_path / "res"), "--output", str(tmp_path / "b.md"),
                                           "--readme", str(tmp_path / "none.md"), "--no-charts"])
    assert out.exit_code == 0, out.output
    page = (tmp_path / "b.md").read_text()
    assert "## Start-up on a large corpus" in page and f"{row['to_first_step_done']:.2f}" in page
    verdict = "pass" if data["summary"]["goal"]["passed"] else "FAIL"  # (a loaded machine may take longer)
    assert f"Goal: the first step done within 10 s of the launch: {verdict} (the slowest: " \
           f"{row['to_first_step_done']:.2f} s)." in page


@pytest.mark.parametrize("args", [
    ["benchmarks.soak", "--corpus", "{d}/missing.h5"],
    ["benchmarks.soak", "--corpus", "{d}/text.txt", "--minutes", "1", "--kill-at", "60"],
    ["benchmarks.soak", "--corpus", "{d}/text.txt", "--minutes", "0.1", "--ranks", "1", "--out", "{d}/o", "--",
     "--hidden-size", "0"],
    ["benchmarks.startup", "--corpus", "{d}/text.txt"],
], ids=["missing corpus", "kill after the end", "a bad train option", "a text corpus"])
def test_bad_input_is_one_line(tmp_path, args):
    (tmp_path / "text.txt").write_text(make_text(20_000))
    r = run_module(*[a.format(d=tmp_path) for a in args], timeout=300)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "error" in r.stderr.splitlines()[-1].lower(), r.stderr
