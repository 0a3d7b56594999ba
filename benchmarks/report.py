"""Write docs/benchmarks.md, and the headline block of README.md, from benchmark results.

    python -m benchmarks.report [--results docs/benchmarks/2026-12-02] [--output docs/benchmarks.md]
                                [--readme README.md] [--charts/--no-charts]

Without --results, each kind of result comes from the newest docs/benchmarks/YYYY-MM-DD/ folder that holds one
(benchmarks are rerun at different times; a section names the folder its files come from); with --results, from
that folder alone.

Runs from a checkout (benchmarks/ is not part of the installed package). `make bench-results` runs the quick set of
every benchmark into docs/benchmarks/<today>/ and then this report.

The results folder holds the JSON files the benchmarks write with `--json FILE`; a file's kind is the benchmark
its name starts with (throughput*.json, time_to_quality*.json, sampling*.json, prepare*.json, train_memory*.json,
profile_speed*.json, kernel_scratch*.json, pytorch*.json, startup*.json, soak*.json); other files are ignored. Every number on the page comes from those files: the machine
(CPU model and flags, cores, the sgemm and dgemm rates the throughput run measured), one table per file, and a
chart of the throughput rows (PNG next to the page; with matplotlib only, else the page says the charts were
skipped). In README.md the lines between `<!-- benchmarks:begin -->` and `<!-- benchmarks:end -->` are replaced
by one table of the throughput targets and a link to the page; without those lines README.md is left alone. The
newest soak result also gets a page of its own next to the output, soak.md with its chart (benchmarks.soak_page).
"""

import glob
import os
import re

import click

from benchmarks import common, options, soak_page, startup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_ROOT = os.path.join(ROOT, "docs", "benchmarks")
BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"
KINDS = ("throughput", "isa", "time_to_quality", "sampling", "prepare", "train_memory", "profile_speed",
         "kernel_scratch", "pytorch", "bf16_quality", "distributed", "startup", "soak")
DATED = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# ---------------------------------------------------------------------------------------------------------------
# reading


def newest_results(root=RESULTS_ROOT):
    """The newest <root>/<YYYY-MM-DD>/ folder, or None."""
    dated = sorted(d for d in os.listdir(root) if DATED.match(d) and os.path.isdir(os.path.join(root, d))) \
        if os.path.isdir(root) else []
    return os.path.join(root, dated[-1]) if dated else None


def newest_of_each_kind(root=RESULTS_ROOT):
    """[(kind, 'YYYY-MM-DD/file name', data)]: for each CPU measured (cpu_label), every kind's files from the
    newest dated folder that has that kind for that CPU; the CPU measured last first."""
    dated = sorted((d for d in os.listdir(root) if DATED.match(d) and os.path.isdir(os.path.join(root, d))),
                   reverse=True) if os.path.isdir(root) else []
    out, seen, order = [], set(), []
    for day in dated:
        loaded = load_results(os.path.join(root, day))
        machine = next((d["machine"] for _, _, d in loaded if isinstance(d.get("machine"), dict)), None)
        for _, _, d in loaded:  # a file that does not describe its machine was measured on its folder's
            if machine is not None and not isinstance(d.get("machine"), dict):
                d["machine"] = machine
        found = [(k, f"{day}/{name}", d) for k, name, d in loaded if (cpu_label(d), k) not in seen]
        seen.update((cpu_label(d), k) for k, _, d in found)
        order += [cpu_label(d) for _, _, d in found if cpu_label(d) not in order]
        out += found
    return sorted(out, key=lambda r: (order.index(cpu_label(r[2])), KINDS.index(r[0]), r[1]))


def cpu_label(data):
    """'AMD EPYC (AVX-512, AVX512_BF16)': the CPU a result was measured on, by model and vector instruction sets
    (the flags benchmarks.common.cpu_flags records)."""
    machine = data.get("machine") if isinstance(data.get("machine"), dict) else {}
    flags = set(machine.get("cpu_flags") or [])
    isa = ("AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "AVX" if "avx" in flags else
           "NEON" if "asimd" in flags else "SSE" if flags else "unknown instruction set")
    if "fma" in flags and "avx512f" not in flags:
        isa += "+FMA"
    extra = [name for flag, name in (("avx512_bf16", "AVX512_BF16"), ("amx_tile", "AMX")) if flag in flags]
    return f"{machine.get('cpu', 'unknown CPU')} ({', '.join([isa] + extra)})"


