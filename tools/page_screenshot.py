"""The README's picture of `fastrnn serve`'s page, made by headless Chromium (tools/chromium.py), not by hand:

    python -m tools.page_screenshot runs/tinyshakespeare/best.h5 --output docs/serve-page.png     (make page-screenshot)

The model is served on 127.0.0.1 (any free port) while Chromium opens a view from its URL alone: a sample of
--prime with --seed, coloured by the unit that tracks a property of text best (the ranking on the model's corpus,
or the sample itself), or by --unit. The URL is printed: open it against `fastrnn serve` to see the same view.
"""

import argparse
import sys
import threading
from urllib.parse import urlencode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run directory or checkpoint")
    parser.add_argument("--output", default="docs/serve-page.png")
    parser.add_argument("--prime", default="ROMEO:")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--length", type=int, default=400)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--unit", type=int, default=None, help="the unit to colour by (default: the ranking's best)")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args(argv)

    from fastrnn.errors import FastrnnError
    from fastrnn.neurons import Inspector
    from fastrnn.serve import Generator, make_server
    from tools.chromium import BrowserError, Chromium

    try:
        generator = Generator(args.model, max_length=max(10_000, args.length))
    except FastrnnError as exc:
        sys.exit(f"page_screenshot: {exc}")
    inspector = Inspector(generator.model, generator.vocab, generator.ckpt)
    query = {"prime": args.prime, "seed": args.seed, "length": args.length, "temperature": args.temperature}
    rank = "corpus" if generator.ckpt.state.corpus else "text"
    if args.unit is None:
        try:
            features = inspector.ranking({})["features"]
        except Exception:  # (the corpus is not there: rank on the sample the page shows)
            rank = "text"
            features = []
        # the best unit of the first of quotes, brackets, position in the line that a unit tracks well (as the
        # paper's pictures), else of any property
        tops = {f["name"]: f["units"][0] for f in features if f["units"]}
        classic = [tops[name] for name in ("quote", "bracket", "line_position")
                   if abs(tops.get(name, (0, 0))[1]) >= 0.5]
        args.unit = (classic or [max(tops.values(), key=lambda ur: abs(ur[1]), default=(0, 0))])[0][0]
    query["unit"] = args.unit
    query["rank"] = rank
    srv = make_server(generator, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/?{urlencode(query)}"
    try:
        with Chromium(width=args.width, height=args.height) as browser:
            browser.open(url)
            browser.wait_for("document.body.dataset.view === 'done'", timeout=120)
            if browser.evaluate("document.body.dataset.sample") != "done":
                sys.exit("page_screenshot: the page did not draw its sample: "
                         + str(browser.evaluate("document.getElementById('status').textContent")))
            browser.screenshot(args.output)
    except BrowserError as exc:
        sys.exit(f"page_screenshot: {exc}")
    finally:
        srv.shutdown()
        srv.server_close()
    print(f"{args.output}: the page at /?{urlencode(query)}")


if __name__ == "__main__":
    main()
