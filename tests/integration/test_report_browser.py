"""report.html in a real browser: headless Chromium renders the page with no console message, the
eval table it shows holds results.json's numbers, and a screenshot shows a full page.

Needs `chromium` (Debian: `apt-get install -y chromium`, or `make browser`). Without it this test
FAILS and says how to install it; set TUNESMITH_NO_BROWSER=1 to skip it on purpose.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tunesmith.report import write_report

pytestmark = pytest.mark.integration

RESULTS = {
    "n": 4,
    "metrics": ["json_exact", "json_valid", "exact"],
    "base": {"json_exact": 0.0, "json_valid": 0.25, "exact": 0.0, "loss": 3.21, "perplexity": 24.78},
    "tuned": {"json_exact": 0.75, "json_valid": 1.0, "exact": 0.5, "loss": 0.43, "perplexity": 1.537},
}
SAMPLES = [
    {
        "source": f"test.jsonl:{i}",
        "prompt": f"turn on lamp {i} <b>now</b>",
        "reference": '{"intent": "on"}',
        "base": "Sure! <script>console.error('injected')</script>",
        "tuned": '{"intent": "on"}',
        "base_scores": {"json_exact": 0.0, "json_valid": 0.0, "exact": 0.0},
        "tuned_scores": {"json_exact": 1.0, "json_valid": 1.0, "exact": float(i % 2)},
    }
    for i in range(4)
]


def chromium() -> str:
    found = os.environ.get("TUNESMITH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("TUNESMITH_NO_BROWSER") == "1":
        pytest.skip("TUNESMITH_NO_BROWSER=1: browser check of report.html skipped on request")
    pytest.fail(
        "chromium not found: install it (Debian/Ubuntu: `apt-get install -y chromium`, or `make browser`), "
        "point TUNESMITH_CHROMIUM at a Chromium/Chrome binary, or set TUNESMITH_NO_BROWSER=1 to skip "
        "this test explicitly",
        pytrace=False,
    )


def headless(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        binary,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


class EvalCells(HTMLParser):
    """{metric: {column: (shown text, data-value)}} from the rendered eval table."""

    def __init__(self):
        super().__init__()
        self.cells: dict[str, dict[str, tuple[str, str]]] = {}
        self.metric = self.column = self.value = None
        self.text = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-metric" in attrs:
            self.metric = attrs["data-metric"]
            self.cells[self.metric] = {}
        elif tag == "td" and self.metric and "data-col" in attrs:
            self.column, self.value, self.text = attrs["data-col"], attrs.get("data-value"), ""

    def handle_data(self, data):
        if self.column:
            self.text += data

    def handle_endtag(self, tag):
        if tag == "td" and self.column:
            self.cells[self.metric][self.column] = (self.text.strip(), self.value)
            self.column = None
        elif tag == "tr":
            self.metric = None


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("browser-run")
    metrics = [
        {
            "step": s,
            "epoch": s / 8,
            "loss": 2.5 * 0.85**s,
            "lr": 1e-3,
            "tokens_seen": 400 * s,
            "tokens_per_s": 800.0,
            "elapsed_s": s * 0.5,
            "memory_mb": 1000.0,
        }
        for s in range(1, 25)
    ]
    metrics += [{"step": s, "epoch": s / 8, "eval_loss": 1.0 - 0.01 * s} for s in (8, 16, 24)]
    metrics.sort(key=lambda r: (r["step"], "eval_loss" in r))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (run / "config.yaml").write_text("name: browser\nmethod: lora\nmodel:\n  name: tiny\n")
    (run / "data_report.json").write_text(
        json.dumps(
            {
                "splits": {
                    "train": {
                        "rows": 8,
                        "tokens": 800,
                        "trainable_tokens": 300,
                        "truncated": 0,
                        "missing_end_of_turn": 0,
                        "trainable_share": 0.375,
                    },
                    "test": {"rows": 4},
                }
            }
        )
    )
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(json.dumps(RESULTS))
    (run / "eval" / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in SAMPLES))
    return write_report(run)


def test_rendered_eval_table_matches_results_json_and_console_is_silent(report, tmp_path):
    done = headless(chromium(), tmp_path / "profile", "--dump-dom", report.as_uri())
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], (
        "the page logged to the console (it has no script, so any message is an error):\n" + "\n".join(console)
    )
    parser = EvalCells()
    parser.feed(done.stdout)
    cells = parser.cells
    assert list(cells) == ["json_exact", "json_valid", "exact", "loss", "perplexity"]
    for metric, row in cells.items():
        base, tuned = RESULTS["base"][metric], RESULTS["tuned"][metric]
        for column, expected in (("base", base), ("tuned", tuned), ("difference", tuned - base)):
            shown, exact = row[column]
            assert float(exact) == pytest.approx(expected, abs=1e-12), (metric, column, exact)
            assert float(shown.replace(",", "")) == pytest.approx(expected, abs=5e-5), (metric, column, shown)
    assert "<script>console.error" not in done.stdout  # the sample's markup stayed text
    assert "&lt;script&gt;console.error('injected')&lt;/script&gt;" in done.stdout


def test_screenshot_shows_a_full_page(report, tmp_path):
    shot = tmp_path / "report.png"
    headless(
        chromium(),
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        "--hide-scrollbars",
        report.as_uri(),
    )
    assert shot.is_file()
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (1280, 2000)
    assert shot.stat().st_size > 50_000, f"screenshot only {shot.stat().st_size} bytes: a blank page?"
    from PIL import Image

    colors = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is None or len(colors) > 200, "screenshot has almost no colors: the page did not render"
