"""Time to quality over a grid, in resumable pieces: configurations x corpora x budgets, each a `fastrnn train
--max-time BUDGET` subprocess pinned to one core, results appended one JSON row per finished run.

    python -m benchmarks.ttq_grid run [--grid ts-300 | --configs SPEC,SPEC,...] [--corpus FILE ...]
                                      [--budget 120 ...] [--cores 0,1] [--results FILE] [--work DIR]
    python -m benchmarks.ttq_grid report [--results FILE] [--output docs/ttq-grid.md]

Runs from a checkout (benchmarks/ is not part of the installed package); `COMMAND --help` lists every option.

A configuration is `auto` (`fastrnn train --max-time` alone: the model chosen for the budget, fastrnn.choose) or
CELL:LAYERS:HIDDEN followed by any of `:b64` (batch), `:t100` (sequence length), `:lr3e-3`, `:cosine` (to --lr-floor
0.1 at the end of the budget) or `:step` (constant unless `:decay0.8`), `:w100` (warmup steps), `:d0.2` (dropout);
the rest are fastrnn's defaults (batch 32, seq_len 50, adam lr 2e-3, constant rate, no dropout). Every run of the
grid gets the same budget, seed and validation tokens (the first --eval-tokens of the val split, every
--eval-every steps); `--threads` threads (default 1) under `taskset -c CORES`, a run on each --threads cores of
--cores, side by side. Before its budgeted run, each fixed configuration trains 2 steps untimed (numba's cache and the kernel plan,
as benchmarks.time_to_quality); `auto` does not: its measurement is part of what it is judged on (its speeds are
cached per machine, so only its first run on a machine pays for them).

The results file (JSON lines) gets one row per finished run, written when it finishes, with the run's key (corpus,
budget, configuration, threads); a grid started again skips the keys it holds, so an interrupted grid (Ctrl-C,
a reboot) continues where it stopped; a run stopped half-way is run again from its start. The prepared corpora
and run directories live under --work (default: runs/ttq-grid, not committed), kept between pieces.

`report` writes a Markdown page from the results: per corpus and budget one table, best val loss first, naming the
CPU, the threads and the dates of the runs, and the automatic choice's place and its distance to the best.
"""

import datetime
import json
import math
import os
import re
import subprocess
import sys
import time

import click

from benchmarks import common, options
from benchmarks.time_to_quality import result_row
from fastrnn import cells

RESULTS = os.path.join(common.ROOT, "docs", "benchmarks", "ttq-grid.jsonl")
PAGE = os.path.join(common.ROOT, "docs", "ttq-grid.md")
WORK = os.path.join(common.ROOT, "runs", "ttq-grid")  # runs/ is not committed (.gitignore)
# the grids of docs/ttq-grid.md (issue #28): cells x sizes x schedules x batch sizes x dropout, and the automatic
# choice. ts-120 and ts-300: tiny Shakespeare, one core a run, two side by side (`--budget 120`, `--budget 300`);
# novels-600: the novels, the six best models of ts-300 (without dropout: the novels train under an epoch in 10
# minutes), on two cores (`--corpus gutenberg-novels.txt --threads 2 --budget 600`); linux-300: the 1.2 GB of Linux
# source (../shared/data/get-large-corpus.sh, then `fastrnn prepare`), where no budget here reaches an epoch: the
# compute-bound end, one core a run as ts-300 (`--corpus linux.h5 --budget 300`)
GRIDS = {
    "ts-120": ("auto", "rnn:1:128", "rnn:1:256:cosine", "rnn:1:256:cosine:adamw", "rnn:1:512:cosine",
               "lstm:1:256:cosine", "lstm:1:256:cosine:adamw", "gru:1:256:cosine", "lnlstm:1:256:cosine",
               "lnlstm:1:256:cosine:d0.2", "lnlstm:2:256:cosine", "lnlstm:1:512:cosine", "lnlstm:1:512:cosine:d0.2"),
    "ts-300": ("auto", "rnn:1:128", "rnn:1:256:cosine", "rnn:1:512:b64:cosine", "lstm:1:256:cosine",
               "gru:1:256:cosine", "lnlstm:1:256:cosine", "lnlstm:1:256:cosine:d0.2", "lnlstm:2:256:cosine",
               "lnlstm:2:256:cosine:d0.2", "lnlstm:1:512:cosine", "lnlstm:1:512:cosine:d0.2",
               "lnlstm:1:512:b64:cosine:d0.2", "lnlstm:1:512:cosine:lr3e-3", "lnlstm:1:512:cosine:t100",
               "lnlstm:2:512:cosine"),
    "novels-600": ("auto", "lnlstm:1:512:cosine", "lnlstm:2:256:cosine", "lnlstm:2:512:cosine", "lnlstm:1:256:cosine",
                   "gru:1:256:cosine", "lstm:1:256:cosine"),
    "linux-300": ("auto", "rnn:1:256:cosine", "rnn:1:512:b64:cosine", "gru:1:256:cosine", "lnlstm:1:256:cosine",
                  "lnlstm:2:256:cosine", "lnlstm:1:512:cosine", "lnlstm:2:512:cosine"),
}
FIELDS = (("b", "batch_size", int), ("t", "seq_len", int), ("lr", "lr", float), ("w", "warmup_steps", int),
          ("d", "dropout", float), ("decay", "lr_decay", float))
