"""docs/soak.md: the page of a `benchmarks.soak --json` result, and its chart of chars/s and RSS over time with the
kill marked; benchmarks.report writes it next to docs/benchmarks.md (whose soak section links to it), from the
newest soak*.json of docs/benchmarks/<date>/. Every number comes from that file."""

import os
import re

PAGE = "soak.md"
CHART = "soak.png"
GOAL_NAMES = {"chars_per_sec_flat": "chars/s flat", "chars_per_sec_flat_blocks": "chars/s flat, 5-row medians",
              "chars_per_sec_flat_vs_machine": "chars/s per machine GFLOP/s flat", "rss_flat_mb": "RSS flat",
              "eval_checkpoint_share": "evaluations + checkpoints", "resume_exact": "resume exact"}


def fmt_goal(name, v):
    if v is None:
        return "-"
    if name == "resume_exact":
        return "yes" if v else "no"
    if name == "rss_flat_mb":
        return f"{v:.1f} MB"
    return f"{100 * v:.1f}%"


def goal_rows(data):
    """One row per goal: its name, measured value, target, result."""
    out = []
    for name, g in judged(data).items():
        target = "yes" if name == "resume_exact" else "<= " + fmt_goal(name, g["threshold"])
        out.append({"goal": GOAL_NAMES.get(name, name), "value": fmt_goal(name, g["value"]), "target": target,
                    "result": {True: "pass", False: "FAIL", None: "not evaluated"}[g["passed"]],
                    "what": g.get("what", "")})
    return out


def judged(data):
    """The goals of a soak result as benchmarks/soak.py defines them now (those it recorded if it cannot say)."""
    from benchmarks import soak

    try:
        return soak.judge(data)
    except (KeyError, TypeError):
        return data.get("goals") or {}


def newest(results):
    """The (name, data) of the soak result measured last, or None."""
    soaks = [(name, d) for kind, name, d in results if kind == "soak"]
    return max(soaks, key=lambda nd: (nd[1].get("machine") or {}).get("time", ""), default=None)


def headline(data):
    """Model, ranks and minutes of a soak, from the options it trained with."""
    opts, s = (data.get("settings") or {}).get("train_options") or [], data.get("settings") or {}
    value = {opts[i]: opts[i + 1] for i in range(len(opts) - 1) if opts[i].startswith("--")}
    return (f"{value.get('--model', '?')} {value.get('--num-layers', '1')}x{value.get('--hidden-size', '?')}, "
            f"{s.get('ranks', '?')} rank{'s' if s.get('ranks') != 1 else ''}, {s.get('minutes', '?'):g} minutes")


def section(name, data, page=PAGE):
    """The soak's part of docs/benchmarks.md: its goals, and a link to its page."""
    from benchmarks.report import md_table

    return [f"### {name}", "", f"{headline(data)} on {os.path.basename((data.get('corpus') or {}).get('path', '-'))}; "
            f"the rows, the chart and the resume check: [{page}]({page}).", "",
            md_table(goal_rows(data), [("goal", "goal", "s"), ("measured", "value", "s"), ("target", "target", "s"),
                                       ("result", "result", "s")]), ""]