def kind_of(filename):
    """The benchmark that wrote `filename` (from the start of its name), or None."""
    stem = os.path.splitext(os.path.basename(filename))[0]
    for kind in sorted(KINDS, key=len, reverse=True):
        if stem == kind or stem.startswith(kind + "_") or stem.startswith(kind + "-"):
            return kind
    return None


def load_results(folder):
    """[(kind, file name, data)] of the folder's JSON files, sorted by kind (KINDS order) and name."""
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        kind = kind_of(path)
        if kind is None:
            continue
        out.append((kind, os.path.basename(path), common.read_results(path, f"not a {kind} result")))
    return sorted(out, key=lambda r: (KINDS.index(r[0]), r[1]))


# ---------------------------------------------------------------------------------------------------------------
# markdown


def fmt(value, spec):
    if value is None:
        return "-"
    if callable(spec):
        return spec(value)
    return format(value, spec)


def percent(v):
    return f"{100 * v:.1f}%"


def yes_no(v):
    return "yes" if v else "NO"


def pass_fail(v):
    return {True: "pass", False: "FAIL", None: "not run"}[v]


def md_table(rows, columns):
    """A markdown table. columns: [(header, key or callable(row), format spec or callable(value))]."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |",
             "| " + " | ".join("---" if spec == "s" else "---:" for _, _, spec in columns) + " |"]
    for row in rows:
        cells = [fmt(key(row) if callable(key) else row.get(key), spec) for _, key, spec in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_section(results):
    """The machine's description from the first result that has one; the GEMM rates from the throughput runs."""
    machine = next((d["machine"] for _, _, d in results if isinstance(d.get("machine"), dict)), None)
    lines = ["## Machine", ""]
    if machine is None:
        return lines + ["No result file describes the machine.", ""]
    blas = ", ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')})"
                     for b in machine.get("blas") or []) or "-"
    lines += [f"- CPU: {machine.get('cpu', '-')}; flags: {', '.join(machine.get('cpu_flags') or []) or '-'}",
              f"- cores: {machine.get('logical_cores', '-')} logical, {machine.get('physical_cores', '-')} physical",
              f"- Python {machine.get('python', '-')}, NumPy {machine.get('numpy', '-')}, numba "
              f"{machine.get('numba', '-')}, SciPy {machine.get('scipy', '-')}, llvmlite "
              f"{machine.get('llvmlite', '-')}; BLAS: {blas}",
              f"- measured at {machine.get('time', '-')}"]
    for _, name, d in results:
        for dt, label in (("float32", "sgemm"), ("float64", "dgemm")):
            by = (d.get("peaks") or {}).get(dt)
            if by:
                lines.append(f"- {label} ({name}): " + ", ".join(
                    f"{v:.1f} GFLOP/s at {k} thread{'s' if k != '1' else ''}" for k, v in by.items()))
        if d.get("sgemm_peak") is not None:
            threads = d["rows"][0].get("threads") if d["rows"] else None
            lines.append(f"- sgemm ({name}): {d['sgemm_peak']:.1f} GFLOP/s"
                         + (f" at {threads} thread{'s' if threads != 1 else ''}" if threads else ""))
    return lines + [""]


THROUGHPUT = [("backend", "backend", "s"), ("model", lambda r: r.get("model", "rnn"), "s"),
              ("L", lambda r: r.get("layers", 1), "d"), ("H", "hidden", "d"), ("N", "batch", "d"),
              ("T", "seq_len", "d"), ("dtype", "dtype", "s"), ("threads", "threads", "d"),
              ("chars/s", "chars_per_sec", ",.0f"), ("ms/step", "step_ms", ".2f"), ("GFLOP/s", "gflops", ".2f"),
              ("% of peak", "peak_fraction", percent), ("x numpy", "vs_numpy", ".2f"), ("x seed", "vs_seed", ".1f"),
              ("compile s", "compile_seconds", ".2f"), ("checked", "checked", yes_no)]
SAMPLING = [("backend", "backend", "s"), ("model", lambda r: r.get("model", "rnn"), "s"),
            ("L", lambda r: r.get("layers", 1), "d"), ("H", "hidden", "d"), ("dtype", "dtype", "s"),
            ("threads", "threads", "d"), ("K", "streams", "d"), ("chars/s", "chars_per_sec", ",.0f"),
            ("x numpy-loop", "vs_numpy_loop", ".2f"), ("x one stream", "vs_one_stream", ".2f"),
            ("x read-split", "vs_read_split", ".2f"), ("bytes/char", "bytes_per_char", ",d"),
            ("first call s", "first_call_seconds", ".2f"), ("checked", "checked", yes_no)]
