"""Headless Chromium screenshot of a study's report (Debian packages `chromium`; skipped cleanly without it).

    .venv/bin/python bench/report_screenshot.py runs/<study>/report/index.html docs/report.png [--height 2400]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def screenshot(page: Path, out: Path, width: int = 1200, height: int = 2400) -> Path:
    browser = chromium()
    if browser is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={out.resolve()}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args()
    if chromium() is None:
        print("skipped: no chromium on PATH (Debian: apt-get install chromium)")
        sys.exit(0)
    print(f"wrote {screenshot(args.page, args.out, height=args.height)}")


if __name__ == "__main__":
    main()