LR_FLOOR = 0.1  # of a fixed configuration's cosine schedule (the automatic choice's own: fastrnn.choose)
POLL_SECONDS = 0.5
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad")  # a configuration's `:adamw`: --optimizer adamw


def parse_config(spec):
    """'lstm:2:256:b64:cosine' -> {'spec', 'model', 'num_layers', 'hidden_size', 'batch_size', 'lr_schedule'}
    (the options it sets), 'auto' -> {'spec': 'auto'}; click.BadParameter for anything else."""
    spec = spec.strip()
    if spec == "auto":
        return {"spec": spec}
    parts = spec.split(":")
    bad = click.BadParameter(f"{spec!r} is not auto or CELL:LAYERS:HIDDEN[:b64][:t100][:lr3e-3][:cosine|:step]"
                             f"[:decay0.8][:w100][:d0.2][:adamw]", param_hint="--configs")
    if len(parts) < 3 or parts[0] not in cells.names() or not parts[1].isdigit() or not parts[2].isdigit():
        raise bad
    out = {"spec": spec, "model": parts[0], "num_layers": int(parts[1]), "hidden_size": int(parts[2])}
    for part in parts[3:]:
        if part in ("cosine", "step"):
            out["lr_schedule"] = part
            continue
        if part in OPTIMIZERS:
            out["optimizer"] = part
            continue
        for prefix, name, kind in sorted(FIELDS, key=lambda f: -len(f[0])):  # "decay" before "d"
            if part.startswith(prefix):
                try:
                    out[name] = kind(part[len(prefix):])
                    break
                except ValueError:
                    raise bad from None
        else:
            raise bad
    if out.get("lr_schedule") == "cosine":
        out["lr_floor"] = LR_FLOOR
    return out


def job_key(corpus, budget, spec, threads):
    return f"{os.path.basename(corpus)}|{budget:g}|{spec}|{threads}t"


def read_results(path):
    """The rows of a results file (a line cut by an interrupted write is skipped)."""
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and "key" in row:
                    rows.append(row)
    return rows