PREPARE = [("file", "file", "s"), ("contender", "contender", "s"), ("input MB", "input_mb", ".1f"),
           ("prefix only", "prefix_only", lambda v: "yes" if v else "no"), ("seconds", "seconds", ".2f"),
           ("MB/s", "mb_per_sec", ".1f"), ("peak RSS MB", "peak_rss_mb", ".1f"), ("tokens", "tokens", ",d"),
           ("vocab", "vocab_size", "d"), ("repeats", "repeats", "d")]
TRAIN_MEMORY = [("corpus", "corpus", "s"), ("tokens", "corpus_tokens", ",d"), ("file MB", "corpus_file_mb", ".1f"),
                ("vocab", "vocab_size", "d"), ("steps", "steps", "d"), ("peak RSS MB", "peak_rss_mb", ".1f"),
                ("samples", "samples", "d")]
PROFILE_SPEED = [("phase", "phase", "s"), ("median ms", "median_ms", ".3f"), ("mean ms", "mean_ms", ".3f"),
                 ("% of step", "percent", ".1f"), ("chars/s", "chars_per_sec", ",.0f")]
KERNEL_SCRATCH = [("N", "batch", "d"), ("H", "hidden", "d"), ("threads", "threads", "d"),
                  ("reference chars/s", "reference_chars_per_sec", ",.0f"),
                  ("numba chars/s", "numba_chars_per_sec", ",.0f"), ("numba GFLOP/s", "numba_gflops", ".1f"),
                  ("% of sgemm", "peak_fraction", percent), ("speedup", "speedup", ".2f")]


def target_model(t):
    """A throughput target's (model, layers); files written before targets said so name them: "lstm x2 H512 ..."."""
    if "model" in t:
        return t["model"], t.get("layers", 1)
    words = t["name"].split()
    if words[0] in ("rnn", "lstm", "gru"):
        layers = int(words[1][1:]) if words[1].startswith("x") and words[1][1:].isdigit() else 1
        return words[0], layers
    return "rnn", 1


def target_rows(data):
    """One row per check of a throughput file's targets: config, chars/s of its numba row, measure, value, target,
    pass."""
    numba = {(r.get("model", "rnn"), r.get("layers", 1), r["hidden"], r["batch"], r["dtype"], r["threads"]): r
             for r in data["rows"] if r.get("backend") == "numba"}
    out = []
    for t in data.get("targets") or []:
        row = numba.get((*target_model(t), t["hidden"], t["batch"], t["dtype"], t["threads"]), {})
        for c in t["checks"]:
            out.append(dict(name=t["name"], chars_per_sec=row.get("chars_per_sec"), metric=c["metric"],
                            value=c["value"], threshold=c["threshold"], passed=c["passed"]))
    return out


METRIC = {"peak_fraction": ("% of sgemm peak", percent), "vs_numpy": ("x NumPy reference", lambda v: f"{v:.2f}x"),
          "vs_seed": ("x seed-style NumPy", lambda v: f"{v:.1f}x")}
TARGETS = [("config", "name", "s"), ("chars/s", "chars_per_sec", ",.0f"),
           ("measure", lambda r: METRIC.get(r["metric"], (r["metric"],))[0], "s"),
           ("value", lambda r: METRIC.get(r["metric"], (None, lambda v: f"{v:.3g}"))[1](r["value"])
            if r["value"] is not None else None, "s"),
           ("target", lambda r: ">= " + METRIC.get(r["metric"], (None, lambda v: f"{v:g}"))[1](r["threshold"]), "s"),
           ("result", lambda r: pass_fail(r["passed"]), "s")]


def throughput_section(name, data):
    s = data.get("settings") or {}
    lines = [f"### {name}", "",
             f"{'--quick: the target rows' if s.get('quick') else 'grid'}; T = {s.get('seq_len', '-')}, "
             f"V = {s.get('vocab', '-')}; median of {s.get('repeats', '-')} repeats of at least "
             f"{s.get('min_seconds', '-')} s; step: {s.get('step', '-')}; FLOPs per char: "
             f"{s.get('flops_per_char', '-')}; numba contender: {s.get('numba_module', '-')}.", "",
             md_table(data["rows"], THROUGHPUT), ""]
    targets = target_rows(data)
    if targets:
        lines += ["Targets:", "", md_table(targets, TARGETS), ""]
    return lines


