"""Run a command once per instruction set this machine can run, the kernels compiled for each (kernels/isa.py).

    python -m tools.isa_targets [--list] [--cache-dir DIR] [--blas] [--skip host] -- COMMAND [ARG ...]

For each target of isa.check_targets (generic x86-64 with SSE2 only, haswell with AVX2 and FMA, skylake-avx512
where the CPU has AVX-512, then the host as it is), COMMAND runs with NUMBA_CPU_NAME and NUMBA_CPU_FEATURES set
to the target (explicit features: without them numba adds the host's), its own numba cache (DIR/<target>, so
code for one target is never loaded for another) and FASTRNN_ISA_TARGET naming it. --blas also sets
OPENBLAS_CORETYPE to the OpenBLAS kernels of the same instruction set (for benchmarks; the tests leave OpenBLAS as
the machine has it). Exits non-zero if the command failed for any target; a line per target says how it went.
`make test-isa` runs the kernel-against-reference tests this way.
"""

import os
import subprocess
import sys
import time

import click

from fastrnn.kernels import isa


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--list", "list_only", is_flag=True, help="Print the targets this machine can run, and stop.")
@click.option("--cache-dir", default=os.path.join(".cache", "numba-isa"), show_default=True,
              help="numba's cache of each target goes to DIR/<target>.")
@click.option("--blas", is_flag=True, help="Also run OpenBLAS's kernels of the target's instruction set.")
@click.option("--skip", default="", help="Comma-separated targets to leave out (e.g. host).")
@click.argument("command", nargs=-1, required=False)
def main(list_only, cache_dir, blas, skip, command):
    skipped = {t.strip() for t in skip.split(",") if t.strip()}
    targets = [(name, env) for name, env in isa.check_targets() if name not in skipped]
    if list_only:
        for name, env in targets:
            click.echo(f"{name}\t{env.get('NUMBA_CPU_NAME', '(host)')}\t{env.get('NUMBA_CPU_FEATURES', '')}")
        return
    if not command:
        raise click.UsageError("give the command to run after --")
    failed = []
    for name, settings in targets:
        env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")}
        env.update({k: v for k, v in settings.items() if blas or k != "OPENBLAS_CORETYPE"})
        env["NUMBA_CACHE_DIR"] = os.path.abspath(os.path.join(cache_dir, name))
        env["FASTRNN_ISA_TARGET"] = name
        click.echo(f"== target {name}: {settings.get('NUMBA_CPU_NAME', 'the host CPU')} "
                   f"{settings.get('NUMBA_CPU_FEATURES', '')}".rstrip(), err=True)
        t0 = time.perf_counter()
        code = subprocess.call(list(command), env=env)
        click.echo(f"== target {name}: {'passed' if code == 0 else f'FAILED (exit {code})'} in "
                   f"{time.perf_counter() - t0:.0f} s", err=True)
        if code != 0:
            failed.append(name)
    if failed:
        click.echo(f"isa_targets: failed for {', '.join(failed)}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
