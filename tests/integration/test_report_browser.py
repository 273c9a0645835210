"""report.html of a tiny real run, opened in headless Chromium over the DevTools protocol: the table and the
SVG charts are there and drawn, nothing is fetched, no script runs, no console errors; a full-page screenshot
is kept in tests/artifacts/. Also ``distill report`` on one run and on two."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import tiny_recipe
from distill.cli.main import main

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--remote-debugging-port=0", "--window-size=1280,900"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


class Chromium:
    """A headless Chromium driven through the DevTools protocol (one page, events buffered)."""

    def __init__(self, exe: str, tmp: Path, timeout: float = 30.0):
        websocket = pytest.importorskip("websocket",
                                        reason="websocket-client (the dev extra) is not installed")
        self.timeout = timeout
        profile = tmp / "chromium-profile"  # a fresh profile: no state from earlier runs
        shutil.rmtree(profile, ignore_errors=True)
        self.log = open(tmp / "chromium.log", "wb")  # noqa: SIM115 -- open for the browser's lifetime, closed in close()
        self.proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        try:
            port = self._wait_port(profile / "DevToolsActivePort")
            pages = self._wait_pages(port)
            self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout,
                                                  suppress_origin=True)
        except BaseException:
            self.close()
            raise
        self.next_id = 0
        self.events: list[dict] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")

    def _wait_port(self, path: Path) -> int:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}; see {self.log.name}")
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def _wait_pages(self, port: int) -> list[dict]:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as resp:
                    pages = [t for t in json.load(resp) if t.get("type") == "page"]
            except OSError:  # the port file can appear a moment before the server listens
                pages = []
            if pages:
                return pages
            time.sleep(0.1)
        raise TimeoutError("chromium opened no page")

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method:
                    return self.events.pop(i)
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(f"no {method} event")

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions and browser log errors seen since ``open``."""
        out = []
        for ev in self.events:
            method, p = ev.get("method"), ev.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                args = [a.get("value", a.get("description")) for a in p.get("args", [])]
                out.append(f"console.{p['type']}: {args}")
            elif method == "Runtime.exceptionThrown":
                out.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def requests(self) -> list[str]:
        return [ev["params"]["request"]["url"] for ev in self.events
                if ev.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path, width: int = 1280) -> None:
        """A full-page PNG: the viewport grows to the page's height for the capture."""
        self.call("Emulation.clearDeviceMetricsOverride")
        height = int(self.call("Page.getLayoutMetrics")["cssContentSize"]["height"])
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = chromium_path()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)")
    b = Chromium(exe, tmp_path_factory.mktemp("chromium"))
    yield b
    b.close()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_encoder, sentiment_csv):
    """A complete tiny run: fine-tuned teacher, store, distilled and no-KD students, report."""
    tmp = tmp_path_factory.mktemp("report_run")
    recipe = tiny_recipe(tmp, tiny_encoder, sentiment_csv,
                         teacher={"model": str(tiny_encoder), "finetune": {"epochs": 3, "learning_rate": 3e-3,
                                                                           "batch_size": 16}},
                         train={"epochs": 2})
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) == 0
    return tmp / "run"


PAGE_FACTS = """(() => {
  const charts = [...document.querySelectorAll('svg.chart')];
  return {
    title: document.title,
    verdict: document.querySelector('.verdict')?.textContent ?? '',
    charts: charts.length,
    drawn: charts.filter(s => s.getBoundingClientRect().width > 200 && s.getBoundingClientRect().height > 80
                              && s.querySelectorAll('circle, rect, polyline').length > 0).length,
    tableRows: [...document.querySelectorAll('table.models tbody tr')]
               .map(r => r.cells[0].textContent.trim()),
    confusion: document.querySelectorAll('table.cm').length,
    disagreements: document.querySelectorAll('table.disagreements tbody tr').length,
    recipe: document.querySelector('pre code')?.textContent ?? '',
    scripts: document.scripts.length,
    images: document.images.length,
    overflowX: document.documentElement.scrollWidth > window.innerWidth,
  };
})()"""