def sampling_section(name, data):
    lines = [f"### {name}", "", md_table(data["rows"], SAMPLING), ""]
    for t in data.get("targets") or []:
        value = "-" if t.get("value") is None else f"{t['value']:.2f}x"
        lines += [f"Target: {t['name']}: {t.get('backend') or '-'} {value}, {pass_fail(t.get('passed'))}.", ""]
    return lines


TIME_TO_QUALITY = [("model", "model", "s"), ("L", "layers", "d"), ("H", "hidden", "d"), ("backend", "backend", "s"),
                   ("budget s", "budget_s", ".0f"), ("steps", "steps", ",d"), ("chars/s", "chars_per_sec", ",.0f"),
                   ("val nats/char", "val_loss", ".4f"), ("val bits/char", "val_bpc", ".4f")]


def time_to_quality_section(name, data):
    s = data.get("settings") or {}
    lines = [f"### {name}", "", f"Corpus {data.get('corpus', '-')}, {data.get('budget_s', '-')} s of training per "
             f"run; batch {s.get('batch_size', '-')}, seq {s.get('seq_len', '-')}, Adam, init {s.get('init', '-')}, "
             f"{s.get('threads', '-')} threads; val loss on the first {s.get('eval_tokens', '-')} val tokens.", "",
             md_table(data["rows"], TIME_TO_QUALITY), ""]
    best = data.get("best")
    if best:
        lines += [f"Best in the budget: {best['model']} L{best['layers']} H{best['hidden']} ({best['backend']}), "
                  f"{best['val_bpc']:.4f} bits/char.", ""]
    return lines


PYTORCH = [("contender", "contender", "s"), ("model", "model", "s"), ("L", "layers", "d"), ("H", "hidden", "d"),
           ("N", "batch", "d"), ("threads", "threads", "d"), ("chars/s", "chars_per_sec", ",.0f"),
           ("GFLOP/s", "gflops", ".1f"), ("% of sgemm peak", "peak_fraction", lambda v: f"{100 * v:.1f}"),
           ("fastrnn x", "fastrnn_vs", ".2f"), ("fastrnn same precision x", "fastrnn_same_precision_vs", ".2f")]


PYTORCH_SUMMARY = [("model", lambda r: f"{r['model']} x {r['layers']} H{r['hidden']} N{r['batch']}", "s"),
                   ("fastrnn chars/s", "fastrnn", ",.0f"), ("% of sgemm peak", "peak", lambda v: f"{100 * v:.1f}"),
                   ("x torch", "vs_torch", ".2f"), ("fastrnn bf16 chars/s", "fastrnn_bf16", ",.0f"),
                   ("bf16: x torch-bf16", "vs_torch_bf16", ".2f")]


def pytorch_summary(rows):
    """One row per model of a pytorch file: fastrnn's float32 rate, its fraction of the peak and its ratio to
    torch; fastrnn-bf16's rate and its ratio to torch-bf16 (None where absent)."""
    out = {}
    for r in rows:
        key = (r["model"], r["layers"], r["hidden"], r["batch"])
        row = out.setdefault(key, dict(model=r["model"], layers=r["layers"], hidden=r["hidden"], batch=r["batch"]))
        if r["contender"] == "fastrnn":
            row.update(fastrnn=r["chars_per_sec"], peak=r["peak_fraction"])
        elif r["contender"] == "fastrnn-bf16":
            row["fastrnn_bf16"] = r["chars_per_sec"]
        elif r["contender"] == "torch":
            row["vs_torch"] = r.get("fastrnn_vs")
        elif r["contender"] == "torch-bf16":
            row["vs_torch_bf16"] = r.get("fastrnn_same_precision_vs")
    return list(out.values())


def pytorch_section(name, data):
    peak = next(iter((data.get("peaks") or {}).get("float32", {}).values()), None)
    return [f"### {name}", "", f"PyTorch {data.get('torch', '-')}, CPU, eager; sgemm peak in the same run "
            f"{'-' if peak is None else format(peak, '.1f')} GFLOP/s; `fastrnn x` is fastrnn's float32 chars/s over "
            f"the row's (medians of interleaved repeats), `fastrnn same precision x` the float32 or bf16 fastrnn "
            f"row over it.", "", md_table(data["rows"], PYTORCH), ""]


