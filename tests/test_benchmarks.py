"""Smoke tests of the benchmark and profiling code paths at tiny sizes. They check structure, never speed."""

import json
import time
import types

import numpy as np
import pytest

from benchmarks import common, plot, sampling, throughput
from fastrnn import reference
from tools import profile_speed

ROW_KEYS = {"backend", "model", "hidden", "batch", "seq_len", "dtype", "threads", "chars_per_sec", "gflops",
            "peak_fraction", "compile_seconds", "repeats", "checked"}


def invoke(command, args):
    """Run a click command with `args` through CliRunner; exit status 0 asserted. Returns the click Result."""
    from click.testing import CliRunner

    result = CliRunner().invoke(command, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def kernels_or_skip():
    kernels = pytest.importorskip("fastrnn.kernels")
    try:
        kernels.forward_backward  # noqa: B018 - loads the kernels
    except (ImportError, AttributeError) as exc:
        pytest.skip(f"fastrnn.kernels not usable yet: {exc}")
    return kernels


def test_format_table_and_timing():
    text = common.format_table([{"a": 1.5, "b": None}], [("A", "a", ".1f"), ("B", "b", "d")])
    assert text.splitlines()[-1].split() == ["1.5", "-"]
    out = common.time_interleaved({"x": lambda: None, "y": lambda: None}, {"x": 2, "y": 1}, 0.0)
    assert len(out["x"][2]) == 2 and len(out["y"][2]) == 1


def test_calls_per_repeat_ignores_one_slow_probe(monkeypatch):
    clock, calls = [0.0], []
    monkeypatch.setattr(common, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))  # a clock of its own

    def fn():  # the first call is slow (as after another contender), the others take 1 ms
        clock[0] += 0.2 if not calls else 0.001
        calls.append(1)

    k = common._calls_per_repeat(fn, 0.1)
    assert len(calls) == 3 and 99 <= k <= 100  # one 0.2 s probe alone would have given k = 1 (99: rounding)