def test_run_writes_report_html_and_predictions(tiny_run):
    report = json.loads((tiny_run / "report.json").read_text())
    rows = [json.loads(line) for line in (tiny_run / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == report["data"]["test"]
    assert set(rows[0]) >= {"text", "label", "teacher", "student_kd", "student_no_kd"}
    assert abs(sum(rows[0]["student_kd"]["probs"]) - 1) < 1e-3
    analysis = report["analysis"]
    assert sum(map(sum, analysis["confusion"]["teacher"])) == len(rows)
    assert len(analysis["disagreements"]) <= 20
    gaps = [d["gap"] for d in analysis["disagreements"]]
    assert gaps == sorted(gaps, reverse=True)
    html = (tiny_run / "report.html").read_text()
    assert "<svg" in html and "student (distilled)" in html and report["store_key"] in html


def test_tensorboard_logs_land_in_the_run_folder(tiny_run):
    pytest.importorskip("tensorboard")
    for stage in ("teacher", "student", "student_no_kd"):  # outside the checkpoint folders, which are deleted
        assert list((tiny_run / "logs" / stage).glob("events.out.tfevents.*")), stage


def test_report_renders_in_chromium(browser, tiny_run):
    browser.open((tiny_run / "report.html").as_uri())
    facts = browser.evaluate(PAGE_FACTS)
    browser.screenshot(ARTIFACTS / "report.png")
    assert browser.problems() == []
    assert all(u.startswith("file:") for u in browser.requests()), browser.requests()
    assert facts["title"] == "distill report · run"
    assert "of the teacher's accuracy" in facts["verdict"]
    assert facts["tableRows"] == ["teacher", "student (distilled)", "student (no KD)"]
    # quality/latency, size, latency, a loss chart per student, validation accuracy
    assert facts["charts"] >= 6 and facts["drawn"] == facts["charts"]
    assert facts["confusion"] == 3 and facts["disagreements"] >= 1
    assert "losses:" in facts["recipe"]
    assert facts["scripts"] == 0 and not facts["overflowX"]


def test_hostile_text_stays_text_in_chromium(browser, tiny_run, tmp_path):
    report = json.loads((tiny_run / "report.json").read_text())
    evil = ('<script>console.error("pwned")</script>'
            '<img src="http://example.invalid/x.png" onerror="alert(1)">')
    report["analysis"]["disagreements"][0]["text"] = evil
    report["labels"] = report["analysis"]["labels"] = ["<b>neg</b>", "pos&"]
    report["recipe"]["output_dir"] = "</title><script>alert(2)</script>"
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert main(["report", str(tmp_path)]) == 0
    browser.open((tmp_path / "report.html").as_uri())
    facts = browser.evaluate(PAGE_FACTS)
    assert facts["scripts"] == 0 and facts["images"] == 0
    assert browser.problems() == []
    assert all(u.startswith("file:") for u in browser.requests())
    assert evil in browser.evaluate("document.querySelector('table.disagreements td.text').textContent")


def test_report_command_compares_runs(tiny_run, tmp_path, capsys):
    other = tmp_path / "seed2" / "run"
    other.mkdir(parents=True)
    report = json.loads((tiny_run / "report.json").read_text())
    report["models"]["student_kd"]["accuracy"] += 0.1
    report["recipe"]["train"]["seed"] = 2
    (other / "report.json").write_text(json.dumps(report))
    out = tmp_path / "cmp" / "compare.html"
    assert main(["report", str(tiny_run), str(other), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mean ± std" in text and "recipe fields that differ: train.seed" in text
    page = out.read_text()
    assert "2 runs" in page and "<svg" in page and "report.html" in page  # links to the run's own page
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    assert "no report.json" in capsys.readouterr().err