def train_memory_section(name, data):
    lines = [f"### {name}", "", "`fastrnn train` " + " ".join(data.get("model") or []), "",
             md_table(data["rows"], TRAIN_MEMORY), ""]
    startup = data.get("startup") or {}
    if startup:
        lines += ["Start-up, from launch to the end of the first step:", "",
                  md_table([dict(cache=k, **v) for k, v in startup.items()],
                           [("numba cache", "cache", "s"), ("launch to first step s", "launch_to_first_step_s", ".2f"),
                            ("first step s", "first_step_s", ".2f")]), ""]
    return lines


DISTRIBUTED = [("model", "model", "s"), ("H", "hidden", "d"), ("N", "batch", "d"),
               ("1 rank x 2 threads chars/s", "one_rank_chars_per_sec", ",.0f"),
               ("2 ranks x 1 thread chars/s", "two_ranks_chars_per_sec", ",.0f"), ("ratio", "ratio", ".3f"),
               ("Allreduce ms/step", "allreduce_ms", ".2f"), ("share of step", "allreduce_share", percent)]


def distributed_section(name, data):
    lines = [f"### {name}", "", f"Corpus {data.get('corpus', '-')}, {data.get('steps', '-')} steps a run, medians of "
             f"{data.get('repeats', '-')} interleaved runs of each kind, float32, T = 50; sgemm at 2 threads "
             f"{fmt(data.get('sgemm_gflops_2_threads'), '.1f')} GFLOP/s.", "", md_table(data["rows"], DISTRIBUTED), ""]
    for model, m in (data.get("scaling") or {}).items():
        lines += [f"Modelled efficiency of {model} over K machines (measured compute {1e3 * m['compute_s']:.1f} "
                  f"ms/step at B = {data['rows'][0]['batch']} per machine, a ring Allreduce of "
                  f"{m['gradient_bytes'] / 2**20:.1f} MiB):", "",
                  md_table(m["rows"], [("link", "link", "s"), ("K", "K", "d"), ("Allreduce ms", "allreduce_ms", ".2f"),
                                       ("efficiency", "efficiency", percent)]), ""]
        lines += [f"- {link}: >= 90% up to K = {k}" for link, k in m["k_at_90pct"].items()] + [""]
    return lines


def profile_speed_section(name, data):
    c = data.get("config") or {}
    return [f"### {name}", "",
            f"{c.get('backend', '-')} backend, {c.get('model', '-')} x {c.get('num_layers', '-')} "
            f"H={c.get('hidden_size', '-')} N={c.get('batch_size', '-')} T={c.get('seq_len', '-')} "
            f"{c.get('dtype', '-')}, {data.get('threads', '-')} threads; median of {data.get('steps', '-')} steps; "
            f"kernels: {data.get('plan', '-')}", "", md_table(data["rows"], PROFILE_SPEED), ""]


BF16_QUALITY = [("model", "model", "s"), ("L", "layers", "d"), ("H", "hidden", "d"), ("precision", "precision", "s"),
                ("granted", "granted", lambda v: "yes" if v else "no"), ("steps", "steps", ",d"),
                ("chars/s", "chars_per_sec", ",.0f"), ("val nats/char", "val_loss", ".4f")]


def bf16_quality_section(name, data):
    t, st = data.get("target") or {}, data.get("settings") or {}
    return [f"### {name}", "", f"Corpus {data.get('corpus', '-')}; batch {st.get('batch_size', '-')}, seq "
            f"{st.get('seq_len', '-')}, Adam, seed {st.get('seed', '-')}, {st.get('threads', '-')} threads; val loss on "
            f"the first {st.get('eval_tokens', '-')} val tokens.", "", md_table(data["rows"], BF16_QUALITY), "",
            f"bf16 minus float32: {fmt(t.get('value'), '+.4f')} nats/char (target: within {t.get('threshold', '-')}; "
            f"{'pass' if t.get('passed') else 'FAIL'}); bf16 speed {fmt(data.get('speedup'), '.2f')}x float32.", ""]