def append_row(path, row):
    """One row, one line, flushed and fsynced: a kill loses at most the run in progress."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(common._jsonable(row)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def prepared(corpus, work, val_frac, test_frac):
    """The corpus prepared once under `work` (kept between pieces of the grid); a corpus `fastrnn prepare` made
    (an HDF5 file) as it is, with its own splits (the Linux source: one prepare of 1.2 GB serves every piece)."""
    from fastrnn.corpus import prepare
    from fastrnn.corpus.fromtext import is_text_input

    if not is_text_input(corpus):
        return os.path.abspath(corpus)
    name = re.sub(r"[^\w.-]", "_", os.path.basename(corpus))
    out = os.path.join(work, f"{name}-val{val_frac:g}-test{test_frac:g}.h5")
    if not os.path.exists(out):
        prepare([corpus], out, val_frac=val_frac, test_frac=test_frac)
    return out


def train_args(corpus_h5, run_dir, config, budget, settings, limit=None):
    """`fastrnn train` arguments of one run of `config` (parse_config); `limit`: other limit arguments instead of
    --max-time BUDGET (the warm-up's --max-steps 2)."""
    args = ["train", corpus_h5, "-o", run_dir, "--force", "--threads", settings["threads"], "--seed", settings["seed"],
            "--eval-every", settings["eval_every"], "--eval-tokens", settings["eval_tokens"], "--log-every", 50,
            "--quiet"]
    args += limit or ["--max-time", budget]
    for name, value in config.items():
        if name != "spec":
            args += ["--" + name.replace("_", "-"), value]
    return common.fastrnn_cmd(*args)


class Slot:
    """The cores one run is pinned to ("0", or "0,1" for a run of 2 threads), its process, job and start."""

    def __init__(self, cores):
        self.core = ",".join(map(str, cores))
        self.proc, self.job, self.started, self.phase = None, None, None, None


def slots_of(cores, threads):
    """One Slot per `threads` cores of `cores` (a run of 2 threads on cores 0,1 and 2,3: two slots)."""
    groups = [cores[i:i + threads] for i in range(0, len(cores) - threads + 1, threads)]
    if not groups:
        raise click.BadParameter(f"{len(cores)} core(s) for runs of {threads} threads", param_hint="--cores")
    return [Slot(group) for group in groups]


def run_grid(jobs, results, work, cores, settings, say=print, pin=True):
    """Run `jobs` [(corpus text, budget, config)] not yet in `results`, one per `threads` cores of `cores` at a
    time (slots_of); append a row per finished run. Returns the rows written."""
    done = {row["key"] for row in read_results(results)}
    todo = [(c, b, cfg) for c, b, cfg in jobs if job_key(c, b, cfg["spec"], settings["threads"]) not in done]
    slots = slots_of(cores, settings["threads"])
    say(f"{len(jobs) - len(todo)} of {len(jobs)} runs already in {results}; {len(todo)} to go, pinned to "
        f"{' and '.join(s.core for s in slots)}")
    corpora = {c: prepared(c, work, settings["val_frac"], settings["test_frac"]) for c in {c for c, _, _ in todo}}
    written, machine = [], common.machine_info()
    try:
        while todo or any(s.proc for s in slots):
            for slot in slots:
                if slot.proc is not None and slot.proc.poll() is not None:
                    row = _finished(slot, corpora, settings, machine, say)
                    if row is not None:
                        append_row(results, row)
                        written.append(row)
                if slot.proc is None and todo:
                    _start(slot, todo.pop(0), corpora, work, settings, say, pin)
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        for slot in slots:
            if slot.proc is not None:
                slot.proc.terminate()
        say(f"stopped: {len(written)} row(s) written this time; run the same command to continue")
        raise
    return written


def _run_dir(work, corpus, budget, config, threads):
    return os.path.join(work, "runs", re.sub(r"[^\w.-]", "_", job_key(corpus, budget, config["spec"], threads)))


def _start(slot, job, corpora, work, settings, say, pin):
    corpus, budget, config = job
    run_dir = _run_dir(work, corpus, budget, config, settings["threads"])
    slot.job, slot.started = job, time.perf_counter()
    warm = config["spec"] != "auto" and slot.phase is None
    slot.phase = "warm-up" if warm else "run"
    limit = ["--max-steps", 2] if warm else None
    cmd = train_args(corpora[corpus], run_dir, config, budget, settings, limit)
    if pin:
        cmd = ["taskset", "-c", str(slot.core)] + cmd
    if not warm:
        say(f"core {slot.core}: {os.path.basename(corpus)} {budget:g} s {config['spec']} ...")
    slot.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finished(slot, corpora, settings, machine, say):
    """The row of the job `slot` finished (None after its warm-up, which starts the budgeted run, or a failure)."""
    corpus, budget, config = slot.job
    stderr = slot.proc.stderr.read()
    slot.proc.stderr.close()
    code, wall = slot.proc.returncode, time.perf_counter() - slot.started
    slot.proc = None
    if code != 0:
        last = stderr.strip().splitlines()[-1:] or [f"exit status {code}"]
        say(f"core {slot.core}: {config['spec']} {slot.phase} failed: {last[0]}")
        slot.phase = None
        return None
    if slot.phase == "warm-up":
        _start(slot, slot.job, corpora, settings["work"], settings, say, settings["pin"])
        return None
    slot.phase = None
    return run_row(corpus, budget, config, settings, machine, wall, slot.core)


def run_row(corpus, budget, config, settings, machine, wall, core):
    """The row of a finished run: its key and configuration as run (the chosen one for auto), the result
    (time_to_quality.result_row), the CPU, and when."""
    from fastrnn import checkpoint as ckpt_io

    run_dir = _run_dir(settings["work"], corpus, budget, config, settings["threads"])
    ckpt = ckpt_io.load(run_dir)
    c = ckpt.config
    fields = dict(key=job_key(corpus, budget, config["spec"], settings["threads"]), corpus=os.path.basename(corpus),
                  budget_s=budget, config=config["spec"], model=c["model"], layers=c["num_layers"],
                  hidden=c["hidden_size"], batch=c["batch_size"], seq_len=c["seq_len"], lr=c["lr"], optimizer=c["optimizer"],
                  schedule=c["lr_schedule"], dropout=c["dropout"], params=int(ckpt.params.size),
                  threads=settings["threads"], core=core, cpu=machine.get("cpu"),
                  cpu_flags=machine.get("cpu_flags"), date=datetime.date.today().isoformat())
    choice = (c.get("extra") or {}).get("choice")
    if choice:
        fields["choice"] = choice.get("line")
    row = result_row(ckpt.state, c["batch_size"], c["seq_len"], fields, wall)
    row["epochs"] = row["chars"] / ckpt.state.train_tokens if ckpt.state.train_tokens else None
    row["val_curve"] = val_curve(run_dir)
    row["wall_over_budget"] = wall / budget
    return row


def val_curve(run_dir):
    """[[step, val loss], ...] of the run's evaluations (log.jsonl), for the comparison at equal steps."""
    curve = []
    try:
        with open(os.path.join(run_dir, "log.jsonl")) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if isinstance(r, dict) and isinstance(r.get("val_loss"), (int, float)) and "step" in r:
                    curve.append([int(r["step"]), float(r["val_loss"])])
    except OSError:
        pass
    return curve


def at_step(row, step):
    """The row's val loss at evaluation step `step` (None if it has none there)."""
    return next((v for s, v in row.get("val_curve") or () if s == step), None)


def common_step(rows):
    """The last evaluation step every row reached (None if they share none): where they compare per step."""
    steps = [{s for s, _ in r.get("val_curve") or ()} for r in rows]
    shared = set.intersection(*steps) if steps else set()
    return max(shared) if shared else None


# ---------------------------------------------------------------------------------------------------------------
# the report

COLUMNS = [("configuration", "config", "s"), ("model", lambda r: f"{r['model']} {r['layers']}x{r['hidden']}", "s"),
           ("batch", "batch", "d"), ("optimizer", "optimizer", "s"), ("lr", "lr", "g"), ("schedule", "schedule", "s"), ("dropout", "dropout", "g"),
           ("params", "params", ",d"), ("steps", "steps", ",d"), ("epochs", "epochs", ".2f"),
           ("chars/s", "chars_per_sec", ",.0f"), ("best val nats/char", "val_loss", ".4f"),
           ("wall / budget", "wall_over_budget", ".3f")]


def _cell(row, key, spec):
    value = key(row) if callable(key) else row.get(key)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return value if spec == "s" else format(value, spec)


def render(rows):
    """The Markdown page of the results: per corpus and budget a table, best first."""
    from benchmarks.report import cpu_label

    out = ["# Time to quality over a grid", "",
           "Generated by `python -m benchmarks.ttq_grid report` from the rows `python -m benchmarks.ttq_grid run` "
           "appended to the results file; every run of a table had the same wall-clock budget (`--max-time`, its "
           "start-up, evaluations and checkpoints included), seed and validation tokens. `auto` is `fastrnn train "
           "--max-time` alone: the model fastrnn.choose picked for the budget; its line follows its table.", "",
           "The runs (each piece resumable): `python -m benchmarks.ttq_grid run --grid ts-120 --budget 120`, "
           "`--grid ts-300 --budget 300`, `--grid novels-600 --corpus ../shared/data/gutenberg-novels.txt --threads 2 "
           "--budget 600`, `--grid linux-300 --corpus linux.h5 --budget 300` (the Linux source of "
           "../shared/data/get-large-corpus.sh, prepared by `fastrnn prepare` with its default 5% val, 5% test), "
           "and the automatic choice alone at longer budgets, `--configs auto --budget 1200` (with the novels: "
           "`--threads 2 --budget 1800`).", ""]
    groups = {}
    for row in rows:
        groups.setdefault((row["corpus"], row["budget_s"], row.get("threads"), cpu_label(
            {"machine": {"cpu": row.get("cpu"), "cpu_flags": row.get("cpu_flags")}})), []).append(row)
    for (corpus, budget, threads, cpu), group in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1])):
        dates = sorted({r.get("date", "?") for r in group})
        when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
        out += [f"## {corpus}, {budget:g} s, {threads} thread{'s' if threads != 1 else ''} a run", "",
                f"{cpu}, {when}; {len(group)} runs.", ""]
        ranked = sorted(group, key=lambda r: r["val_loss"] if _finite(r) else math.inf)
        step = common_step(ranked)
        columns = COLUMNS + ([(f"val at step {step:,}", lambda r, step=step: at_step(r, step), ".4f")] if step else [])
        out.append("| " + " | ".join(h for h, _, _ in columns) + " |")
        out.append("| " + " | ".join("---" if s == "s" else "---:" for _, _, s in columns) + " |")
        for r in ranked:
            out.append("| " + " | ".join(str(_cell(r, k, s)) for _, k, s in columns) + " |")
        out.append("")
        if step:
            out += [f"Per step: `val at step {step:,}` is each run's evaluation at the last step all of them reached "
                    f"(the same val tokens), the comparison at equal updates; `best val` is per second (the budget).",
                    ""]
        auto = next((r for r in ranked if r["config"] == "auto"), None)
        best = ranked[0]
        if auto is not None and _finite(auto) and _finite(best):
            out += [f"auto: place {ranked.index(auto) + 1} of {len(ranked)}, {auto['val_loss'] - best['val_loss']:+.4f} "
                    f"nats/char from the best ({best['config']}); {auto.get('choice') or ''}", ""]
    out += lessons(rows)
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------------------------
# what the grid taught: tables of the runs' own numbers

