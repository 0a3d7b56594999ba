"""The `fastrnn` command line: a click group of thin commands over library functions.

Only this package prints. Library code raises `fastrnn.errors.FastrnnError` subclasses; the group turns each
into a single line `fastrnn: error: ...` on stderr and a non-zero exit status, never a traceback.
"""

import errno
import os
import signal
import sys
import threading

from fastrnn.errors import Interrupted, in_chain  # light, and first: the signals below need it
from fastrnn.guards import EXIT_SIGNAL, no_news  # noqa: F401 (light too; the commands import them from there)


def _terminate(signum, frame):
    raise Interrupted(signum)


def _redeliver(unraisable, hook):
    """A signal whose handler raised inside a finalizer (where Python can only report the exception, with a
    traceback) is sent again: it then interrupts the command where it can (or is noted, by `train`'s stop flag)."""
    exc = unraisable.exc_value
    if isinstance(exc, KeyboardInterrupt):
        os.kill(os.getpid(), getattr(exc, "signum", signal.SIGINT))
    else:
        hook(unraisable)


def _interrupted_at_start(exc):
    sys.stderr.write("fastrnn: interrupted while starting; nothing was done\n")
    sys.exit(EXIT_SIGNAL.get(getattr(exc, "signum", signal.SIGINT), 130))


# SIGTERM while starting ends as Ctrl-C does: one line and exit 143 (each command keeps this; `train` stops at a step)
if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
    signal.signal(signal.SIGTERM, _terminate)

try:  # Ctrl-C while the modules load: one line, not a traceback
    import click

    from fastrnn import __version__
    from fastrnn.errors import FastrnnError, os_reason
except KeyboardInterrupt as exc:
    _interrupted_at_start(exc)


class FastrnnGroup(click.Group):
    """A click group that reports user errors as one line on stderr."""

    program = False  # main() runs the program (not a caller passing args): signals end it, then are ignored

    def main(self, args=None, *rest, **kwargs):
        self.program = args is None and threading.current_thread() is threading.main_thread()
        try:
            return super().main(args, *rest, **kwargs)
        finally:
            # the program (not a caller passing args) ends here: a signal during the interpreter's shutdown must
            # not turn a finished command into a traceback or another exit status
            if args is None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                # nor may a finalizer that fails on the way out (an h5py object whose operation a second signal
                # interrupted): the command's own message and status have been given
                sys.unraisablehook = no_news

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt as exc:  # while the options are parsed
            _interrupted_at_start(exc)
        except OSError as exc:  # --help or --version into a full or closed stdout
            _os_error_exit(exc)

    def invoke(self, ctx):
        # SIGTERM stops a command as Ctrl-C does (its clean-up runs), then exits 143; `train` stops at a step
        old = hook = None
        if threading.current_thread() is threading.main_thread():  # (a command may change them: restored)
            old = {signal.SIGINT: signal.getsignal(signal.SIGINT),
                   signal.SIGTERM: signal.signal(signal.SIGTERM, _terminate)}
            hook = sys.unraisablehook
            sys.unraisablehook = lambda unraisable: _redeliver(unraisable, hook)
        try:
            try:
                return super().invoke(ctx)
            except Exception as exc:
                # a library's callback that a signal's handler raised in (h5py's type conversions log, in Python)
                # can turn the interrupt into another exception
                interrupt = in_chain(exc, lambda e: isinstance(e, KeyboardInterrupt))
                if interrupt is None:
                    raise
                raise interrupt.with_traceback(None) from None
        except FastrnnError as exc:
            if not getattr(exc, "silent", False):  # silent: another process of an MPI job says it
                click.echo(f"fastrnn: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            # what the interrupted code held is freed on the way out; a finalizer failing then (an h5py object whose
            # operation the signal cut short) is no news to the user
            sys.unraisablehook = no_news
            click.echo("\nfastrnn: interrupted", err=True)
            sys.exit(EXIT_SIGNAL.get(getattr(exc, "signum", signal.SIGINT), 130))
        except MemoryError:
            click.echo("fastrnn: error: not enough memory for this (try a smaller model, batch or input)", err=True)
            sys.exit(1)
        except OSError as exc:  # a file that cannot be read or written, caught nowhere closer
            _os_error_exit(exc)
        except click.UsageError as exc:  # bad options: one line too, with where to look
            where = f"fastrnn {exc.ctx.info_name} --help" if exc.ctx and exc.ctx.parent else "fastrnn --help"
            message = " ".join(exc.format_message().split())
            click.echo(f"fastrnn: error: {message} (see {where})", err=True)
            sys.exit(exc.exit_code)
        finally:
            for s, handler in (old or {}).items():
                # the program's command that has said how it ended ignores further signals (train's
                # _stopped_by_signal): they stay ignored, or a second signal between here and main's end would
                # print a traceback
                if not (self.program and signal.getsignal(s) is signal.SIG_IGN):
                    signal.signal(s, handler)
            if hook is not None and sys.unraisablehook is not no_news:
                sys.unraisablehook = hook


def _os_error_exit(exc):
    if exc.errno == errno.EPIPE:  # the reader of stdout went away (`fastrnn sample ... | head`)
        _silence_stdout()
        sys.exit(141)
    where = f"{exc.filename}: " if exc.filename else ""
    click.echo(f"fastrnn: error: {where}{os_reason(exc)}", err=True)
    _silence_stdout()  # what is left in its buffer cannot be written either
    sys.exit(1)


def _silence_stdout():
    """After EPIPE: point stdout at /dev/null so that Python's final flush does not complain."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


@click.group(cls=FastrnnGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="fastrnn")
def main():
    """Train character-level RNN language models fast on the CPU.

    \b
    Typical use:
      fastrnn prepare input.txt --output corpus.h5
      fastrnn train corpus.h5 --output runs/my-run
      fastrnn sample runs/my-run --prime "ROMEO:" --length 500
    """


def _register():
    from fastrnn.cli import corpus, evaluate, export, plots, train

    for module in (corpus, train, evaluate, export, plots):
        for command in module.COMMANDS:
            main.add_command(command)


try:
    _register()
except KeyboardInterrupt as exc:
    _interrupted_at_start(exc)