ISA_ROWS = [("target", "target", "s"), ("row", "row", "s"), ("chosen", lambda r: r["chosen"] + (
    "" if r.get("measured") else " (rule)"), "s"), ("loops chars/s", lambda r: r["candidates"].get("loops"), ",.0f"),
    ("BLAS chars/s", lambda r: r["candidates"].get("blas"), ",.0f"),
    ("tiles chars/s", lambda r: r["candidates"].get("tiles"), ",.0f"),
    ("chosen / fastest", "chosen_vs_best", ".2f"), ("% of peak", lambda r: r["peak_fraction"][r["chosen"]], percent),
    ("within 5%", lambda r: not r["slow"], yes_no)]
ISA_TARGETS = [("target", "target", "s"), ("compiled for", "compiled_for", "s"), ("tile", "tile", "s"),
               ("sgemm GFLOP/s", "sgemm_gflops", ".1f")]
ISA_GENERATION = [("target", "target", "s"), ("streams", "streams", "d"), ("chars/s", "chars_per_sec", ",.0f")]
ISA_TILES = [("target", "target", "s"), ("tile", lambda r: r["tile"] + (" (rule)" if r["tile"] == r["rule"] else ""),
                                         "s"), ("GFLOP/s", "gflops", ".1f")]


def isa_section(name, data):
    lines = [f"`{name}`, {data.get('threads', '-')} threads, T = 50, float32, {data.get('repeats', '-')} rounds:", "",
             md_table(data.get("targets", []), ISA_TARGETS), "", md_table(data["rows"], ISA_ROWS), ""]
    if data.get("generation"):
        lines += ["Generation, an rnn H512 (`fastrnn sample --num-samples K`'s path):", "",
                  md_table(data["generation"], ISA_GENERATION), ""]
    if data.get("tiles"):
        lines += ["The register tile against its neighbours: one thread's rows of an lstm H512 step "
                  "(32 x 512 by 512 x 2048):", "", md_table(data["tiles"], ISA_TILES), ""]
    return lines


SECTIONS = {
    "throughput": ("Training throughput", "`python -m benchmarks.throughput`: chars/s of a training step "
                   "(forward_backward + clip + Adam) of the numba kernels, the NumPy reference and a seed-style "
                   "NumPy RNN, each checked against the reference before it is timed, their repeats interleaved.",
                   throughput_section),
    "isa": ("Under each instruction set", "`python -m benchmarks.isa`: the kernels compiled for each instruction "
            "set this CPU runs (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES; OpenBLAS on the same set's kernels), the plan "
            "`fastrnn train` chooses and every candidate plan's training chars/s.", isa_section),
    "time_to_quality": ("Time to quality", "`python -m benchmarks.time_to_quality`: the validation bits/char "
                        "each model reaches in a fixed wall-clock budget of training.", time_to_quality_section),
    "pytorch": ("Against PyTorch", "`python -m benchmarks.pytorch`: training chars/s of fastrnn and of PyTorch's "
                "nn.RNN/LSTM/GRU (float32, and bf16 autocast where the CPU has it), side by side.", pytorch_section),
    "sampling": ("Generation", "`python -m benchmarks.sampling`: chars/s of generating one character at a time "
                 "from a random model; `read-once` is one pass over the weights a character reads, for scale.",
                 sampling_section),
    "prepare": ("Corpus preparation", "`python -m benchmarks.prepare`: `fastrnn prepare` against the naive "
                "read-everything approach, each in its own subprocess (peak RSS its own).",
                lambda name, d: [f"### {name}", "", md_table(d["rows"], PREPARE), ""]),
    "train_memory": ("Training memory and start-up", "`python -m benchmarks.train_memory`: peak RSS of "
                     "`fastrnn train` on each corpus, and the time to the first step with a cold and a warm numba "
                     "cache.", train_memory_section),
    "profile_speed": ("Training step by phase", "`python -m tools.profile_speed`: the training step timed by "
                      "phase, as training runs it.", profile_speed_section),
    "distributed": ("Data-parallel training", "`python -m benchmarks.distributed`: `mpiexec -n 2` ranks x 1 "
                    "thread against 1 rank x 2 threads, side by side, and a ring-Allreduce model of many machines.",
                    distributed_section),
    "bf16_quality": ("bf16 against float32", "`python -m benchmarks.bf16_quality`: the same model trained the "
                     "same steps from the same seed with `--precision bf16` and in float32: the val loss reached "
                     "and the chars/s.", bf16_quality_section),
    "startup": ("Start-up on a large corpus", "`python -m benchmarks.startup`: the seconds from launching `fastrnn "
                "train` to its first step, read from its own lines, and the time of each checkpoint write.",
                startup.section),
    "soak": ("Soak", "`python -m benchmarks.soak`: a long run of `fastrnn train` sampled every minute, killed with "
             "kill -9 at a random moment and resumed, and the resume checked against a run never killed.",
             soak_page.section),
    "kernel_scratch": ("Kernel scratch", "`python -m benchmarks.kernel_scratch`: numba vs reference training "
                       "steps, side by side.",
                       lambda name, d: [f"### {name}", "", md_table(d["rows"], KERNEL_SCRATCH), ""]),
}


