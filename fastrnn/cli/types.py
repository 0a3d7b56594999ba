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


class Duration(Finite):
    """Seconds, as a number or with a unit: 90, 90s, 10m, 2h, 1h30m (fastrnn.config.parse_duration)."""

    name = "duration"

    def __init__(self):
        super().__init__(min=0)
        self.name = "duration"

    def convert(self, value, param, ctx):
        from fastrnn.config import parse_duration
        from fastrnn.errors import ConfigError

        if isinstance(value, str):
            try:
                float(value)  # plain seconds: Finite's checks and messages
            except ValueError:
                try:
                    value = parse_duration(value)
                except ConfigError:
                    self.fail(f"{value!r} is not a duration: give seconds, or a number with s, m or h (90s, 10m, "
                              f"2h, 1h30m).", param, ctx)
        return super().convert(value, param, ctx)


class EvalTokens(click.ParamType):
    """--eval-tokens: auto, all, or a number of tokens >= 1 (0: all, as before `all` existed)."""

    name = "auto|all|N"

    def convert(self, value, param, ctx):
        from fastrnn.config import parse_eval_tokens
        from fastrnn.errors import ConfigError

        try:
            return parse_eval_tokens(value)
        except ConfigError:
            self.fail(f"{value!r} is not auto, all or a number of tokens.", param, ctx)


class ReadAsIntRange(click.IntRange):
    """An integer option with another spelling of some values (`parse`: --keep-checkpoints 0 reads as 1), then
    checked against its range as click.IntRange."""

    def __init__(self, parse, **bounds):
        super().__init__(**bounds)
        self.parse = parse

    def convert(self, value, param, ctx):
        return super().convert(self.parse(click.INT.convert(value, param, ctx)), param, ctx)


SEED = click.IntRange(min=0)  # numpy's generators take seeds >= 0
