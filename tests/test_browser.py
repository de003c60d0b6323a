"""End-to-end test of the Streamlit app in a real browser (Playwright driving Debian's chromium).

The AppTest tests (tests/test_app_*.py) run page scripts without a front end; this module checks what only
a served app in a browser shows. A module fixture records a small real run (tiny model, random scorer,
attention every 5 steps) and a fast replay of it with `allocator.cooldown_steps=4` into a temporary run
root, measures both with `python -m telemetry metrics`, and starts `streamlit run app/streamlit_app.py` on
a free port pointed at that root (stopped, with any UMAP worker it started, at the end). Then each page
(runs, gists, timeline, step, text, metrics, knobs, compare, live, record), opened in a fresh tab by its URL
with `?run=` (and `run2=`), must finish its script run with its title shown and no exception box, no
error alert, no dialog (such as "Page not found"), no browser console error and no uncaught page error;
a full-page screenshot of each goes to test-artifacts/browser/<page>.png. On top of that:
- Runs: both runs are listed, and `run` / `run2` select them;
- Timeline: the step scrubber moved by keyboard (ArrowLeft, Home, End) moves the URL's `step`, the
  slider's displayed value and the "Step N" heading;
- Step inspector: at a step without attention, "Jump to step N" lands on an attention step and draws it;
- Text: every full-detail and gist span shown is the input's own text at its tokens; "folded" hides plain gists;
- Step inspector's probe: "Probe this step" (tiny model, in the background) ends in its scatter and table;
- Metrics and Compare: the numbers shown are the telemetry CLI's;
- Knobs lab: typing a knob re-plans, the re-planned metrics equal the saved replay's (recorded side
  unchanged), and "Save as replay run" writes a run whose "Open it on the Runs page" link opens it;
- Gist map: the background UMAP appears on its own (the page polls for it);
- Record -> Live: a recording started on the Record page is followed on the Live page from the moment of
  Start (waiting for its folder, following, finished), with no error at any moment;
- the sidebar keeps the run and step from page to page, and `/runs` opens the Runs page;
- Timeline playback keeps to the chosen speed (10 steps/s); a click on a heatmap row, or on a Metrics
  line, selects its step;
- exports: each page's first CSV and Parquet download and decode to the same rows, also after a rerun.
Skipped, with the reason, when /usr/bin/chromium is missing (Playwright cannot download browsers here).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "sample.txt"
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]  # fmt: skip
VIEWPORT = {"width": 1400, "height": 1000}
REC, REP = "samples/rec", "samples/rep"  # run references as the URL carries them (<root folder>/<run>)
# The shared step scrubber's thumb (st.slider "step"; the Timeline's zoom sliders are "steps" and "tokens").
THUMB = 'input[type="range"][aria-label="step"]'
SCRUBBER = f'[data-testid="stSlider"] {THUMB}'
COOLDOWN = 4  # the replay's (and the Knobs lab's) allocator.cooldown_steps; the recording has 0

# The random scorer thrashes, and without cooldown or margin the hysteresis knobs change a lot
# (as in tests/lab_fixtures.py); no NLL and no invariant checks keep the recording to seconds.
RECORD_SETS = ("wc.w_max=400", "allocator.cooldown_steps=0", "allocator.hysteresis_margin=0",
               "session.max_tokens=1600", "session.attention_every=5", "session.compute_nll=false",
               "session.check_invariants=false")  # fmt: skip

# url path -> (what goes after it, the page title). The Runs page is the default page, served at the root;
# `/runs` opens it too (a hidden alias, tested on its own).
PAGES = {
    "runs": (f"?run={REC}&run2={REP}", "Runs"),
    "timeline": (f"timeline?run={REC}", "Timeline"),
    "step": (f"step?run={REC}&step=22", "Step inspector"),
    "text": (f"text?run={REC}&step=22", "Text"),
    "metrics": (f"metrics?run={REC}", "Metrics"),
    "knobs": (f"knobs?run={REC}", "Knobs lab"),
    "compare": (f"compare?run={REC}&run2={REP}", "Compare"),
    "gists": (f"gists?run={REC}", "Gist map"),
    "live": (f"live?run={REC}", "Live"),
    "sweep": ("sweep?sweep=samples/grid", "Sweep"),
    "record": ("record", "Record"),
}

# Opened on a page's URL (/timeline?...), Streamlit's front end first looks for the server under that path
# (/timeline/_stcore/health, /timeline/_stcore/host-config), gets 404 and falls back to the root: known,
# harmless noise (streamlit/streamlit#7074). The only console errors ignored.
BENIGN_404 = re.compile(r"/[^/]+/_stcore/(health|host-config)")


# Quick reruns (keyboard scrubbing, playing) replace a step's download files; Streamlit deletes a replaced
# download file two runs later, and the front end may still be fetching the one it showed before: a 404
# on a superseded file, logged twice. The files on the page work (test_exports_download_and_decode...).
SUPERSEDED_DOWNLOAD = re.compile(r"/media/[0-9a-f]+\.(csv|parquet)")


def _benign(msg) -> bool:
    path = urlparse(msg.location.get("url") or "").path
    if msg.text == "Client Error: Download Button source error - 404":
        return True
    return bool(BENIGN_404.fullmatch(path) or SUPERSEDED_DOWNLOAD.fullmatch(path))


pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} missing (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200 and r.read().strip() == b"ok"
    except OSError:
        return False


def _stop_umap_workers(runs_dir: Path) -> None:
    """End the background UMAP workers the Gist map page started (own sessions: they outlive the server)."""
    for lock in runs_dir.rglob("*.running"):
        try:
            pid = int(lock.read_text())
            if "app.projection" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass  # finished already (no such process), or a lock being written


def _cli(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _output(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, f"{proc.args}:\n{err[-2000:]}"
    return out


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app's base URL, served from a temporary run root holding `rec` and its replay `rep`, with both runs'
    headline metrics as the telemetry CLI measures them (what the pages must show)."""
    tmp = tmp_path_factory.mktemp("browser")
    samples, mine = tmp / "samples", tmp / "mine"
    samples.mkdir()
    mine.mkdir()
    env = {**os.environ, "MCS_SAMPLE_RUNS": str(samples), "MCS_RUNS_DIR": str(mine), "PYTHONUNBUFFERED": "1",
           # One thread per process: torch's one per core thrashes a busy 2-core machine (the tiny recording
           # took 33 s instead of 10 s there), and the browser, the server and UMAP share those cores.
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip
    sets = [a for s in RECORD_SETS for a in ("--set", s)]
    port = _free_port()
    log = open(tmp / "server.log", "w")  # closed in teardown
    procs = []
    try:
        # The server starts while the run records: both take seconds, and no page is opened before both are done.
        procs.append(rec := _cli("engine", "record", "--quiet", "--model", "tiny", "--input", str(SAMPLE),
                                 "--out", str(samples / "rec"), "--scorer", "random", *sets, env=env))  # fmt: skip
        serve = [sys.executable, "-m", "streamlit", "run", "app/streamlit_app.py", "--server.port", str(port),
                 "--server.headless", "true", "--server.address", "127.0.0.1"]  # fmt: skip
        procs.append(server := subprocess.Popen(serve, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True))  # fmt: skip
        _output(rec)
        procs.append(replay := _cli("engine", "replay", str(samples / "rec"), "--out", str(samples / "rep"),
                                    "--set", f"allocator.cooldown_steps={COOLDOWN}", env=env))  # fmt: skip
        procs.append(m_rec := _cli("telemetry", "metrics", str(samples / "rec"), env=env))
        grid = ("--grid", "allocator.cooldown_steps=0,4", "--grid", "allocator.hysteresis_margin=0,0.2")
        procs.append(swept := _cli("engine", "sweep", "--runs", str(samples / "rec"), *grid, "--out",
                                   str(samples / "_sweeps" / "grid"), "--ray", "none", "--quiet", env=env))  # fmt: skip
        _output(replay)
        procs.append(m_rep := _cli("telemetry", "metrics", str(samples / "rep"), env=env))
        metrics = {REC: json.loads(_output(m_rec)), REP: json.loads(_output(m_rep))}
        _output(swept)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while not _healthy(f"{base}/_stcore/health"):
            assert server.poll() is None, "streamlit exited:\n" + (tmp / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "streamlit not healthy in 60 s:\n" + (tmp / "server.log").read_text()
            time.sleep(0.25)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        yield {"base": base, "samples": samples, "mine": mine, "metrics": metrics}
    finally:
        for p in procs:  # no process of ours outlives the module
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        log.close()
        _stop_umap_workers(mine)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "server.log").write_text((tmp / "server.log").read_text())


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def context(browser):
    # One context for the module: its HTTP cache keeps the front end's scripts between tabs.
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.set_default_timeout(60_000)
    yield ctx
    ctx.close()


def watch(pg):
    """Collect the tab's console errors and uncaught page errors in `pg.errors`."""
    pg.errors = []

    def on_console(msg) -> None:
        if msg.type == "error" and not _benign(msg):
            pg.errors.append(f"console: {msg.text} ({msg.location.get('url')})")

    pg.on("console", on_console)
    pg.on("pageerror", lambda e: pg.errors.append(f"pageerror: {e}"))
    return pg


@pytest.fixture
def page(context):
    """A fresh browser tab: its own Streamlit session."""
    pg = watch(context.new_page())
    yield pg
    pg.close()


def visit(page, app: dict, name: str) -> None:
    """Open page `name` by its URL, wait for its run to finish, and check it came out clean."""
    target, title = PAGES[name]
    page.goto(f"{app['base']}/{target}")
    settle(page)
    assert_clean(page, title)


def settle(page) -> None:
    """Wait until the app's script run has finished (the front end marks it on stApp), then let charts mount."""
    page.wait_for_selector(
        '[data-testid="stApp"][data-test-script-state="notRunning"][data-test-connection-state="CONNECTED"]',
        state="attached",
    )
    page.wait_for_function(
        "() => ![...document.querySelectorAll('[data-testid=stStatusWidget]')].some(e => /Running/.test(e.innerText))"
    )
    # Deltas applied after the run's end message (charts, data grids, export buttons) still mount, for
    # longer on a loaded machine: wait until the page's elements stop changing for 300 ms (at most 5 s).
    page.evaluate("() => { window.__mcsSettle = null; }")
    page.wait_for_function(
        """() => {
            const n = document.querySelectorAll('[data-testid="stMain"] *').length, now = performance.now();
            const w = window.__mcsSettle || (window.__mcsSettle = {n: -1, since: now, start: now});
            if (n !== w.n) { w.n = n; w.since = now; }
            return now - w.since >= 300 || now - w.start >= 5000;
        }""",
        polling=100,
    )


def wait_drawn(page, plot, traces: int = 1) -> None:
    """Wait until plotly has drawn `traces` traces of `plot` (settle's pause does not cover a loaded machine)."""
    page.wait_for_function(
        "([gd, n]) => !!gd._fullData && gd._fullData.length >= n", arg=[plot.element_handle(), traces]
    )


def trace_point(page, plot, trace: int = 0, index: int = 0) -> tuple[float, float]:
    """Where point `index` of trace `trace` is on screen, from plotly's own axes (a WebGL scatter has no DOM
    points), once that trace is drawn."""
    wait_drawn(page, plot, trace + 1)
    return plot.evaluate(
        """(gd, [k, i]) => {
            const t = gd._fullData[k], L = gd._fullLayout, r = gd.getBoundingClientRect();
            return [r.left + L.xaxis._offset + L.xaxis.l2p(t.x[i]), r.top + L.yaxis._offset + L.yaxis.l2p(t.y[i])];
        }""",
        [trace, index],
    )


def assert_clean(page, title: str) -> None:
    assert page.locator("h1").first.inner_text().strip() == title
    exc = page.locator('[data-testid="stException"]')
    assert exc.count() == 0, exc.all_inner_texts()
    err = page.locator('[data-testid="stAlertContentError"]')
    assert err.count() == 0, err.all_inner_texts()
    dialogs = page.get_by_role("dialog")
    assert dialogs.count() == 0, dialogs.all_inner_texts()
    assert page.errors == []


def screenshot(page, name: str) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside stMain, so the viewport is made that tall first."""
    h = page.evaluate("() => (document.querySelector('[data-testid=stMain]') || document.body).scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], min(int(h), 8000))})
    page.wait_for_timeout(300)  # plotly charts re-lay out on resize
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    page.set_viewport_size(VIEWPORT)


def url_param(page, name: str) -> str | None:
    return parse_qs(urlparse(page.url).query).get(name, [None])[0]


def wait_url_param(page, name: str, value: str) -> None:
    # Streamlit rewrites the URL with the history API (no navigation event): poll location itself.
    page.wait_for_function("([k, v]) => new URLSearchParams(location.search).get(k) === v", arg=[name, value])


def grid_rows(page, first_column: str) -> list[list[str]]:
    """The body rows of the st.dataframe whose first column is `first_column`, as cell texts.

    st.dataframe draws on a canvas; its grid also keeps an accessible table (role=row, gridcell) of the
    visible rows with the raw values, which is what is read here.
    """
    js = """h => {
        for (const df of document.querySelectorAll('[data-testid=stDataFrame]')) {
            const rows = [...df.querySelectorAll('[role=row]')].map(r => [...r.children].map(c => c.innerText.trim()));
            if (rows.length > 1 && rows[0][0] === h) return rows.slice(1);
        }
        return null;
    }"""
    page.wait_for_function(js, arg=first_column)
    return page.evaluate(js, first_column)


def metric_table(page) -> dict[str, list[str]]:
    """A metrics st.dataframe (first column `metric`) as {metric: other cells}."""
    return {r[0]: r[1:] for r in grid_rows(page, "metric")}


def selected(page, label: str) -> str:
    """The value shown by the st.selectbox labelled `label`."""
    return page.locator(f'[data-testid="stSelectbox"] input[role="combobox"][aria-label="{label}"]').input_value()


def finish(page, name: str) -> None:
    screenshot(page, name)
    assert page.errors == []  # late ones too (charts mounting, the resize)


def test_runs_page(app, page):
    visit(page, app, "runs")
    refs = [row[0] for row in grid_rows(page, "run")]
    assert sorted(refs) == [REC, REP]
    assert selected(page, "open run") == REC
    assert selected(page, "compare with") == REP
    finish(page, "runs")


def test_gist_map_page(app, page):
    # Early on purpose: the first visit starts the background UMAP, which the last test waits for.
    visit(page, app, "gists")
    assert page.locator('[data-testid="stPlotlyChart"]').count() >= 1  # PCA, drawn at once
    finish(page, "gists")


def test_gist_map_click_opens_the_timeline_at_the_gists_step(app, page):
    visit(page, app, "gists")
    plot = page.locator(".js-plotly-plot").first
    plot.wait_for()
    x, y = trace_point(page, plot)  # the first point
    page.mouse.click(x, y)
    page.wait_for_url(re.compile(r"/timeline\?"))
    settle(page)
    assert_clean(page, "Timeline")
    assert url_param(page, "run") == REC and url_param(page, "step") is not None
    assert page.get_by_role("heading", name=f"Step {url_param(page, 'step')}", exact=True).count() == 1


def test_timeline_page_scrubber(app, page):
    visit(page, app, "timeline")
    thumb = page.locator(SCRUBBER)
    last = int(thumb.get_attribute("max"))
    assert url_param(page, "step") == str(last)  # no step in the URL: the last one, written back to the URL
    shown = (
        page.locator('[data-testid="stSlider"]')
        .filter(has=page.locator(THUMB))
        .locator('[data-testid="stSliderThumbValue"]')
    )
    for key, want in (("ArrowLeft", last - 1), ("Home", 0), ("End", last)):
        thumb.focus()
        page.keyboard.press(key)
        wait_url_param(page, "step", str(want))
        settle(page)
        assert shown.inner_text().strip() == str(want)
        assert page.get_by_role("heading", name=f"Step {want}", exact=True).count() == 1
    # Five quick presses (150 ms apart, faster than a rerun): none lost, and URL, slider and heading agree.
    thumb.focus()
    page.keyboard.press("Home")
    wait_url_param(page, "step", "0")
    settle(page)
    for _ in range(5):
        page.keyboard.press("ArrowRight")
        page.wait_for_timeout(150)
    wait_url_param(page, "step", "5")
    settle(page)
    page.wait_for_timeout(1000)  # a late run must not move anything back
    assert url_param(page, "step") == "5" and shown.inner_text().strip() == "5"
    assert page.get_by_role("heading", name="Step 5", exact=True).count() == 1
    assert_clean(page, "Timeline")
    finish(page, "timeline")


def test_a_click_on_the_timeline_selects_that_rows_step(app, page):
    visit(page, app, "timeline")  # opens at the last step
    last = int(page.locator(SCRUBBER).get_attribute("max"))
    wait_url_param(page, "step", str(last))
    box = page.locator('[data-testid="stPlotlyChart"]').first.locator(".nsewdrag").first.bounding_box()
    # the row a third of the way down (steps run down the page), well inside the plot
    page.mouse.click(box["x"] + box["width"] * 0.4, box["y"] + box["height"] / 3)
    page.wait_for_function("n => Number(new URLSearchParams(location.search).get('step')) < n", arg=last)
    settle(page)
    step = int(url_param(page, "step"))
    assert abs(step - (last + 1) / 3) <= max(2, last * 0.05), (step, last)  # the clicked row, give or take a bin
    assert page.locator(SCRUBBER).get_attribute("value") == str(step)
    assert page.get_by_role("heading", name=f"Step {step}").count() == 1
    # The decisions widget's filters were made at another step: all picked there is all picked here.
    summary = page.get_by_text(re.compile(r"^\d+ candidates, \d+ applied")).inner_text()
    n, impossible = int(summary.split()[0]), int((re.search(r"(\d+) impossible", summary) or [0, 0])[1])
    if n > impossible:
        assert len(grid_rows(page, "iteration")) >= 1, summary
    page.locator(SCRUBBER).focus()  # the scrubber still moves the step afterwards (the click is not re-applied)
    page.keyboard.press("ArrowRight")
    wait_url_param(page, "step", str(step + 1))
    settle(page)
    assert url_param(page, "step") == str(step + 1)
    assert_clean(page, "Timeline")


@pytest.mark.parametrize("name", ["compare", "knobs"])
def test_a_click_on_a_compare_or_knobs_lab_heatmap_selects_that_rows_step(app, page, name):
    visit(page, app, name)
    last = int(page.locator(SCRUBBER).get_attribute("max"))
    plot = page.locator('[data-testid="stPlotlyChart"]').first
    plot.scroll_into_view_if_needed()  # the Knobs lab's heatmaps sit below its knobs
    box = plot.locator(".nsewdrag").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.4, box["y"] + box["height"] / 3)
    page.wait_for_function("n => Number(new URLSearchParams(location.search).get('step') ?? n) < n", arg=last)
    settle(page)
    step = int(url_param(page, "step"))
    assert abs(step - (last + 1) / 3) <= max(2, last * 0.05), (step, last)
    assert page.locator(SCRUBBER).get_attribute("value") == str(step)
    assert_clean(page, PAGES[name][1])


def test_timeline_plays_at_the_chosen_speed(app, page):
    """Play at 10 steps/s from step 0 (Play at the last step, where the page opens, starts there): the
    step advances at about that speed however long a page rerun takes, and stops at the last step."""
    visit(page, app, "timeline")
    last = int(page.locator(SCRUBBER).get_attribute("max"))
    page.get_by_role("button", name="Play").click()
    wait_url_param(page, "step", "0")
    t0 = time.monotonic()
    moving = "n => Number(new URLSearchParams(location.search).get('step')) >= n"
    page.wait_for_function(moving, arg=1)
    t1, s1 = time.monotonic(), int(url_param(page, "step"))
    page.wait_for_function(moving, arg=40, polling=50)
    t2, s2 = time.monotonic(), int(url_param(page, "step"))
    rate = (s2 - s1) / (t2 - t1)
    print(f"timeline playback at speed 10: first move after {t1 - t0:.2f} s, then {rate:.1f} steps/s")
    assert rate >= 8, rate  # 10 asked; the old player managed 0.4
    wait_url_param(page, "step", str(last))
    page.get_by_role("button", name="Play").wait_for()  # stopped at the end: the button reads Play again
    settle(page)
    assert_clean(page, "Timeline")


def test_step_inspector_page_jumps_to_attention(app, page):
    visit(page, app, "step")  # step 22: attention was recorded every 5 steps
    assert page.get_by_text("No attention recorded at step 22").count() == 1
    page.get_by_role("button", name="Jump to step 20").click()
    wait_url_param(page, "step", "20")
    settle(page)
    assert page.get_by_text("No attention recorded").count() == 0
    assert page.locator(SCRUBBER).get_attribute("value") == "20"
    assert_clean(page, "Step inspector")
    finish(page, "step")


def test_text_page_shows_the_document_in_the_wc(app, page):
    """Every full-detail span on the Text page is the input's own text at its tokens (the tiny model's
    tokens are bytes); gists fold away on request, and the spans shown then are the detail ones."""
    visit(page, app, "text")
    page.get_by_text("whole text", exact=True).click()
    settle(page)
    spans_js = """() => [...document.querySelectorAll('span[title]')]
        .filter(s => /tokens \\d+-\\d+, score/.test(s.title)).map(s => [s.title, s.innerText])"""
    spans = page.evaluate(spans_js)
    raw = SAMPLE.read_bytes()
    detail = 0
    for title, text in spans:
        start, end = map(int, re.search(r"tokens (\d+)-(\d+)", title).groups())
        text = re.sub(r"^[▲▼✕] \w+ ", "", text)  # an edited entry's badge
        assert text == raw[start:end].decode(), title
        detail += title.startswith("L0")
    assert detail and len(spans) > detail  # full detail and gists, each its own text
    screenshot(page, "text")
    page.get_by_text("folded", exact=True).click()
    settle(page)
    folded = page.evaluate(spans_js)
    assert page.get_by_text(re.compile(r"⋯ \d+ gists?, tokens")).count() >= 1
    assert len(folded) < len(spans) and all(t.startswith("L0") or "expand" in t or "collapse" in t for t, _ in folded)
    assert_clean(page, "Text")


def test_step_inspector_probes_a_step(app, page):
    """'Probe this step' runs the probe in the background (tiny model) and the page shows its result
    when it is done, by itself (it polls)."""
    visit(page, app, "step")
    page.get_by_role("button", name="Probe this step").click()
    page.get_by_text("Scorer's raw score against the true utility").wait_for(timeout=180_000)
    settle(page)
    assert page.get_by_role("button", name="Probe again").count() == 1
    assert page.get_by_text(re.compile(r"^16 of \d+ editable entries probed")).count() == 1  # the default top-k
    assert grid_rows(page, "node")[0][0].startswith("L")  # the table, its nodes labelled
    assert_clean(page, "Step inspector")
    finish(page, "step-probe")


def test_step_inspector_computes_the_attention_by_head(app, page):
    visit(page, app, "step")
    page.get_by_role("button", name="Compute the attention by head").click()
    page.locator('[data-testid="stSelectbox"] input[aria-label="layer"]').wait_for(timeout=120_000)
    settle(page)
    page.locator('[data-testid="stSelectbox"] input[aria-label="layer"]').click()
    page.get_by_role("option", name="layer 0", exact=True).click()
    settle(page)
    assert page.get_by_text("The newest block's").count() == 1
    assert_clean(page, "Step inspector")
    finish(page, "step-attention-heads")


@pytest.mark.parametrize("name", ["metrics", "knobs"])
def test_a_click_on_a_metric_line_selects_its_step(app, page, name):
    visit(page, app, name)
    before = url_param(page, "step")
    assert before is None or name == "knobs"  # the lab's scrubber puts its step (the last) in the URL
    # Metrics: its first line; Knobs lab: its per-step series, the last chart on the page.
    plot = page.locator(".js-plotly-plot").first if name == "metrics" else page.locator(".js-plotly-plot").last
    plot.scroll_into_view_if_needed()
    wait_drawn(page, plot)
    # A point of the first line, half way along, placed on screen from plotly's own axes.
    step, x, y = plot.evaluate(
        """gd => {
            const t = gd._fullData[0], L = gd._fullLayout, r = gd.getBoundingClientRect();
            const xs = Array.from(t.x), ys = Array.from(t.y);
            let i = Math.floor(xs.length / 2);
            while (i < xs.length - 1 && !(ys[i] === ys[i])) i++;  // a point with a value (not NaN)
            return [xs[i], r.left + L.xaxis._offset + L.xaxis.l2p(xs[i]), r.top + L.yaxis._offset + L.yaxis.l2p(ys[i])];
        }"""
    )
    page.mouse.click(x, y)
    wait_url_param(page, "step", str(int(step)))
    settle(page)
    if name == "metrics":
        assert page.get_by_text(f"Step {int(step)}:").count() == 1  # selected: links to it on three pages
        assert page.get_by_role("link", name="Text").count() >= 1
    else:
        assert page.locator(SCRUBBER).get_attribute("value") == str(int(step))  # the lab's scrubber follows
    assert_clean(page, PAGES[name][1])


def test_metrics_page(app, page):
    visit(page, app, "metrics")
    edits = app["metrics"][REC]["applied_edits"]
    assert page.get_by_text(f"{edits} applied edits,").count() == 1
    finish(page, "metrics")


def test_knobs_page_replans_like_the_replay(app, page):
    rec, rep = app["metrics"][REC], app["metrics"][REP]
    assert rec["applied_edits"] != rep["applied_edits"]  # the knob matters here: a re-plan ignoring it would show
    visit(page, app, "knobs")
    before = metric_table(page)
    assert [float(v) for v in before["applied edits"]] == [rec["applied_edits"], rec["applied_edits"], 0]
    box = page.get_by_label("allocator.cooldown_steps", exact=True)
    box.fill(str(COOLDOWN))
    box.press("Enter")
    wait_url_param(page, "k.allocator.cooldown_steps", str(COOLDOWN))
    settle(page)
    page.wait_for_function(  # the grid redraws after the run's end: wait for the re-planned cell to move
        "([h, v]) => [...document.querySelectorAll('[data-testid=stDataFrame] [role=row]')].some("
        "r => r.children[0]?.innerText.trim() === h && r.children[2]?.innerText.trim() !== v)",
        arg=["applied edits", before["applied edits"][1]],
    )
    after = metric_table(page)
    # The in-memory re-plan equals the saved replay with the same knob (both reuse the recorded scores),
    # as measured by the telemetry CLI; the recorded side does not move.
    for label, key in (("applied edits", "applied_edits"), ("ping-pongs", "ping_pongs"),
                       ("swap rate (applied edits / entries)", "swap_rate"), ("locality", "locality")):  # fmt: skip
        got = [float(v) for v in after[label]]
        assert got == pytest.approx([rec[key], rep[key], rep[key] - rec[key]], rel=1e-9, abs=1e-12), label
    assert page.get_by_text(f"Changed knobs: allocator.cooldown_steps={COOLDOWN}.").count() == 1
    assert_clean(page, "Knobs lab")
    screenshot(page, "knobs")

    # Saved as a run, its "Open it on the Runs page" link (a new tab) opens the Runs page on it.
    page.get_by_role("button", name="Save as replay run").click()
    link = page.get_by_role("link", name="Open it on the Runs page")
    link.wait_for()
    ref = re.search(r"Saved replay run (\S+) ", page.locator('[data-testid="stAlertContentSuccess"]').inner_text())[1]
    assert ref.startswith("mine/") and (app["mine"] / ref.split("/", 1)[1] / "manifest.json").is_file()
    with page.context.expect_page() as opened:
        link.click()
    runs = watch(opened.value)
    try:
        settle(runs)
        assert_clean(runs, "Runs")
        assert selected(runs, "open run") == ref
    finally:
        runs.close()
    assert page.errors == []


def test_knobs_lab_exact_replan_runs_and_shows_both_sides(app, page):
    """The exact re-plan (tiny model, seconds): started from the page, followed, then its metrics beside
    the recording's and a link that compares the two runs."""
    page.goto(f"{app['base']}/knobs?run={REC}&k.allocator.cooldown_steps={COOLDOWN}")
    settle(page)
    page.get_by_role("button", name="Start exact re-plan").click()
    page.get_by_role("link", name="Compare side by side").wait_for(timeout=180_000)
    settle(page)
    rows = {r[0]: r[1:] for r in grid_rows(page, "metric") if r}  # the first metric grid: the fast re-plan's
    assert rows
    exact_rows = page.evaluate("""() => [...document.querySelectorAll('[data-testid=stDataFrame]')].map(
        df => [...df.querySelectorAll('[role=columnheader]')].map(c => c.innerText.trim()))""")
    assert any("exact re-plan" in h for h in exact_rows), exact_rows
    out = [p for p in app["mine"].iterdir() if p.name.startswith("rec-cooldown_steps4-exact-")]
    assert len(out) == 1 and json.loads((out[0] / "manifest.json").read_text())["status"] == "complete"
    assert_clean(page, "Knobs lab")
    screenshot(page, "knobs-exact")