# ---------------------------------------------------------------------------------------------------------------
# charts


def draw_charts(results, out_dir, stem):
    """PNG charts of the throughput files of the CPU measured last into out_dir. Returns ([file names], None) or
    ([], reason skipped)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return [], "matplotlib is not installed (pip install 'fastrnn[plot]')"
    from benchmarks.plot import plot

    written = []
    newest = cpu_label(results[0][2]) if results else None
    for kind, name, data in results:
        if kind != "throughput" or cpu_label(data) != newest:  # the CPU measured last (its part comes first)
            continue
        for model in sorted({f"{r.get('model', 'rnn')}" + (f":{r['layers']}" if r.get("layers", 1) != 1 else "")
                             for r in data["rows"]}):
            png = f"{stem}_{os.path.splitext(os.path.basename(name))[0]}_{model.replace(':', 'x')}.png"
            plot(data, os.path.join(out_dir, png), model=model)
            written.append(png)
    return written, None


# ---------------------------------------------------------------------------------------------------------------
# the page and the README block


def render_page(results, folder, out_dir, charts, skipped):
    rel = os.path.relpath(folder, out_dir)
    cpus = list(dict.fromkeys(cpu_label(d) for _, _, d in results))
    lines = ["# Benchmarks", "",
             f"Generated by `python -m benchmarks.report` from the JSON files in [`{rel}/`]({rel}/) "
             "(`make bench-results` reruns the quick set and regenerates this page); nothing here is typed by hand. "
             "The machine may be shared with other work: compare rows of one run, whose contenders were "
             "measured side by side, rather than runs of different days.", "",
             "One part per CPU measured, the one measured last first: " + "; ".join(
                 f"[{c}](#{anchor(c)})" for c in cpus) + ".", "",
             "## Method", "",
             "Each benchmark checks its result against the NumPy reference (`fastrnn.reference`) before timing, "
             "warms up (the first call, with numba's compilation, is timed apart), and reports the median of "
             "several timed repeats. Throughput is characters per second; GFLOP/s counts the matrix products "
             "per character, and `% of peak` divides it by the sgemm or dgemm rate measured in the same run at "
             "the same thread count.", ""]
    for cpu in cpus:
        mine = [r for r in results if cpu_label(r[2]) == cpu]
        lines += [f"# {cpu}", ""]
        lines += machine_section(mine)
        for kind in KINDS:
            files = [(name, d) for k, name, d in mine if k == kind]
            if not files:
                continue
            title, method, section = SECTIONS[kind]
            lines += [f"## {title}", "", method, ""]
            for name, data in files:
                lines += section(name, data)
    lines += [f"# Charts: {cpus[0]}" if cpus else "# Charts", ""]
    if skipped:
        lines += [f"Charts skipped: {skipped}.", ""]
    elif not charts:
        lines += ["No throughput results to draw.", ""]
    for png in charts:
        lines += [f"![{png}]({png})", ""]
    return "\n".join(lines).rstrip() + "\n"


def anchor(title):
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def readme_block(results, page_link):
    """The lines between the README markers: the throughput targets of the CPU measured last (one table), and a
    link to the page (which has every CPU)."""
    if results:
        newest = cpu_label(results[0][2])
        results = [r for r in results if cpu_label(r[2]) == newest]
    rows = [r for kind, _, d in results if kind == "throughput" for r in target_rows(d)]
    date = next((d["machine"].get("time", "")[:10] for k, _, d in results if k == "throughput"
                 and isinstance(d.get("machine"), dict)), "")
    cpu = next((d["machine"].get("cpu", "") for k, _, d in results if k == "throughput"
                and isinstance(d.get("machine"), dict)), "")
    if not rows:
        return f"No throughput targets in the results; see [{page_link}]({page_link}).\n"
    text = (f"Training throughput targets of the numba kernels (`python -m benchmarks.throughput --quick`; {cpu}, "
            f"{date}):\n\n" + md_table(rows, TARGETS) + "\n")
    for kind, _, d in results:
        if kind == "pytorch":
            text += ("\nAgainst PyTorch " + str(d.get("torch", "")) + " on the same machine (`python -m "
                     "benchmarks.pytorch`; training chars/s, T = 50; fastrnn float32 against torch float32, and "
                     "fastrnn --precision bf16 against torch's bf16 autocast; the full table is in the page):\n\n" + md_table(pytorch_summary(d["rows"]), PYTORCH_SUMMARY)
                     + "\n")
        elif kind == "time_to_quality" and d.get("best"):
            b = d["best"]
            text += (f"\nIn {d.get('budget_s', '-'):g} s of training on {d.get('corpus', '-')} (`python -m "
                     f"benchmarks.time_to_quality`), the best validation loss was {b['val_bpc']:.3f} bits/char, "
                     f"by {b['model']} x {b['layers']} H{b['hidden']} ({b['backend']}).\n")
    return text + f"\nAll the results, the machine and the method: [{page_link}]({page_link}).\n"


def rewrite_readme(readme, block):
    """Replace the text between the markers of `readme` with `block`. Returns False (file untouched) when the file
    has no such pair of lines."""
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        return False
    new = "".join(lines[:starts[0] + 1]) + block + "".join(lines[ends[0]:])
    if new != text:
        with open(readme, "w", encoding="utf-8") as f:
            f.write(new)
    return True


@options.command(help=__doc__.split("\n\n")[0] + "\n\nRuns from a checkout (benchmarks/ is not part of the "
                 "installed package). Every number written comes from the JSON files of the results folder.")
@click.option("--results", "folder", type=click.Path(exists=True, file_okay=False),
              default=None, show_default="each kind from the newest docs/benchmarks/YYYY-MM-DD/ holding it",
              help="The folder of benchmark JSON files to report.")
@click.option("--output", type=click.Path(dir_okay=False), default=os.path.join(ROOT, "docs", "benchmarks.md"),
              show_default="docs/benchmarks.md of this checkout",
              help="The markdown page to write; the charts go next to it.")
@click.option("--readme", type=click.Path(dir_okay=False), default=os.path.join(ROOT, "README.md"),
              show_default="README.md of this checkout",
              help="The README whose benchmarks block is rewritten (left alone without the markers).")
@click.option("--charts/--no-charts", default=True, help="Draw the PNG charts (needs matplotlib).")
@options.catch_user_errors
def main(folder, output, readme, charts):
    if folder is None and newest_results() is None:
        raise click.UsageError(f"no results folder: {RESULTS_ROOT}/YYYY-MM-DD/ is missing; give --results DIR "
                               "or run `make bench-results`")
    results = load_results(folder) if folder else newest_of_each_kind()
    folder = folder or RESULTS_ROOT
    if not results:
        raise click.ClickException(f"{folder} holds no benchmark JSON files ({', '.join(k + '*.json' for k in KINDS)})")
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(output))[0]
    written, skipped = draw_charts(results, out_dir, stem) if charts else ([], "--no-charts")
    with open(output, "w", encoding="utf-8") as f:
        f.write(render_page(results, os.path.abspath(folder), out_dir, written, skipped))
    click.echo(f"wrote {os.path.relpath(output)} from {len(results)} result file{'s' if len(results) != 1 else ''} "
               f"in {os.path.relpath(folder)}"
               + (f"; charts: {', '.join(written)}" if written else f"; charts skipped: {skipped}"))
    soak = soak_page.write(results, os.path.abspath(folder), out_dir, charts)
    if soak:
        click.echo(f"wrote {os.path.relpath(soak)}")
    if readme:
        if not os.path.exists(readme):
            click.echo(f"{readme} does not exist; no README block written")
            return
        link = os.path.relpath(os.path.abspath(output), os.path.dirname(os.path.abspath(readme)))
        if rewrite_readme(readme, readme_block(results, link)):
            click.echo(f"rewrote the benchmarks block of {os.path.relpath(readme)}")
        else:
            click.echo(f"{os.path.relpath(readme)} has no {BEGIN} ... {END} block; left it alone")


if __name__ == "__main__":
    main()
