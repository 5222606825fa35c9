"""Open a run's report.html in headless Chromium: every plot must load and be visible.

    python scripts/check_report.py runs/main [--screenshot runs/main/report.png]

Chromium (`apt-get install chromium`) loads a copy of the page with a probe appended that
records, once the page has loaded, each image's decoded size and its size on the page; the
DOM Chromium dumps carries that record back. Exit 0 when every <img> decoded (natural size
above zero) and is laid out at a visible size, 1 when one is not (naming it), 2 on bad input
(no report, no Chromium). With --screenshot it also writes a full-width PNG of the page, for
a person to look at.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => {
    const r = i.getBoundingClientRect();
    return {alt: i.alt, natural: [i.naturalWidth, i.naturalHeight], shown: [r.width, r.height]};
  });
  const pre = document.createElement('pre');
  pre.id = 'report-probe';
  pre.textContent = JSON.stringify(imgs);
  document.body.appendChild(pre);
});
</script>"""

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    """The first Chromium-family browser on PATH."""
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def _chromium(browser: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def probe_images(report: Path, browser: str) -> list[dict]:
    """[{alt, natural: [w, h], shown: [w, h]}] of every image, as Chromium laid them out."""
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                        encoding="utf-8")
        out = _chromium(browser, "--dump-dom", page.as_uri())
    found = re.search(r'<pre id="report-probe">(.*?)</pre>', out.stdout, re.S)
    if not found:
        raise RuntimeError(f"Chromium did not run the probe (exit {out.returncode}): "
                           f"{out.stderr.strip()[-500:]}")
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def invisible(images: list[dict]) -> list[str]:
    """Names of the images that did not decode or take no room on the page."""
    return [i["alt"] or "(no alt)" for i in images
            if min(i["natural"]) <= 0 or min(i["shown"]) <= 1]


def screenshot(report: Path, browser: str, out: Path, width: int = 1400,
               height: int = 6000) -> None:
    """A PNG of the page (width x height window, taller than the page so all of it shows)."""
    done = _chromium(browser, f"--screenshot={out.resolve()}", f"--window-size={width},{height}",
                     report.resolve().as_uri())
    if not out.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot: {done.stderr.strip()[-500:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="Run directory holding report.html.")
    ap.add_argument("--screenshot", type=Path, help="Also write a PNG of the page here.")
    args = ap.parse_args(argv)
    report = args.run / "report.html"
    if not report.is_file():
        print(f"{report}: no report (run `personal report {args.run}` first)", file=sys.stderr)
        return 2
    browser = find_browser()
    if not browser:
        print("no Chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    images = probe_images(report, browser)
    bad = invisible(images)
    if args.screenshot:
        screenshot(report, browser, args.screenshot)
        print(f"wrote {args.screenshot}")
    if not images:
        print(f"{report}: no plots on the page")
    for i in images:
        print(f"{i['alt']}: {i['natural'][0]}x{i['natural'][1]} px, shown at "
              f"{i['shown'][0]:.0f}x{i['shown'][1]:.0f}")
    if bad:
        print(f"not visible: {', '.join(bad)}", file=sys.stderr)
        return 1
    print(f"{len(images)} plots, all visible")
    return 0


if __name__ == "__main__":
    sys.exit(main())