def test_sweep_page_a_click_on_a_pareto_point_opens_it_in_the_knobs_lab(app, page):
    visit(page, app, "sweep")
    plot = page.locator(".js-plotly-plot").first
    x, y = trace_point(page, plot, trace=1)  # a non-dominated point
    page.mouse.click(x, y)
    link = page.get_by_role("link", name=f"Open it in the Knobs lab on {REC}")
    link.wait_for()
    settle(page)
    assert page.get_by_text("Setting:").count() == 1
    assert_clean(page, "Sweep")
    screenshot(page, "sweep")
    href = link.get_attribute("href")
    assert "k.allocator.cooldown_steps=" in href and "k.allocator.hysteresis_margin=" in href
    page.goto(f"{app['base']}/{href.lstrip('/')}" if not href.startswith("http") else href)
    settle(page)
    assert_clean(page, "Knobs lab")


def test_compare_page(app, page):
    visit(page, app, "compare")
    table = metric_table(page)
    for key in ("steps", "applied_edits", "ping_pongs", "swap_rate"):
        want = [app["metrics"][REC][key], app["metrics"][REP][key]]
        assert [float(v) for v in table[key][:2]] == pytest.approx(want, rel=1e-9, abs=1e-12), key
    finish(page, "compare")


def test_a_click_on_the_live_page_selects_a_step_while_it_records(app, page):
    """A run that is recording (a copy of `rec` whose heartbeat the test keeps fresh): a click on the
    live timeline selects that step and links to it, and the page goes on following the run."""
    import shutil
    import threading

    run = app["mine"] / "live-copy"
    shutil.copytree(app["samples"] / "rec", run)
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            m = json.loads((run / "manifest.json").read_text())
            m.update(status="recording", heartbeat_at=datetime.datetime.now(datetime.UTC).isoformat())
            (run / "manifest.tmp").write_text(json.dumps(m))
            (run / "manifest.tmp").replace(run / "manifest.json")
            stop.wait(1.0)

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        page.goto(f"{app['base']}/live?run=mine/live-copy")
        page.get_by_text("steps so far").wait_for()
        settle(page)
        plot = page.locator('[data-testid="stPlotlyChart"]').first
        box = plot.locator(".nsewdrag").first.bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.4, box["y"] + box["height"] / 2)
        page.wait_for_function("() => new URLSearchParams(location.search).get('step') !== null")
        step = int(url_param(page, "step"))
        page.get_by_text(f"Step {step}:").wait_for()
        assert page.get_by_role("link", name="Step inspector").count() >= 1
        page.wait_for_timeout(2500)  # a refresh later: still following, still selected
        assert page.get_by_text("steps so far").count() == 1 and url_param(page, "step") == str(step)
        assert_clean(page, "Live")
        screenshot(page, "live-picked")
    finally:
        stop.set()
        beater.join(timeout=5)