def chart(data, path):
    """chars/s and RSS against minutes into the soak, one colour per session, the kill a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    panels = [("chars_per_sec", "chars/s (median of an interval)"), ("rss_mb", "RSS of all processes, MB")]
    if any(r.get("sgemm_gflops") for r in rows):
        panels.insert(1, ("sgemm_gflops", "machine: sgemm GFLOP/s"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.75 * len(panels)), dpi=100, sharex=True)
    top, bottom = axes[0], axes[-1]
    for ax, (key, label) in zip(axes, panels):
        ax.set_ylabel(label)
        for session in sorted({r["session"] for r in rows}):
            mine = [r for r in rows if r["session"] == session and r.get(key) and r["rows"]]
            ax.plot([r["t"] / 60 for r in mine], [r[key] for r in mine], marker=".",
                    label="first run" if session == 1 else "resumed")
        ax.set_ylim(0, 1.1 * max((r[key] for r in rows if r.get(key) and r["rows"]), default=1))
    kill, settle = data.get("kill"), data["settings"]["settle"]
    for ax in axes:
        if kill:
            ax.axvline(kill["at"] / 60, color="red", lw=1, ls="--", label="kill -9")
        for i, session in enumerate(data.get("sessions") or []):  # where the goals' rows begin
            ax.axvline((session["launched_at"] + settle) / 60, color="grey", lw=0.8, ls=":",
                       label="settled" if i == 0 else None)
        ax.grid(alpha=0.3)
    bottom.set_xlabel("minutes into the soak")
    top.legend(fontsize=8)
    machine = data.get("machine") or {}
    fig.suptitle(f"Soak: {headline(data)}, {machine.get('cpu', '')}, {machine.get('time', '')[:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


ROWS = [("min", lambda r: r["t"] / 60, ".1f"), ("session", "session", "d"), ("step", "step", ",d"),
        ("chars/s", "chars_per_sec", ",.0f"), ("RSS MB", "rss_mb", ",.0f"),
        ("machine GFLOP/s", lambda r: r.get("sgemm_gflops"), ",.0f"), ("machine GB/s", lambda r: r.get("copy_gbs"),
                                                                          ".1f"),
        ("eval %", lambda r: 100 * r["eval_share"] if r.get("eval_share") is not None else None, ".1f"),
        ("checkpoint %", lambda r: 100 * r["checkpoint_share"] if r.get("checkpoint_share") is not None else None,
         ".1f"),
        ("sample %", lambda r: 100 * r["sample_share"] if r.get("sample_share") is not None else None, ".1f"),
        ("event", lambda r: r.get("event", ""), "s")]
STARTUP = [("session", "session", "d"), ("launched at s", "launched_at", ".1f"),
           ("resumed from", "resumed_from", ",d"), ("to model line s", "to_start_line", ".2f"),
           ("to first step s", "to_first_step", ".2f"), ("first step done s", "to_first_step_done", ".2f"),
           ("first step s", "first_step_seconds", ".2f"), ("CPU s then", "cpu_seconds_to_first_step_done", ".2f"),
           ("kernels", "kernels", "s")]


def resume_lines(data):
    kill, check = data.get("kill"), data.get("resume_check") or {}
    if not kill:
        return [f"Nothing was killed: {check.get('skipped', '-')}.", ""]
    lines = [f"SIGKILL to every training process at {kill['at']:.0f} s (drawn: {kill['requested_at']:.0f} s); the last "
             f"progress row before it was step {kill['last_logged_step'] or 0:,} and the newest checkpoint step "
             f"{kill['checkpoint_step']:,}, from which the same command with `--resume` continued.", ""]
    res, before = check.get("resumed") or {}, check.get("before_kill") or {}
    lines += [f"Resume check: a copy of the run directory as the kill left it, resumed and trained to step "
              f"{check.get('target_step', 0):,} in one go, never killed (the reference). The resumed soak run's "
              f"{res.get('rows_compared', 0)} progress rows over those steps and the killed run's "
              f"{before.get('rows_compared', 0)} rows past its checkpoint against the reference's, field by field "
              f"(smoothed loss, batch loss, gradient norm, learning rate): {res.get('mismatched_fields', 0)} and "
              f"{before.get('mismatched_fields', 0)} fields differ; exact: "
              f"{'yes' if check.get('exact') else 'no'}.", ""]
    kernels = check.get("kernels") or {}
    # how a plan was had ("(chosen by measurement: ...)", "(the run's, recorded in its checkpoint)") is not the plan
    if len({re.sub(r" \((chosen by measurement[^)]*|the run's, recorded in its checkpoint)\)$", "", v)
            for v in kernels.values()}) > 1:
        lines += ["The kernel plans of the runs differ (they round differently): " + "; ".join(
            f"{k}: {v}" for k, v in kernels.items()) + ".", ""]
    for m in res.get("mismatches", []) + before.get("mismatches", []):
        lines.append(f"- step {m['step']}: {m['field']} {m['value']!r}, reference {m['reference']!r}")
    return lines


def machine_lines(data):
    """What the yardstick measured: how much the machine's own speed moved over the rows the goals judge."""
    m = data.get("machine_speed")
    if not m:
        return []
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    return [f"With every row the training was stopped for a moment and the machine's own speed measured: a "
            f"{m.get('cores', '-')}-thread 1024x1024 sgemm and a 64 MB copy. Over the rows the goals judge, the "
            f"largest over the smallest was {pct(m.get('sgemm_spread'))} for the sgemm's GFLOP/s and "
            f"{pct(m.get('copy_spread'))} for the copy's GB/s (chars/s: "
            f"{pct((judged(data).get('chars_per_sec_flat') or {}).get('value'))}).", ""]


