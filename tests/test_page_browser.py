"""`fastrnn serve`'s page in a real browser: headless Chromium (Debian's chromium, brought by `make browser`) opens
it from a server on 127.0.0.1, generates a sample, colours it by a unit, and renders a view from its URL alone."""

import os
import threading
from urllib.parse import urlencode

import pytest
from click.testing import CliRunner

from fastrnn.cli import main
from fastrnn.serve import Generator, make_server

from tools.chromium import BINARY, Chromium  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists(BINARY),
                                reason=f"no Chromium at {BINARY}: `make browser` installs it (as root, with apt-get)")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(small_corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("browser") / "run"
    r = run("train", small_corpus, "-o", d, "--model", "lstm", "--hidden-size", "24", "--seq-len", "10",
            "--batch-size", "4", "--max-steps", "30")
    assert r.exit_code == 0, r.output
    return d


@pytest.fixture(scope="module")
def served(trained):
    generator = Generator(str(trained), max_length=1000)
    srv = make_server(generator, "127.0.0.1", 0, timeout=10)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield "http://127.0.0.1:%d/" % srv.server_address[1], generator
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def base(served):
    return served[0]


@pytest.fixture(scope="module")
def browser():
    with Chromium(width=1100, height=1000) as b:
        yield b


def alone(trained, *options):
    r = run("sample", trained, *options)
    assert r.exit_code == 0, r.output
    return r.stdout[:-1]  # (its newline)


def text_of(browser, element):
    return browser.evaluate(f"document.getElementById('{element}').textContent")


def test_the_page_generates_a_sample_and_colours_it_by_a_unit(browser, base, trained, tmp_path):
    browser.open(base)
    browser.wait_for("document.body.dataset.ready === 'yes'")
    assert "lstm, 1 layer of 24 units" in text_of(browser, "model")
    browser.evaluate("(() => { const set = (id, v) => { const e = document.getElementById(id); e.value = v; "
                     "e.dispatchEvent(new Event('input')); }; set('prime', 'The '); set('length', '120'); "
                     "set('temperature', '0.7'); set('top_k', '5'); set('seed', '3'); })()")
    browser.click("#generate")
    browser.wait_for("document.body.dataset.sample === 'done'")
    sample = text_of(browser, "sample")
    assert sample == alone(trained, "--prime", "The ", "--length", "120", "--temperature", "0.7", "--top-k", "5",
                           "--seed", "3")
    assert browser.evaluate("document.getElementById('text').value") == sample
    # colour the sample by unit 7, picked from the list
    browser.evaluate("(() => { const u = document.getElementById('unit'); u.value = '7'; "
                     "u.dispatchEvent(new Event('change')); })()")
    browser.click("#show")
    browser.wait_for("document.body.dataset.neurons === 'done'")
    spans = browser.evaluate("Array.from(document.querySelectorAll('#colored span')).map(s => "
                             "[s.textContent, Number(s.dataset.a), getComputedStyle(s).backgroundColor])")
    assert "".join(s[0] for s in spans) == sample and browser.evaluate(
        "document.getElementById('colored').dataset.unit") == "7"
    assert len({s[2] for s in spans}) > 5  # characters coloured by the unit's activation, not one colour
    assert all((a < 0) == (int(bg.split("(")[1].split(",")[2].split(")")[0]) > int(bg.split("(")[1].split(",")[0]))
               for _, a, bg in spans if abs(a) > 0.05)  # negative blue, positive red
    # pick unit 12 by clicking its row of the heatmap
    height = browser.evaluate("Number(document.getElementById('heatmap').dataset.cellHeight)")
    browser.click("#heatmap", 3, 12 * height + height / 2)
    browser.wait_for("document.getElementById('colored').dataset.unit === '12'")
    # the ranking on this text: clicking a unit colours by it
    browser.click("#rank-text")
    browser.wait_for("document.body.dataset.ranking === 'done'")
    first = browser.evaluate("document.querySelector('#ranking button').dataset.unit")
    browser.click("#ranking button")
    browser.wait_for(f"document.getElementById('colored').dataset.unit === '{first}'")
    # the link reproduces the view
    link = browser.evaluate("document.getElementById('link').search")
    assert all(part in link for part in ("prime=The+", "seed=3", "length=120", f"unit={first}", "top_k=5"))
    shot = browser.screenshot(str(tmp_path / "page.png"))
    Image = pytest.importorskip("PIL.Image")
    with Image.open(shot) as im:
        pixels = im.convert("RGB")
        colours = pixels.getcolors(maxcolors=1 << 20)
        assert im.size[0] >= 1000 and im.size[1] > 900
    assert colours is not None and len(colours) > 200  # text, the coloured characters, the heatmap: not blank
    assert max(count for count, _ in colours) < 0.9 * pixels.size[0] * pixels.size[1]


def test_a_url_alone_renders_the_sample_of_fastrnn_sample_and_its_colours(browser, base, trained):
    browser.open(base + "?" + urlencode({"prime": "The cat", "seed": 4}))
    browser.wait_for("document.body.dataset.view === 'done'")
    assert browser.evaluate("document.body.dataset.sample") == "done"
    assert text_of(browser, "sample") == alone(trained, "--prime", "The cat", "--seed", "4")  # (length 500)
    browser.open(base + "?" + urlencode({"prime": "A dog", "seed": 9, "length": 80, "temperature": 0.5,
                                         "unit": 5}))
    browser.wait_for("document.body.dataset.view === 'done'")
    sample = text_of(browser, "sample")
    assert sample == alone(trained, "--prime", "A dog", "--seed", "9", "--length", "80", "--temperature", "0.5")
    assert browser.evaluate("document.body.dataset.neurons") == "done"
    assert text_of(browser, "colored") == sample
    assert browser.evaluate("document.getElementById('colored').dataset.unit") == "5"
    # a typed text in the URL is coloured without generating anything
    browser.open(base + "?" + urlencode({"text": "The cat sat.\nA dog ran.", "unit": 2, "state": "c"}))
    browser.wait_for("document.body.dataset.view === 'done'")
    assert text_of(browser, "colored") == "The cat sat.\nA dog ran." and text_of(browser, "sample") == ""
    assert browser.evaluate("document.getElementById('state').value") == "c"


def test_a_stopped_sample_and_a_bad_request_are_shown(browser, served, monkeypatch):
    base, generator = served
    real, go, runs = generator.backend, threading.Event(), []

    class Held:  # after its first run of characters, the batch waits (so the sample is still streaming)
        step = staticmethod(real.step)

        def advance_streams(self, *args):
            if runs:
                go.wait(30)
            runs.append(1)
            return real.advance_streams(*args)

    monkeypatch.setattr(generator, "backend", Held())
    try:
        browser.open(base + "?" + urlencode({"prime": "The", "seed": 1, "length": 1000}))
        browser.wait_for("document.body.dataset.sample === 'running' && "
                         "document.getElementById('sample').textContent.length > 3")
        browser.click("#stop")
        browser.wait_for("document.body.dataset.sample === 'stopped'")
        assert 3 < len(text_of(browser, "sample")) < 1003 and text_of(browser, "status") == "stopped"
    finally:
        go.set()
    monkeypatch.setattr(generator, "backend", real)
    browser.open(base + "?" + urlencode({"prime": "Zebra\u2603", "seed": 1}))
    browser.wait_for("document.body.dataset.view === 'done'")
    assert browser.evaluate("document.body.dataset.sample") == "error"
    assert "vocabulary" in text_of(browser, "status")