SETTINGS = (("model", "cell"), ("layers", "layers"), ("hidden", "hidden size"), ("batch", "batch"),
            ("seq_len", "sequence length"), ("lr", "rate"), ("optimizer", "optimizer"), ("schedule", "schedule"),
            ("dropout", "dropout"))  # a fixed configuration's settings, as its row records them


def is_auto(row):
    """A row of the automatic choice: `auto`, or `auto@COMMIT` (an earlier rule's, kept on the page)."""
    return row["config"] == "auto" or row["config"].startswith("auto@")


def _finite(row):
    return math.isfinite(row.get("val_loss") or math.nan)


def one_change(rows):
    """{setting: [(a, b), ...]}: pairs of fixed configurations of the same corpus, budget and threads whose
    settings differ in that one alone (a the one with the smaller value, or the first in the order of the rows)."""
    fixed = [r for r in rows if not is_auto(r) and _finite(r)]
    out = {}
    for i, a in enumerate(fixed):
        for b in fixed[i + 1:]:
            if (a["corpus"], a["budget_s"], a.get("threads")) != (b["corpus"], b["budget_s"], b.get("threads")):
                continue
            differ = [name for name, _ in SETTINGS if a.get(name) != b.get(name)]
            if len(differ) == 1:
                name = differ[0]
                if isinstance(a[name], (int, float)) and b[name] < a[name]:
                    a, b = b, a
                out.setdefault(name, []).append((a, b))
    return out