def render(data, source, chart_name, skipped):
    """The markdown of the page. source: the result file, relative to the page."""
    from benchmarks.report import cpu_label, md_table

    machine, corpus, s = data.get("machine") or {}, data.get("corpus") or {}, data.get("settings") or {}
    commit = (data.get("commit") or "")[:10] or "-"
    lines = [f"# Soak: {headline(data)}, measured {machine.get('time', '-')[:10]}", "",
             f"Generated by `python -m benchmarks.report` from [`{source}`]({source}); nothing here is typed by hand. "
             f"Measured {machine.get('time', '-')} on {cpu_label(data)}, {machine.get('logical_cores', '-')} logical "
             f"cores; fastrnn {data.get('fastrnn', '-')} ({commit}), Python {machine.get('python', '-')}, NumPy "
             f"{machine.get('numpy', '-')}, numba {machine.get('numba', '-')}. The machine may have been shared with "
             f"other work.", "",
             f"`{data.get('argv') or 'python -m benchmarks.soak'}` trained with `{data.get('command', '-')}` on "
             f"{corpus.get('path', '-')} ({corpus.get('train_tokens', 0):,} training and "
             f"{corpus.get('val_tokens', 0):,} val tokens, {corpus.get('vocab_size', '-')} symbols), a row every "
             f"{s.get('interval', '-'):g} s; the goals judge the rows from {s.get('settle', 0):g} s after each launch "
             f"on; the docstring of benchmarks/soak.py says how each is measured.", "",
             "## Goals", "", md_table(goal_rows(data), [("goal", "goal", "s"), ("measured", "value", "s"),
                                                       ("target", "target", "s"), ("result", "result", "s"),
                                                       ("how", "what", "s")]), ""]
    lines += ["## Chars/s and RSS", ""] + machine_lines(data)
    lines += [f"![{chart_name}]({chart_name})" if chart_name else f"Chart skipped: {skipped}.", ""]
    lines += ["## The kill and the resume", ""] + resume_lines(data)
    sessions = [dict(st.get("startup") or {}, session=i + 1, launched_at=st.get("launched_at"))
                for i, st in enumerate(data.get("sessions") or [])]
    lines += ["## Start-up", "", "Seconds from each launch, read from train's own lines (benchmarks/launch.py).", "",
              md_table(sessions, STARTUP), "", "## Rows", "", md_table(data["rows"], ROWS), ""]
    return "\n".join(lines).rstrip() + "\n"


def write(results, folder, out_dir, charts):
    """OUT_DIR/soak.md (and its chart, with `charts` and matplotlib) from the newest soak result in `results`
    ([(kind, name relative to `folder`, data)]). Returns the page's path, or None without a soak result."""
    found = newest(results)
    if found is None:
        return None
    name, data = found
    chart_name, skipped = None, "--no-charts"
    if charts:
        try:
            import matplotlib  # noqa: F401

            chart(data, os.path.join(out_dir, CHART))
            chart_name = CHART
        except ImportError:
            skipped = "matplotlib is not installed (pip install 'fastrnn[plot]')"
    source = os.path.relpath(os.path.join(folder, name), out_dir)
    path = os.path.join(out_dir, PAGE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(data, source, chart_name, skipped))
    return path
