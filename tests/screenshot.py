#!/usr/bin/env python3
"""Regenerate static/screenshot.png: the page over the demo session, in headless chromium.

    python tests/screenshot.py [--out static/screenshot.png] [--detail]

Builds a throwaway database with the same data as tests/test_page.py (the demo session, two
signals of another symbol, price bars under one trade), serves it with `sigsync.py serve` on a
free loopback port and photographs the page at 1400x900 (with --detail: that trade's detail).
"""

import argparse
import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from conftest import ROOT, Server  # noqa: E402
from test_page import CHROMIUM, _build, populate  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "static" / "screenshot.png"))
    parser.add_argument("--detail", action="store_true", help="open the trade with bars")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "demo.db"
        with_bars = _build(path, populate)
        server = Server(path).start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                            args=["--no-sandbox", "--disable-gpu",
                                                  "--disable-background-networking"])
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(server.url + "/" + (f"#open={with_bars}" if args.detail else ""))
                expect(page.locator("#signals-body tr").first).to_be_visible()
                expect(page.locator("#history-chart canvas").first).to_be_visible()
                if args.detail:
                    expect(page.locator("#trade-chart canvas").first).to_be_visible()
                page.evaluate("document.activeElement && document.activeElement.blur()")
                page.wait_for_timeout(300)            # let the charts finish their first paint
                out = pathlib.Path(args.out)
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out))
                browser.close()
        finally:
            server.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