def test_live_page(app, page):
    visit(page, app, "live")  # a finished run: a message and a link to its timeline, no live view
    assert page.get_by_text(f"{REC} has finished recording").count() == 1
    finish(page, "live")


@pytest.mark.parametrize("name", ["timeline", "step", "text", "metrics", "compare", "knobs", "gists", "sweep"])
def test_exports_download_and_decode_after_a_rerun(app, page, name):
    """The first chart's CSV and Parquet of each page download and decode to the same rows, also when
    the page has rerun between drawing the buttons and the click (a lazily made file was forgotten
    by that rerun: the silent failure of issue 13)."""
    import io

    import pandas as pd

    visit(page, app, name)
    if name == "timeline":  # a rerun between drawing and clicking
        page.locator(SCRUBBER).focus()
        page.keyboard.press("ArrowLeft")
        settle(page)
    frames = []
    pair = page.locator('[data-testid="stHorizontalBlock"]', has=page.locator('[data-testid="stDownloadButton"]')).first
    for label in ("CSV", "Parquet"):  # the two buttons of the same export
        with page.expect_download() as got:
            # A DOM click on the button itself: a mouse click goes to screen coordinates, and on a heavy page
            # (heatmaps still mounting) the layout can shift under it onto the next export's button.
            pair.locator('[data-testid="stDownloadButton"] button', has_text=label).first.dispatch_event("click")
        data = Path(got.value.path()).read_bytes()
        frames.append(pd.read_csv(io.BytesIO(data)) if label == "CSV" else pd.read_parquet(io.BytesIO(data)))
    assert len(frames[0]) == len(frames[1]) > 0 and list(frames[0].columns) == list(frames[1].columns)
    assert_clean(page, PAGES[name][1])


