"""click types for fastrnn's options: every value is a number a run can use."""

import math

import click


class Finite(click.FloatRange):
    """A float option that refuses NaN and the infinities (a usage error, exit 2), and values outside the given
    bounds, as click.FloatRange(min, max, min_open, max_open)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.min is None and self.max is None:
            self.name = "float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)

    def _describe_range(self):
        if self.min is None and self.max is None:
            return ""  # no bounds to show in --help
        return super()._describe_range()


SEED = click.IntRange(min=0)  # numpy's generators take seeds >= 0