def _model(row):
    return f"{row['model']} {row['layers']}x{row['hidden']}"


def _params_per_char(row):
    return row["params"] * row["epochs"] / row["chars"] if row.get("chars") and row.get("epochs") else math.nan


def lessons(rows):
    """The lines of the page's section on what the grid taught: the best of each corpus and budget, then each
    setting changed alone, side by side."""
    out = ["## What the grid taught", "",
           "Generated from the same rows. *chars/param*: characters trained per parameter (what the budget allowed); "
           "*params/char*: parameters per training character (the data's limit); both are what fastrnn.choose's rule "
           "weighs.", "", "### The best of each budget", "",
           "| corpus | budget s | threads | best | params | epochs | chars/param | params/char | best val |",
           "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    best = {}
    for r in rows:
        key = (r["corpus"], r["budget_s"], r.get("threads"))
        if _finite(r) and (key not in best or r["val_loss"] < best[key]["val_loss"]):
            best[key] = r
    for (corpus, budget, threads), r in sorted(best.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        out.append(f"| {corpus} | {budget:g} | {threads} | {r['config']} ({_model(r)}, dropout {r['dropout']:g}) | "
                   f"{r['params']:,} | {r['epochs']:.2f} | {r['chars'] / r['params']:.1f} | "
                   f"{_params_per_char(r):.3f} | {r['val_loss']:.4f} |")
    changed = one_change(rows)
    for name, title in SETTINGS:
        pairs = changed.get(name)
        if not pairs:
            continue
        out += ["", f"### The {title} changed alone", "",
                f"| corpus | budget s | configuration | {title} | other | best val | other's | change | epochs | "
                f"other's epochs |", "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for a, b in sorted(pairs, key=lambda p: (p[0]["corpus"], p[0]["config"], p[0]["budget_s"])):
            out.append(f"| {a['corpus']} | {a['budget_s']:g} | {a['config']} | {a[name]} | {b[name]} | "
                       f"{a['val_loss']:.4f} | {b['val_loss']:.4f} | {b['val_loss'] - a['val_loss']:+.4f} | "
                       f"{a['epochs']:.2f} | {b['epochs']:.2f} |")
    return out


# ---------------------------------------------------------------------------------------------------------------
# the commands


@click.group(context_settings=dict(help_option_names=["-h", "--help"], show_default=True, max_content_width=110),
             help=__doc__.split("\n\n")[0])
def main():
    pass


@main.command("run", context_settings=dict(show_default=True))
@click.option("--grid", type=click.Choice(sorted(GRIDS)), default="ts-300", help="A named grid of configurations.")
@click.option("--configs", default=None, help="Configurations, comma-separated (instead of --grid): auto or "
              "CELL:LAYERS:HIDDEN[:b64][:t100][:lr3e-3][:cosine|:step][:decay0.8][:w100][:d0.2].")
@click.option("--corpus", "corpora", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Text corpus (repeat for several; default: the bundled tiny Shakespeare).")
@click.option("--budget", "budgets", multiple=True, type=click.FloatRange(min=1),
              help="Seconds of --max-time per run (repeat for several; default: 120 and 300).")
@click.option("--cores", type=options.CommaList(int, minimum=0), default="0,1",
              help="Cores to pin runs to (taskset -c): side by side, a run on each --threads of them.")
@click.option("--no-pin", is_flag=True, help="Do not pin runs to cores (where taskset is missing).")
@click.option("--threads", type=click.IntRange(min=1), default=1, help="--threads of every run.")
@click.option("--val-frac", type=click.FloatRange(0, 1, max_open=True), default=0.1,
              help="Share of each corpus for validation (its end).")
@click.option("--test-frac", type=click.FloatRange(0, 1, max_open=True), default=0.0, help="Share for test.")
@click.option("--eval-every", type=click.IntRange(min=0), default=500, help="--eval-every of every run.")
@click.option("--eval-tokens", type=click.IntRange(min=1), default=100_000,
              help="--eval-tokens of every run (the same val tokens for all).")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="--seed of every run.")
@click.option("--results", type=click.Path(dir_okay=False), default=RESULTS, help="The results file (JSON lines).")
@click.option("--work", type=click.Path(file_okay=False), default=None,
              help=f"Prepared corpora and run directories, kept between pieces (default: {WORK} for the default "
                   f"results file, else RESULTS.work beside it).")
@options.catch_user_errors
def run_command(grid, configs, corpora, budgets, cores, no_pin, threads, val_frac, test_frac, eval_every, eval_tokens,
                seed, results, work):
    """Run the grid's runs not yet in the results file."""
    specs = [s for s in configs.split(",") if s.strip()] if configs else list(GRIDS[grid])
    parsed = [parse_config(s) for s in specs]
    corpora = list(corpora) or [common.SHAKESPEARE]
    budgets = list(budgets) or [120.0, 300.0]
    slots_of(list(cores), threads)  # enough cores for a run of --threads (else a usage error, before any work)
    if not no_pin and subprocess.run(["which", "taskset"], capture_output=True).returncode != 0:
        raise click.ClickException("taskset is missing (util-linux): install it, or give --no-pin")
    work = os.path.abspath(work or (WORK if os.path.abspath(results) == RESULTS else results + ".work"))
    os.makedirs(work, exist_ok=True)
    settings = dict(threads=threads, val_frac=val_frac, test_frac=test_frac, eval_every=eval_every,
                    eval_tokens=eval_tokens, seed=seed, work=work, pin=not no_pin)
    jobs = [(c, float(b), cfg) for c in corpora for b in budgets for cfg in parsed]
    try:
        rows = run_grid(jobs, results, work, list(cores), settings, pin=not no_pin)
    except KeyboardInterrupt:
        sys.exit(130)
    print(f"{len(rows)} row(s) appended to {results}")


@main.command("report", context_settings=dict(show_default=True))
@click.option("--results", type=click.Path(exists=True, dir_okay=False), default=RESULTS,
              help="The results file (JSON lines).")
@click.option("--output", type=click.Path(dir_okay=False), default=PAGE, help="The Markdown page to write.")
def report_command(results, output):
    """Write the Markdown page of the results."""
    rows = read_results(results)
    if not rows:
        raise click.ClickException(f"{results} holds no results")
    with open(output, "w") as f:
        f.write(render(rows))
    print(f"wrote {output} ({len(rows)} runs)")


if __name__ == "__main__":
    main()