def test_record_page_and_follow_the_recording_live_from_start(app, page):
    """Start a recording (tiny model) and open its Live page at once: the run has no folder yet, and the
    page waits for it, then follows it, then says it finished; no error at any moment."""
    visit(page, app, "record")
    page.get_by_role("textbox", name="run name").fill("from-browser")
    source = page.get_by_role("textbox", name="input file")
    source.fill(str(SAMPLE))
    source.press("Enter")
    for label, value in (("model", "tiny"), ("scorer.name", "recency")):
        page.locator(f'[data-testid="stSelectbox"] input[aria-label="{label}"]').click()
        page.get_by_role("option", name=value, exact=True).click()
        settle(page)
    # The whole sample with NLL every step: long enough (seconds) that the Live tab opens mid-recording.
    box = page.get_by_role("spinbutton", name="session.nll_every")
    box.fill("1")
    box.press("Enter")
    settle(page)
    page.get_by_role("button", name="Start recording").click()
    follow = page.get_by_role("link", name="Follow it on the Live page").first
    follow.wait_for()
    finish(page, "record")
    with page.context.expect_page() as opened:
        follow.click()
    live = watch(opened.value)
    try:
        seen = set()
        deadline = time.monotonic() + 180
        while True:
            page_text = live.locator('[data-testid="stMain"]').inner_text()
            assert live.locator('[data-testid="stAlertContentError"]').count() == 0, page_text
            assert live.get_by_role("dialog").count() == 0
            now = {k for k in ("Waiting for", "steps so far", "has finished recording") if k in page_text}
            for k, shot in (("Waiting for", "live-waiting"), ("steps so far", "live-following")):
                if k in now - seen:
                    live.screenshot(path=str(ARTIFACTS / f"{shot}.png"))
            seen |= now
            if "has finished recording" in page_text:
                break
            assert time.monotonic() < deadline, f"not finished in 180 s; seen {seen}: {page_text[-500:]}"
            live.wait_for_timeout(500)
        assert seen & {"Waiting for", "steps so far"}, seen  # it was followed before it finished
        assert live.errors == []
        screenshot(live, "live-followed")
    finally:
        live.close()