def test_every_timed_repeat_follows_a_warm_up():
    log = []
    fns = {"a": lambda: (log.append("a"), time.sleep(0.002)), "b": lambda: (log.append("b"), time.sleep(0.002))}
    out = common.time_interleaved(fns, {"a": 2, "b": 2}, min_seconds=0.02, warmup=0.01)
    ka, kb = out["a"][1], out["b"][1]
    wa, wb = max(1, ka // 2), max(1, kb // 2)  # warm-up calls: warmup / min_seconds of a repeat
    last = log[-(wa + ka + wb + kb):]  # the last round: a warms up and is timed, then b
    assert last == ["a"] * (wa + ka) + ["b"] * (wb + kb)
    assert log.count("a") == 3 + 2 * (wa + ka) and log.count("b") == 3 + 2 * (wb + kb)  # 3 probes, 2 rounds


def test_batches_continue_streams():
    tokens = np.arange(1000, dtype=np.int32)
    b = common.Batches(3, 5, tokens)
    x0, y0, first = b.next()
    x1, _, _ = b.next()
    assert first and x0.shape == (3, 5) and x0.flags.c_contiguous
    np.testing.assert_array_equal(y0[:, :-1], x0[:, 1:])
    np.testing.assert_array_equal(x1[:, 0], x0[:, -1] + 1)  # minibatch 1 continues every stream


def test_throughput_rows_dry_run(tmp_path):
    """The whole command on a 1-row grid, with the reference standing in for the numba backend."""
    path = tmp_path / "t.json"
    invoke(throughput.main, ["--hidden", "8", "--batch", "2", "--threads", "1", "--dtype", "float64",
                             "--seq-len", "5", "--repeats", "2", "--min-seconds", "0", "--peak-size", "64",
                             "--no-targets", "--numba-module", "fastrnn.reference", "--json", path])
    result = json.loads(path.read_text())
    assert {r["backend"] for r in result["rows"]} == {"numba", "numpy", "seed"}
    for r in result["rows"]:
        assert ROW_KEYS <= set(r) and r["checked"] and r["chars_per_sec"] > 0
    numba = next(r for r in result["rows"] if r["backend"] == "numba")
    assert numba["vs_numpy"] > 0 and numba["vs_seed"] > 0
    assert {"float32", "float64"} <= set(result["peaks"]) and "cpu" in result["machine"]
    assert [t["passed"] for t in result["targets"]] == [None] * len(throughput.TARGETS)  # no target rows were run
    png = tmp_path / "t.png"
    invoke(plot.main, [path, "-o", png])
    assert png.stat().st_size > 0


def test_targets_evaluate():
    rows = [dict(backend="numba", hidden=128, batch=1, dtype="float32", threads=2, vs_numpy=6.0),
            dict(backend="numba", hidden=128, batch=32, dtype="float32", threads=2, vs_numpy=1.2),
            dict(backend="numba", model="lstm", layers=1, hidden=512, batch=64, dtype="float32", threads=2,
                 peak_fraction=0.85),
            dict(backend="numba", model="gru", layers=1, hidden=512, batch=64, dtype="float32", threads=2,
                 peak_fraction=0.7)]
    passed = {t["name"]: t["passed"] for t in throughput.evaluate_targets(rows)}
    assert passed == {"H512 N64 2thr f32": None, "lstm H512 N64 2thr f32": True, "lstm x2 H512 N64 2thr f32": None,
                      "gru H512 N64 2thr f32": False, "H128 N1 2thr f32": True, "H128 N32 2thr f32": False}


def test_seed_check_is_tight():
    assert throughput.check_seed(6, 7, "float64") < 1e-10


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernels_check_against_reference(dtype):
    kernels = kernels_or_skip()
    assert throughput.check_backend(kernels, 16, 3, 6, dtype) <= throughput.CHECK_TOL[dtype]


@pytest.mark.parametrize("model,layers,weights", [
    ("rnn", 1, 16 * 16 + 16 * 65),  # Whh and Why of a float32 H16 model
    ("lstm", 2, 3 * 16 * 64 + 16 * 65),  # two Whh (16, 64), the second layer's Wxh (16, 64), Why
    ("gru", 1, 16 * 48 + 16 * 65),
])
def test_sampling_rows(model, layers, weights):
    module = "fastrnn.reference" if model == "rnn" else kernels_or_skip().__name__
    rows = sampling.run(hidden=16, length=20, threads=1, repeats=1, numba_module=module, model=model,
                        num_layers=layers)
    names = {r["backend"] for r in rows}
    assert {"numba-generate", "numpy-generate", "numpy-loop", "read-once"} <= names
    assert all(r["checked"] and r["chars_per_sec"] > 0 for r in rows)  # numpy-loop writes the cell's equations
    assert all(r["model"] == model and r["layers"] == layers for r in rows)
    bound = next(r for r in rows if r["backend"] == "read-once")
    assert bound["bytes_per_char"] == weights * 4
    assert next(r for r in rows if r["backend"] == "read-split")["threads"] == 2
    streams = next(r for r in rows if r["backend"] == "numba-streams")
    assert streams["streams"] == 32 and streams["checked"] and streams["vs_one_stream"] > 0
    served = {r["streams"]: r for r in rows if r["backend"] == "serve-clients"}  # 32 HTTP clients at once
    assert sorted(served) == [1, 32] and all(r["checked"] and r["chars_per_sec"] > 0 for r in served.values())


def run_profile(args):
    """tools.profile_speed's command with `args`; returns what it printed (exit status 0 asserted)."""
    return invoke(profile_speed.main, args).output


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_profile_speed_phases(backend, tmp_path, capsys):
    if backend == "numba":
        kernels_or_skip()
    csv_path, json_path = tmp_path / "p.csv", tmp_path / "p.json"
    run_profile(["--hidden", "16", "--batch", "4", "--seq-len", "8", "--threads", "1", "--backend", backend,
                 "--steps", "3", "--warmup", "1", "--csv", str(csv_path), "--json", str(json_path)])
    result = json.loads(json_path.read_text())
    phases = [r["phase"] for r in result["rows"]]
    assert phases[0] == "data" and phases[-3:] == ["clip", "update", "step"]
    assert csv_path.read_text().startswith("phase,median_ms")
    if backend == "numpy":
        assert phases[1:4] == ["forward", "loss", "backward"] and result["plan"] == "NumPy reference"
    else:  # the plan training uses at this shape: the fused one-layer rnn step, one call
        assert phases[1] == "forward_backward" and result["plan"].startswith("fused step")


def test_profile_speed_parses_a_train_command(small_corpus, tmp_path, capsys):
    out = run_profile(["--steps", "2", "--warmup", "1", "--", "fastrnn", "train", small_corpus, "--output",
                       str(tmp_path / "run"), "--hidden-size", "12", "--batch-size", "3", "--seq-len", "7",
                       "--backend", "numpy", "--threads", "1", "--optimizer", "adagrad"])
    assert "numpy backend, rnn x 1 H=12 N=3 T=7" in out and "adagrad" in out
    assert not (tmp_path / "run").exists()  # profiling trains nothing and writes nothing


def test_reference_is_its_own_contender():
    step = throughput.BackendStep(reference, 8, 2, 5, "float32")
    step()
    assert np.isfinite(step.loss) and step.h.shape == (2, 8)


def test_throughput_covers_every_model(tmp_path):
    """Rows for gru and a 2-layer lstm (numba and numpy, no seed contender), FLOPs by the per-model formula."""
    kernels_or_skip()
    path = tmp_path / "m.json"
    invoke(throughput.main, ["--models", "gru,lstm:2", "--hidden", "8", "--batch", "2", "--threads", "1",
                             "--dtype", "float64", "--seq-len", "5", "--repeats", "2", "--min-seconds", "0",
                             "--peak-size", "64", "--no-targets", "--json", path])
    rows = json.loads(path.read_text())["rows"]
    assert {(r["backend"], r["model"], r["layers"]) for r in rows} == {
        ("numba", "gru", 1), ("numpy", "gru", 1), ("numba", "lstm", 2), ("numpy", "lstm", 2)}
    for r in rows:
        assert r["checked"] and r["chars_per_sec"] > 0
        G = {"gru": 3, "lstm": 4}[r["model"]]
        expect = 6 * G * 8 * 8 * (2 * r["layers"] - 1) + 6 * 65 * 8
        assert r["gflops"] == pytest.approx(r["chars_per_sec"] * expect / 1e9)
    assert throughput.flops_per_char(512) == 6 * 512 * 512 + 6 * 65 * 512
    png = tmp_path / "m.png"
    invoke(plot.main, [path, "-o", png, "--model", "lstm:2"])
    assert png.stat().st_size > 0


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_profile_speed_any_model(small_corpus, tmp_path, capsys, backend):
    json_path = tmp_path / "p.json"
    run_profile(["--steps", "2", "--warmup", "1", "--json", str(json_path), "--", "fastrnn", "train", small_corpus,
                 "--output", str(tmp_path / "run"), "--model", "lstm", "--num-layers", "2", "--hidden-size", "8",
                 "--batch-size", "3", "--seq-len", "5", "--dropout", "0.3", "--backend", backend, "--threads", "1"])
    phases = [r["phase"] for r in json.loads(json_path.read_text())["rows"]]
    assert phases[1:4] == (["forward", "loss", "backward"] if backend == "numpy" else ["forward", "output", "backward"])


@pytest.mark.parametrize("args", [
    ["benchmarks.throughput", "--hidden", "0"],
    ["benchmarks.throughput", "--models", "transformer"],
    ["benchmarks.plot", "{d}/missing.json"],
    ["benchmarks.plot", "{d}/broken.json"],
    ["benchmarks.sampling", "--hidden", "-1"],
    ["benchmarks.sampling", "--streams", "0"],
    ["benchmarks.time_to_quality", "--models", "rnn:x:8"],
    ["benchmarks.time_to_quality", "--corpus", "{d}/missing.txt"],
    ["benchmarks.pytorch", "--configs", "lstm:2:512"],
    ["tools.profile_speed", "--", "fastrnn", "train", "{d}/missing.h5", "-o", "{d}/run"],
    ["tools.profile_speed", "--hidden", "0"],
    ["tools.compare_models", "{d}/missing.txt", "--out", "{d}/cmp"],
    ["tools.profile_memory", "--csv", "{d}/m.csv"],
    ["benchmarks.prepare", "{d}/missing.txt"],
    ["benchmarks.train_memory", "{d}/missing.h5"],
    ["benchmarks.kernel_scratch", "64"],
    ["benchmarks.report", "--results", "{d}/missing"],
    ["benchmarks.report", "--results", "{d}", "--output", "{d}/out.md"],
    ["benchmarks.ttq_grid", "run", "--configs", "rnn:x:8", "--results", "{d}/r.jsonl"],
    ["benchmarks.ttq_grid", "run", "--configs", "auto", "--cores", "0", "--threads", "2", "--results", "{d}/r.jsonl"],
    ["benchmarks.ttq_grid", "report", "--results", "{d}/broken.json", "--output", "{d}/out.md"],
], ids=lambda a: " ".join(a[:3]))
def test_bad_input_to_benchmarks_and_tools(tmp_path, args):
    """Each: a non-zero exit and an error line on stderr, no traceback, nothing written."""
    import subprocess
    import sys

    (tmp_path / "broken.json").write_text("{")
    before = sorted(p.name for p in tmp_path.iterdir())
    root = __import__("os").path.dirname(__import__("os").path.dirname(__file__))
    r = subprocess.run([sys.executable, "-m", *[a.format(d=tmp_path) for a in args]], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "error" in r.stderr.splitlines()[-1].lower(), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


COMMANDS = ["benchmarks.throughput", "benchmarks.sampling", "benchmarks.prepare", "benchmarks.plot",
            "benchmarks.time_to_quality", "benchmarks.pytorch", "benchmarks.distributed", "benchmarks.mkl_bf16",
            "benchmarks.kernel_scratch", "benchmarks.train_memory", "benchmarks.report", "benchmarks.bf16_quality",
            "benchmarks.soak", "benchmarks.startup",
            "tools.profile_speed",
            "tools.profile_memory", "tools.compare_models"]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_explains_every_option(name):
    """--help runs, names every option and shows a default for each option that has one."""
    import importlib

    command = importlib.import_module(name).main
    out = invoke(command, ["--help"]).output
    with_default = 0
    for param in command.params:
        if not isinstance(param, __import__("click").Option) or param.name == "help":
            continue
        for opt in param.opts + param.secondary_opts:
            assert opt in out, f"{name} --help does not mention {opt}"
        assert param.help, f"{name}: {param.opts[0]} has no help text"
        unset = param.default is None or "UNSET" in repr(param.default)  # click 8.3 marks "no default" UNSET
        with_default += not unset and not (param.is_flag and not param.secondary_opts)
    assert out.count("[default:") >= with_default


def test_time_to_quality_trains_each_model_for_its_budget(tmp_path):
    """Two tiny models, one backend each, 1.5 s each on a small text: a row each with a finite val bits/char (the
    val loss in nats over ln 2), steps trained, and the best row named."""
    import json
    import math
    import subprocess
    import sys

    from conftest import make_text

    corpus = tmp_path / "t.txt"
    corpus.write_text(make_text(30_000))
    root = __import__("os").path.dirname(__import__("os").path.dirname(__file__))
    out = tmp_path / "ttq.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.time_to_quality", "--corpus", str(corpus), "--budget", "3",
                        "--models", "rnn:1:16,lstm:1:8", "--backends", "numba", "--batch-size", "4", "--seq-len", "10",
                        "--eval-tokens", "2000", "--json", str(out)], cwd=root, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert [(row["model"], row["hidden"]) for row in data["rows"]] == [("rnn", 16), ("lstm", 8)]
    for row in data["rows"]:
        # --max-time is the run's wall clock: training and the final evaluation fit in the budget
        assert math.isfinite(row["val_bpc"]) and row["steps"] > 10 and 0 < row["train_seconds"] <= 3
        assert abs(row["val_bpc"] - row["val_loss"] / math.log(2)) < 1e-9
    assert data["best"]["val_bpc"] == min(row["val_bpc"] for row in data["rows"])


def test_a_run_that_trained_no_step_has_no_chars_per_second():
    """A budget too short for one step: the row says so (no division by zero)."""
    import math

    from benchmarks.time_to_quality import result_row
    from fastrnn.checkpoint import RunState

    row = result_row(RunState(step=0, elapsed=0.0), 32, 50, {"model": "rnn"}, 1.0)
    assert row["chars_per_sec"] is None and row["steps"] == 0 and math.isnan(row["val_loss"])


def test_the_grid_prepares_text_once_and_takes_a_prepared_corpus_as_it_is(tmp_path, small_corpus):
    """benchmarks.ttq_grid.prepared: a text file is prepared under the work directory once (with the grid's split),
    a corpus fastrnn prepare made is used where it is, with its own splits, and nothing is written for it."""
    import os

    from benchmarks.ttq_grid import prepared
    from conftest import make_text
    from fastrnn.corpus import open_corpus

    text = tmp_path / "t.txt"
    text.write_text(make_text(20_000))
    work = tmp_path / "work"
    work.mkdir()
    out = prepared(str(text), str(work), 0.1, 0.0)
    assert os.path.dirname(out) == str(work) and os.path.basename(out) == "t.txt-val0.1-test0.h5"
    with open_corpus(out) as c:
        assert len(c.split("test")) == 0 and len(c.split("val")) > 0
    stamp = os.stat(out).st_mtime_ns
    assert prepared(str(text), str(work), 0.1, 0.0) == out and os.stat(out).st_mtime_ns == stamp
    assert prepared(small_corpus, str(work), 0.1, 0.0) == os.path.abspath(small_corpus)
    assert os.listdir(work) == ["t.txt-val0.1-test0.h5"]


def test_the_grid_runs_in_resumable_pieces_and_reports(tmp_path):
    """benchmarks.ttq_grid: a fixed configuration, then the same grid with `auto` added: the second piece runs only
    auto; both rows are in the results file (one JSON line each), pinned to a core, and the report has their table
    with auto's place and the line of its choice."""
    import json
    import subprocess
    import sys

    from conftest import make_text

    corpus = tmp_path / "tiny.txt"
    corpus.write_text(make_text(30_000))
    root = __import__("os").path.dirname(__import__("os").path.dirname(__file__))
    results = tmp_path / "grid.jsonl"

    def grid(configs):
        r = subprocess.run([sys.executable, "-m", "benchmarks.ttq_grid", "run", "--configs", configs, "--corpus",
                            str(corpus), "--budget", "3", "--cores", "0,1", "--eval-tokens", "2000", "--eval-every", "20",
                            "--results", str(results)], cwd=root, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stdout

    fixed = "rnn:1:16:b4:t10:cosine:adamw"
    assert "0 of 1 runs already" in grid(fixed)
    out = grid(f"{fixed},auto")
    assert "1 of 2 runs already" in out and "1 row(s) appended" in out
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["config"] for r in rows] == [fixed, "auto"]
    assert rows[0]["batch"] == 4 and rows[0]["schedule"] == "cosine" and rows[1]["choice"].startswith("choice: ")
    assert rows[0]["optimizer"] == "adamw" and rows[1]["optimizer"] == "adam"
    assert all(r["val_curve"][0][0] == 20 for r in rows)  # evaluations every 20 steps: the comparison per step
    for r in rows:
        assert r["steps"] > 0 and r["chars_per_sec"] > 0 and r["val_loss"] > 0 and r["core"] in ("0", "1")
        assert r["wall_seconds"] < 3 + 2, r
    page = tmp_path / "grid.md"
    r = subprocess.run([sys.executable, "-m", "benchmarks.ttq_grid", "report", "--results", str(results), "--output",
                        str(page)], cwd=root, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = page.read_text()
    assert "## tiny.txt, 3 s, 1 thread a run" in text and "| auto |" in text and "auto: place " in text
    step = max({s for s, _ in rows[0]["val_curve"]} & {s for s, _ in rows[1]["val_curve"]})
    assert f"| val at step {step:,} |" in text


def test_the_grid_page_says_what_each_setting_changed_alone():
    """benchmarks.ttq_grid.lessons: the best of each budget, and the pairs of fixed configurations whose settings
    differ in one alone (not auto nor an earlier rule's auto@COMMIT, not across budgets), with the change of best val from one to the other."""
    from benchmarks.ttq_grid import lessons, one_change

    def row(config, budget, val, **settings):
        base = dict(model="lnlstm", layers=1, hidden=256, batch=32, seq_len=50, lr=2e-3, optimizer="adam",
                    schedule="cosine", dropout=0.0)
        return dict(base, **settings, config=config, corpus="ts.txt", budget_s=budget, threads=1, val_loss=val,
                    params=1000, epochs=4.0, chars=8000)

    rows = [row("lnlstm:1:256:cosine", 120, 1.46), row("lnlstm:1:256:cosine:d0.2", 120, 1.50, dropout=0.2),
            row("lnlstm:1:256:cosine", 300, 1.47), row("lnlstm:1:256:cosine:d0.2", 300, 1.45, dropout=0.2),
            row("lnlstm:1:512:cosine:d0.2", 300, 1.43, hidden=512, dropout=0.2),
            row("auto", 300, 1.40, hidden=512), row("auto@1234567", 120, 1.48, layers=2),
            row("rnn:1:256:cosine", 300, 1.60, model="rnn")]
    pairs = one_change(rows)
    assert sorted(pairs) == ["dropout", "hidden", "model"]
    assert [(a["budget_s"], a["dropout"], b["dropout"]) for a, b in pairs["dropout"]] == [(120, 0, 0.2), (300, 0, 0.2)]
    text = "\n".join(lessons(rows))
    assert "| ts.txt | 300 | 1 | auto (lnlstm 1x512, dropout 0) | 1,000 | 4.00 | 8.0 | 0.500 | 1.4000 |" in text
    assert "| ts.txt | 120 | lnlstm:1:256:cosine | 0.0 | 0.2 | 1.4600 | 1.5000 | +0.0400 | 4.00 | 4.00 |" in text
    assert "| ts.txt | 300 | lnlstm:1:256:cosine:d0.2 | 256 | 512 | 1.4500 | 1.4300 | -0.0200 |" in text
    assert "### The batch changed alone" not in text


def test_bf16_quality_trains_both_precisions_the_same_steps(tmp_path):
    """A tiny lstm, 3 steps in float32 and in bf16: two rows of the same steps with finite val losses, and the
    target computed from them (bf16 granted where the CPU has it, said otherwise)."""
    import json
    import math
    import subprocess
    import sys

    from conftest import make_text
    from fastrnn.kernels.tiles import has_bf16

    corpus = tmp_path / "t.txt"
    corpus.write_text(make_text(30_000))
    root = __import__("os").path.dirname(__import__("os").path.dirname(__file__))
    out = tmp_path / "bf.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.bf16_quality", "--corpus", str(corpus), "--model",
                        "lstm:1:16", "--steps", "3", "--batch-size", "8", "--seq-len", "10", "--eval-tokens", "2000",
                        "--json", str(out)], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    f32, bf16 = data["rows"]
    assert (f32["precision"], bf16["precision"]) == ("float32", "bf16") and f32["steps"] == bf16["steps"] == 3
    assert all(math.isfinite(row["val_loss"]) for row in data["rows"])
    assert bf16["granted"] == has_bf16() and ("in bf16" in bf16["kernels"]) == has_bf16()
    assert data["target"]["value"] == pytest.approx(bf16["val_loss"] - f32["val_loss"])


def test_pytorch_comparison_runs_where_torch_is_installed(tmp_path):
    pytest.importorskip("torch")
    import json

    from benchmarks import pytorch

    out = tmp_path / "pt.json"
    r = invoke(pytorch.main, ["--configs", "lstm:2:16:4,gru:1:16:2", "--repeats", "1", "--min-seconds", "0",
                              "--no-bf16", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["rows"]
    assert [(row["contender"], row["model"]) for row in rows] == [("fastrnn", "lstm"), ("torch", "lstm"),
                                                                  ("fastrnn", "gru"), ("torch", "gru")]
    assert all(row["chars_per_sec"] > 0 and row["fastrnn_vs"] > 0 for row in rows)


def test_benchmarks_never_import_tools():
    import pathlib

    for path in (pathlib.Path(__file__).parent.parent / "benchmarks").glob("*.py"):
        text = path.read_text()
        assert "import tools" not in text and "from tools" not in text, path


def fake_results(folder):
    """A results folder with a throughput and a sampling file whose numbers are easy to spot."""
    machine = dict(cpu="Test CPU 9000", cpu_flags=["avx2", "fma"], logical_cores=2, physical_cores=2,
                   python="3", numpy="2", numba="0", scipy="1", llvmlite="0", blas=[], time="2026-01-02 03:04:05")
    rows = [dict(backend="numba", model="rnn", layers=1, hidden=512, batch=64, seq_len=50, vocab=65,
                 dtype="float32", threads=2, chars_per_sec=123456.7, step_ms=25.9, gflops=98.76,
                 peak_fraction=0.7654, vs_numpy=1.234, vs_seed=45.6, compile_seconds=0.5, checked=True),
            dict(backend="numpy", model="rnn", layers=1, hidden=512, batch=64, seq_len=50, vocab=65,
                 dtype="float32", threads=2, chars_per_sec=100042.0, step_ms=32.0, gflops=80.0,
                 peak_fraction=0.6, compile_seconds=0.0, checked=True)]
    targets = [dict(name="H512 N64 2thr f32", hidden=512, batch=64, dtype="float32", threads=2, passed=True,
                    checks=[dict(metric="peak_fraction", value=0.7654, threshold=0.65, passed=True),
                            dict(metric="vs_numpy", value=1.234, threshold=1.15, passed=True)])]
    common.write_json(folder / "throughput.json", dict(
        machine=machine, peaks={"float32": {"2": 131.5}, "float64": {"2": 66.25}}, rows=rows, targets=targets,
        settings=dict(seq_len=50, vocab=65, repeats=3, min_seconds=0.1, quick=True)))
    common.write_json(folder / "sampling.json", dict(machine=machine, rows=[
        dict(backend="numba-generate", model="rnn", layers=1, hidden=512, dtype="float32", threads=1,
             chars_per_sec=31337.0, vs_numpy_loop=2.71, first_call_seconds=1.0, checked=True)], targets=[
        dict(name="sampling H512", backend="numba-generate", value=2.71, threshold=10.0, passed=False)]))
    (folder / "notes.txt").write_text("ignored")


@pytest.mark.parametrize("matplotlib", [True, False])
def test_report_writes_the_page_and_the_readme_block(tmp_path, monkeypatch, matplotlib):
    import builtins

    from benchmarks import report

    if matplotlib:
        pytest.importorskip("matplotlib")
    else:  # report works without matplotlib: the import fails, the tables are written, the charts skipped
        real_import = builtins.__import__

        def no_matplotlib(name, *args, **kwargs):
            if name == "matplotlib" or name.startswith("matplotlib."):
                raise ImportError("no matplotlib here")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    results = tmp_path / "docs" / "benchmarks" / "2026-01-02"
    results.mkdir(parents=True)
    fake_results(results)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nintro\n<!-- benchmarks:begin -->\nold numbers\n<!-- benchmarks:end -->\nrest\n")
    page = tmp_path / "docs" / "benchmarks.md"
    out = invoke(report.main, ["--results", results, "--output", page, "--readme", readme]).output
    text = page.read_text()
    for number in ("Test CPU 9000", "avx2, fma", "131.5 GFLOP/s", "66.2 GFLOP/s", "123,457", "76.5%", "1.23",
                   "45.6", "98.76", "100,042", "31,337", "2.71"):
        assert number in text, number
    pngs = sorted(p.name for p in page.parent.glob("*.png"))
    if matplotlib:
        assert pngs and all(f"![{p}]({p})" in text for p in pngs)
    else:
        assert not pngs and "Charts skipped: matplotlib is not installed" in text and "charts skipped" in out
    new = readme.read_text()
    assert "old numbers" not in new and new.startswith("# x\n\nintro\n<!-- benchmarks:begin -->\n")
    assert new.endswith("<!-- benchmarks:end -->\nrest\n")
    block = new.split("<!-- benchmarks:begin -->")[1].split("<!-- benchmarks:end -->")[0]
    assert "| H512 N64 2thr f32 | 123,457 | % of sgemm peak | 76.5% | >= 65.0% | pass |" in block
    assert "1.23x" in block and "(docs/benchmarks.md)" in block


def test_report_leaves_a_readme_without_markers_alone(tmp_path, monkeypatch):
    from benchmarks import report

    fake_results(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    monkeypatch.chdir(tmp_path)
    out = invoke(report.main, ["--results", tmp_path, "--output", "out/benchmarks.md", "--readme", "README.md",
                               "--no-charts"]).output
    assert readme.read_text() == "no markers\n" and "no <!-- benchmarks:begin -->" in out
    assert (tmp_path / "out" / "benchmarks.md").exists()


def test_report_picks_the_newest_dated_folder(tmp_path):
    from benchmarks import report

    for name in ("2025-12-31", "2026-01-02", "not-a-date"):
        (tmp_path / name).mkdir()
    assert report.newest_results(str(tmp_path)).endswith("2026-01-02")
    # each kind from the newest folder that has it
    import json

    for day, kind in (("2025-12-31", "sampling"), ("2025-12-31", "prepare"), ("2026-01-02", "prepare")):
        (tmp_path / day / f"{kind}.json").write_text(json.dumps({"rows": [], "day": day}))
    found = report.newest_of_each_kind(str(tmp_path))
    assert [(k, name, d["day"]) for k, name, d in found] == [("sampling", "2025-12-31/sampling.json", "2025-12-31"),
                                                            ("prepare", "2026-01-02/prepare.json", "2026-01-02")]
    assert report.kind_of("train_memory_big.json") == "train_memory" and report.kind_of("x.json") is None


def test_init_choice_measures_and_names_the_best_init(tmp_path):
    from click.testing import CliRunner

    from benchmarks import init_choice
    from tests.conftest import make_text

    src = tmp_path / "small.txt"
    src.write_text(make_text(20_000))
    out = tmp_path / "init.json"
    result = CliRunner().invoke(init_choice.main, ["--cells", "rnn", "--inits", "normal,xavier", "--steps", "3",
                                                   "--seeds", "0,1", "--corpus", str(src), "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [(r["init"], r["seeds"]) for r in data["rows"]] == [("normal", 2), ("xavier", 2)]
    assert len(data["runs"]) == 4 and all(np.isfinite(r["val_loss"]) for r in data["runs"])
    means = {r["init"]: r["val_mean"] for r in data["rows"]}
    assert data["best"]["rnn"] == min(means, key=means.get)


def test_distributed_scaling_model():
    """The ring Allreduce formula and the efficiency table: one machine costs nothing, the time grows toward
    2 x bytes / bandwidth plus the latency terms, and the 90% limit is the largest K still at 90%."""
    from benchmarks import distributed as d

    assert d.ring_allreduce_seconds(1e6, 1, 10, 30e-6) == 0
    two = d.ring_allreduce_seconds(1e6, 2, 10, 30e-6)
    assert two == pytest.approx(1e6 / 1.25e9 + 2 * 30e-6)
    assert d.ring_allreduce_seconds(1e6, 1024, 10, 0) == pytest.approx(2 * 1023 / 1024 * 1e6 / 1.25e9)
    rows, limits = d.scaling(0.01, 1e6, [(10.0, 30e-6)])
    eff = {r["K"]: r["efficiency"] for r in rows}
    assert eff[1] == 1 and all(eff[a] > eff[b] for a, b in zip(d.KS, d.KS[1:]))
    k = limits["10 Gb/s, 30 us"]
    assert 0.01 / (0.01 + d.ring_allreduce_seconds(1e6, k, 10, 30e-6)) >= 0.9
    assert 0.01 / (0.01 + d.ring_allreduce_seconds(1e6, 2 * k, 10, 30e-6)) < 0.9
    assert [x for link in d.parse_links("10:30,100:3") for x in link] == pytest.approx([10, 30e-6, 100, 3e-6])


def test_report_target_rows_take_the_chars_per_sec_of_their_own_model():
    from benchmarks import report

    rows = [dict(backend="numba", model=m, layers=l, hidden=512, batch=64, dtype="float32", threads=2,
                 chars_per_sec=c) for m, l, c in (("rnn", 1, 90_000), ("lstm", 1, 24_000), ("lstm", 2, 8_800))]
    check = [dict(metric="peak_fraction", value=0.8, threshold=0.8, passed=True)]
    common_ = dict(hidden=512, batch=64, dtype="float32", threads=2, checks=check)
    targets = [dict(common_, name="H512 N64 2thr f32"), dict(common_, name="lstm x2 H512 N64 2thr f32"),  # older
               dict(common_, name="lstm H512 N64 2thr f32", model="lstm", layers=1)]
    got = [r["chars_per_sec"] for r in report.target_rows(dict(rows=rows, targets=targets))]
    assert got == [90_000, 8_800, 24_000]


def test_isa_worker_times_every_candidate_and_marks_a_slow_choice(monkeypatch):
    """benchmarks.isa's worker on a tiny row: the plan chosen is one of the candidates, each candidate has a
    speed, `slow` says whether the chosen one is more than 5% behind the fastest."""
    from benchmarks import isa as bench_isa

    monkeypatch.setattr(bench_isa, "ROWS", [("tiny", "lstm", 1, 8, 16)])
    monkeypatch.setattr(bench_isa, "generation", lambda threads, repeats: [])
    out = bench_isa.worker(2, 1, ["tiny"], "plans")
    (row,) = out["rows"]
    assert set(row["candidates"]) == {"loops", "blas", "tiles"} and all(v > 0 for v in row["candidates"].values())
    assert row["chosen"] in row["candidates"] and out["sgemm_gflops"] > 0
    best = max(row["candidates"].values())
    assert row["slow"] == (row["candidates"][row["chosen"]] < bench_isa.SLOW * best)
    assert bench_isa.neighbours(4, 3, 16)[0] == (4, 3)
    assert all(r * c + c + 1 <= 16 for r, c in bench_isa.neighbours(4, 3, 16))
    assert (4, 4) in bench_isa.neighbours(6, 4, 32)


def test_report_keeps_one_part_per_cpu_and_shows_the_isa_rows(tmp_path):
    """Results of two CPUs: each CPU's newest results under a heading naming it and its instruction sets, the CPU
    measured last first; the isa rows with every candidate and the chosen plan."""
    from benchmarks import report

    old, new = tmp_path / "2026-01-02", tmp_path / "2026-01-05"
    old.mkdir()
    new.mkdir()
    fake_results(old)  # "Test CPU 9000", AVX2 + FMA
    machine = dict(cpu="Other CPU 1", cpu_flags=["avx2", "fma", "avx512f", "avx512_bf16"], time="2026-01-05 01:00:00")
    common.write_json(new / "isa.json", dict(machine=machine, threads=2, repeats=3, targets=[
        dict(target="haswell", compiled_for="haswell, AVX2+FMA: 16 x 32-byte vector registers", tile="4x3",
             sgemm_gflops=150.5)], rows=[dict(target="haswell", row="lstm H512 B64", chosen="tiles", measured=True,
                                              candidates=dict(loops=1111.0, blas=22222.0, tiles=23456.0),
                                              chosen_vs_best=1.0, slow=False,
                                              peak_fraction=dict(loops=0.04, blas=0.8, tiles=0.8765))],
        generation=[dict(target="haswell", streams=32, chars_per_sec=98765.0)],
        tiles=[dict(target="haswell", tile="4x3", rule="4x3", gflops=77.7)]))
    results = report.newest_of_each_kind(str(tmp_path))
    assert [report.cpu_label(d) for _, _, d in results] == ["Other CPU 1 (AVX-512, AVX512_BF16)"] + [
        "Test CPU 9000 (AVX2+FMA)"] * 2
    page = report.render_page(results, str(tmp_path), str(tmp_path), [], "--no-charts")
    other, test = page.index("# Other CPU 1 (AVX-512, AVX512_BF16)"), page.index("# Test CPU 9000 (AVX2+FMA)")
    assert other < test and page.index("Under each instruction set") < test
    assert "| haswell | lstm H512 B64 | tiles | 1,111 | 22,222 | 23,456 | 1.00 | 87.6% | yes |" in page
    assert "| haswell | 32 | 98,765 |" in page and "| haswell | 4x3 (rule) | 77.7 |" in page
    assert page.index("123,457") > test  # the throughput rows under their own CPU


def test_a_list_option_takes_zero_where_its_help_says_so():
    """--serve-clients 0 means no such rows (its help says so); elsewhere a count must be positive."""
    import click

    from benchmarks import options

    assert options.CommaList(int, minimum=0).convert("0,4", None, None) == [0, 4]
    with pytest.raises(click.BadParameter, match="not a positive number"):
        options.CommaList(int).convert("0", None, None)
    from benchmarks import sampling

    param = next(p for p in sampling.main.params if p.name == "serve_clients")
    assert param.type.convert("0", param, None) == [0] and "0: no such rows" in param.help
