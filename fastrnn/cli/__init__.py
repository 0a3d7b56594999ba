"""The `fastrnn` command line: a click group of thin commands over library functions.

Only this package prints. Library code raises `fastrnn.errors.FastrnnError` subclasses; the group turns each
into a single line `fastrnn: error: ...` on stderr and a non-zero exit status, never a traceback.
"""

import sys

import click

from fastrnn import __version__
from fastrnn.errors import FastrnnError


class FastrnnGroup(click.Group):
    """A click group that reports user errors as one line on stderr."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FastrnnError as exc:
            click.echo(f"fastrnn: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except click.UsageError as exc:  # bad options: one line too, with where to look
            where = f"fastrnn {exc.ctx.info_name} --help" if exc.ctx and exc.ctx.parent else "fastrnn --help"
            message = " ".join(exc.format_message().split())
            click.echo(f"fastrnn: error: {message} (see {where})", err=True)
            sys.exit(exc.exit_code)


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


_register()
