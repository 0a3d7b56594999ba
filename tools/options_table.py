"""README's table of training options, made from their declarations (TrainConfig's fields, fastrnn.options).

    python -m tools.options_table            rewrite the table between its markers in README.md
    python -m tools.options_table --check    exit 1 if README.md's table is not the one the declarations give

tests/test_options.py checks that README.md's table is current.
"""

import os
import re
import sys

from fastrnn.config import OPTIONS
from fastrnn.options import describe_values, flag, help_of, switches

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
BEGIN = "<!-- options table: made by `python -m tools.options_table` from fastrnn/config.py; edit there -->"
END = "<!-- end of the options table -->"
RESUME = {"fixed": "no", "free": "yes", "allow": "with `--allow-change`"}


def _markdown(text):
    """Plain help text as a table cell: flags and names with <placeholders> in backticks."""
    text = re.sub(r"(?<![\w`-])(--[a-z][a-z0-9-]*)", r"`\1`", text)
    return re.sub(r"(?<!`)([\w.-]*<\w+>[\w.-]*)", r"`\1`", text).replace("|", "\\|")


def _default(name, opt):
    if opt.default_text:
        return opt.default_text
    if opt.type is bool:
        on, _, off = switches(name, opt).partition("/")
        return f"`{on if opt.default else off}`"
    if isinstance(opt.default, float):
        return f"{opt.default:g}"
    return str(opt.default)


def _option(name, opt):
    return f"`{switches(name, opt) if opt.type is bool else flag(name)}`"


def table():
    """The table's lines: one row per option, in TrainConfig's order."""
    rows = ["| option | default | values | may change on `--resume` | meaning |", "| --- | --- | --- | --- | --- |"]
    for name, opt in OPTIONS.items():
        cells = [_option(name, opt), _default(name, opt), _markdown(describe_values(opt)), RESUME[opt.resume],
                 _markdown(help_of(opt))]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def render(text):
    """`text` (README.md) with the lines between the markers replaced by the table."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"README.md has no options table markers ({BEGIN} ... {END})")
    return text[:start + len(BEGIN)] + "\n" + "\n".join(table()) + "\n" + text[end:]


def main(argv):
    with open(README, encoding="utf-8") as f:
        text = f.read()
    new = render(text)
    if "--check" in argv:
        if new != text:
            print("README.md's options table is out of date: run python -m tools.options_table", file=sys.stderr)
            return 1
        return 0
    if new != text:
        with open(README, "w", encoding="utf-8") as f:
            f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