def test_sidebar_keeps_the_run_and_step(app, page):
    page.goto(f"{app['base']}/timeline?run={REC}&step=5")
    settle(page)
    page.locator('[data-testid="stSidebarNav"] a', has_text="Step inspector").click()
    wait_url_param(page, "run", REC)
    settle(page)
    assert_clean(page, "Step inspector")
    assert url_param(page, "step") == "5" and page.locator(SCRUBBER).get_attribute("value") == "5"
    page.locator('[data-testid="stSidebarNav"] a', has_text="Metrics").click()
    wait_url_param(page, "run", REC)
    settle(page)
    assert_clean(page, "Metrics")
    finish(page, "sidebar-metrics")


def test_runs_path_opens_the_runs_page(app, page):
    page.goto(f"{app['base']}/runs?run={REP}")
    settle(page)
    assert_clean(page, "Runs")  # no "Page not found" dialog
    assert selected(page, "open run") == REP


def test_gist_map_umap_arrives(app, page):
    # The page polls every 3 s while UMAP computes in the background, and reruns once it is there.
    visit(page, app, "gists")
    page.locator('[data-testid="stPlotlyChart"]').nth(1).wait_for(timeout=150_000)  # PCA, then UMAP
    settle(page)
    assert page.get_by_text("UMAP is being computed").count() == 0
    assert_clean(page, "Gist map")
    finish(page, "gists-umap")
