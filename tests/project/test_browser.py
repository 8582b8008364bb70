"""JupyterLab in a real browser: every lesson as a learner runs it, the writers panel clicked.

Papermill proves the code; this proves what a learner sees. The module starts what ``./scripts/lab``
starts — a recorded ``statelab up`` stack, Redis with one replica and one sidecar (here on random ports), and
JupyterLab with the project's own configuration (``jupyter/``) and ``DAPR_HTTP_ENDPOINT`` — on copies of the
notebooks, then drives Debian's Chromium with Playwright: open a notebook, Run ▸ Run All Cells, wait for the
cells and the panel, and assert on the page: no error, every cell run, no output wider than the notebook. Screenshots go to ``build/screenshots/`` on every run, plus ``<test>-failure.png`` when a test
fails. Each test's kernels are shut down when it ends; JupyterLab and the stack when the module ends.

Needs a Chromium binary (never ``playwright install``): ``/usr/bin/chromium`` from Debian's ``chromium``
package, or ``STATELAB_CHROMIUM=/path/to/chrome``. Without one the tests skip, unless
``STATELAB_BROWSER_REQUIRED=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from helpers import ROOT, free_port_base, wait_until

from statelab import local
from statelab.local import Stack, on_free_ports

SCREENSHOTS = ROOT / "build" / "screenshots"
JUPYTER_CONFIG = ROOT / "jupyter" / "jupyter_server_config.py"
# What works on this project's machines: no sandbox as root, and no background connections to Google's
# hosts (the network is closed; Chromium would keep retrying them).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]
NO_CHROMIUM = ("no Chromium found for the browser test: install Debian's package (`sudo apt-get install chromium`, "
               "gives /usr/bin/chromium) or set STATELAB_CHROMIUM=/path/to/chromium-or-chrome; "
               "do not run `playwright install`")
LOAD_TIMEOUT_MS = 120_000  # JupyterLab's first page load and a kernel start
RUN_ALL_TIMEOUT_MS = int(os.environ.get("STATELAB_RUN_ALL_TIMEOUT_MS", "300000"))  # whole-notebook runs on a busy 2-core CI machine
PANEL_RUN_TIMEOUT_MS = 180_000

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

playwright_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs `playwright` (requirements.txt)")


def find_chromium() -> str | None:
    """$STATELAB_CHROMIUM, else Debian's /usr/bin/chromium, else a chromium or chrome on the PATH."""
    candidates = [os.environ.get("STATELAB_CHROMIUM"), "/usr/bin/chromium"]
    candidates += [shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


# --- JupyterLab ----------------------------------------------------------------------------------------------


@dataclass
class JupyterLab:
    """A JupyterLab server this module started, on 127.0.0.1 with a token, serving ``root``."""

    url: str
    token: str
    root: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, method: str, path: str) -> requests.Response:
        return requests.request(method, f"{self.url}{path}", headers={"Authorization": f"token {self.token}"},
                                timeout=10)

    def kernels(self) -> list[dict]:
        return self.api("GET", "/api/kernels").json()

    def shutdown_kernels(self) -> None:
        """Close every session and kernel through the REST API, as the learner's File ▸ Shut Down would."""
        for session in self.api("GET", "/api/sessions").json():
            self.api("DELETE", f"/api/sessions/{session['id']}")
        for kernel in self.kernels():
            self.api("DELETE", f"/api/kernels/{kernel['id']}")
        assert wait_until(lambda: self.kernels() == [], timeout=30), f"kernels still running: {self.kernels()}"

    def stop(self) -> None:
        """SIGTERM (JupyterLab shuts its kernels down), then SIGKILL to its whole process group if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get("STATELAB_BROWSER_REQUIRED"):
            pytest.fail(NO_CHROMIUM + " (STATELAB_BROWSER_REQUIRED is set, so this is a failure, not a skip)")
        pytest.skip(NO_CHROMIUM)
    return path


@pytest.fixture(scope="module")
def lab(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    """The stack and JupyterLab as ./scripts/lab starts them — a recorded `statelab up` stack (Redis with one
    replica, one sidecar) whose DAPR_HTTP_ENDPOINT the kernels inherit — on copies of the notebooks."""
    base = tmp_path_factory.mktemp("browser")
    root = base / "notebooks"
    shutil.copytree(ROOT / "notebooks", root)
    home = base / "statelab-home"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STATELAB_HOME", str(home))  # where `statelab up` records the stack, as the kernels will read it
        stack = on_free_ports(Stack(store="redis", replicas=1, sidecars=1, http_port=20000, grpc_port=20004,
                                    redis_port=20008, internal_grpc_port=20012), step=16, randomly=True)
        stack = local.up(**{f: getattr(stack, f) for f in ("store", "replicas", "sidecars", "http_port",
                                                          "grpc_port", "redis_port", "internal_grpc_port")})
        try:
            server = start_jupyterlab(base, root, env={**os.environ, **stack.env()})
            try:
                yield server
                server.shutdown_kernels()
            finally:
                server.stop()
        finally:
            local.down()


def start_jupyterlab(base: Path, root: Path, env: dict[str, str]) -> JupyterLab:
    """``jupyter lab`` with the project's config on a free loopback port and a random token; waits until it answers."""
    token = secrets.token_urlsafe(24)
    port = free_port_base(1)
    home = base / "jupyter-home"
    env = {
        **env,
        "STATELAB_OUTPUT_DIR": str(base / "metrics"),
        "STATELAB_HOME": str(base / "statelab-home"),  # the `statelab up` record of the lab fixture
        # Only the project's configuration: not the developer's ~/.jupyter, settings or saved workspaces.
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
    }
    args = [sys.executable, "-m", "jupyterlab", f"--config={JUPYTER_CONFIG}", "--no-browser",
            f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}"]
    if os.geteuid() == 0:
        args.append("--allow-root")
    log = base / "jupyterlab.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = JupyterLab(f"http://127.0.0.1:{port}", token, root, proc, log)

    def answers() -> bool:
        assert proc.poll() is None, f"JupyterLab exited with {proc.returncode}:\n{server.log_tail()}"
        try:
            return server.api("GET", "/api/status").status_code == 200
        except requests.ConnectionError:
            return False

    try:
        assert wait_until(answers, timeout=90, interval=0.25), f"JupyterLab did not answer:\n{server.log_tail()}"
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[object]:
    for old in SCREENSHOTS.glob("*-failure.png"):  # so the folder shows this run only
        old.unlink()
    with playwright_api.sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, lab: JupyterLab, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh page; when the test fails, a screenshot of where it stood. Its kernels are shut down after."""
    # Tall enough for the whole writers panel (controls, bars, summary and both plots) in one screenshot.
    context = browser.new_context(viewport={"width": 1400, "height": 2000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    failed_before = request.session.testsfailed  # pytest counts a failed call before fixtures tear down
    yield page
    if request.session.testsfailed > failed_before:
        screenshot(page, f"{request.node.name}-failure")
    context.close()
    lab.shutdown_kernels()


def screenshot(target, name: str) -> Path:
    """Save a screenshot of a page or an element under build/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    target.screenshot(path=str(path))
    return path


# --- driving a notebook --------------------------------------------------------------------------------------


def open_notebook(page, lab: JupyterLab, name: str) -> None:
    """Open a notebook in a reset workspace; returns once every cell is on the page and the kernel is idle."""
    cells = len(json.loads((lab.root / name).read_text())["cells"])
    page.goto(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}", timeout=LOAD_TIMEOUT_MS)
    page.wait_for_function("n => document.querySelectorAll('.jp-NotebookPanel .jp-Cell').length === n", arg=cells,
                           timeout=LOAD_TIMEOUT_MS)
    # The notebook names its kernel (python3), so JupyterLab starts it without asking.
    kernel = page.locator(".jp-StatusBar-TextItem[title^='Change kernel']")
    playwright_api.expect(kernel).to_have_text(re.compile(r"Python 3.*\| Idle"), timeout=LOAD_TIMEOUT_MS)


def run_all(page) -> None:
    """Run ▸ Run All Cells, then wait until every code cell has run or one has failed (run-all stops there)."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").click()
    page.locator("li[data-command='runmenu:run-all']").click()
    try:
        page.wait_for_function(
            """() => {
                // A cell whose input is collapsed (the lessons' metrics cells) shows an empty prompt.
                const prompts = [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')]
                    .map(p => p.textContent.trim()).filter(p => p !== '');
                const failed = [...document.querySelectorAll('.jp-OutputArea-output')]
                    .some(o => o.textContent.includes('Traceback (most recent call last)'));
                return prompts.every(p => /^\\[\\d+\\]:$/.test(p)) || (failed && !prompts.includes('[*]:'));
            }""",
            timeout=RUN_ALL_TIMEOUT_MS,
            polling=500,
        )
    except playwright_api.Error:
        prompts = page.locator(".jp-NotebookPanel .jp-CodeCell .jp-InputPrompt").all_text_contents()
        raise AssertionError(f"Run All did not finish; the cells' prompts: {prompts}") from None


def overflowing_outputs(page) -> list[str]:
    """Outputs wider than the notebook: ones that scroll sideways, or tables, images or text past the panel's
    right edge. (A collapsed ``<details>`` table is not shown, so it is not measured.)"""
    return page.evaluate("""() => {
        const panel = document.querySelector('.jp-NotebookPanel .jp-Notebook');
        const right = panel.getBoundingClientRect().right;
        const found = [];
        for (const out of document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output')) {
            const text = out.textContent.trim().slice(0, 80);
            if (out.scrollWidth > out.clientWidth + 2) found.push(`scrolls sideways: ${text}`);
            for (const el of out.querySelectorAll('table, img, pre, svg, .widget-box')) {
                if (el.closest('details:not([open])')) continue;  // Chromium lays out a closed details' content
                const box = el.getBoundingClientRect();
                if (box.width > 0 && box.right > right + 1) {
                    found.push(`${el.tagName} ${Math.round(box.width)} px wide, ends ${Math.round(box.right - right)} px past the notebook: ${text}`);
                }
            }
        }
        return found;
    }""")


def error_outputs(page) -> list[str]:
    """The text of every output that shows a traceback."""
    outputs = page.locator(".jp-NotebookPanel .jp-OutputArea-output").all_text_contents()
    return [o[-600:] for o in outputs if "Traceback (most recent call last)" in o]


def unrun_cells(page) -> list[str]:
    """Prompts of code cells that have not run ("[ ]:", "[*]:"); collapsed inputs show no prompt."""
    prompts = page.locator(".jp-NotebookPanel .jp-CodeCell .jp-InputPrompt").all_text_contents()
    return [p for p in prompts if p.strip() and not re.fullmatch(r"\[\d+\]:", p.strip())]


def saved_error_cells(page, lab: JupyterLab, name: str) -> list[int]:
    """Save the notebook from the browser and read it back: indices of cells with an error output."""
    page.keyboard.press("Control+s")

    def saved() -> dict | None:
        # From the disk, not the contents API: a GET that lands while the server writes the file atomically
        # runs jupyter_server's recovery (it renames the half-written files), which once lost the notebook.
        try:
            nb = json.loads((lab.root / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not there for a moment, or half written
            return None
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        return nb if code and all(c.get("execution_count") for c in code) else None

    assert wait_until(saved, timeout=30), f"{name} was not saved with its outputs"
    nb = saved()
    return [i for i, c in enumerate(nb["cells"]) if any(o["output_type"] == "error" for o in c.get("outputs", []))]


def no_first_start_prompts(page) -> None:
    """No kernel-selection dialog, no 'get Jupyter news?' toast: jupyter/ ships the settings for that."""
    assert page.locator(".jp-Dialog").count() == 0, page.locator(".jp-Dialog").all_text_contents()
    assert page.get_by_text("official Jupyter news").count() == 0


def summary_table(panel) -> dict[str, str]:
    """The run summary the panel shows (RunResult's HTML): column name -> cell text, from the key columns and
    the full table one click further (opened here, as a learner would)."""
    output = panel.locator(".jp-OutputArea-output:has(table)").last  # the innermost: the panel's own output
    more = output.locator("details summary")
    if more.count():
        more.first.click()
    found: dict[str, str] = {}
    for table in output.locator("table").all():
        heads = [h.strip() for h in table.locator("th").all_text_contents()]
        cells = [c.strip() for c in table.locator("td").all_text_contents()]
        found.update(zip(heads, cells, strict=True))
    assert found, f"no summary table in: {output.text_content()[:300]!r}"
    return found


# --- the tests -----------------------------------------------------------------------------------------------


def test_lesson_04_runs_and_the_writers_panel_launches_a_run_that_loses_nothing(lab, page):
    name = "04_concurrent_writers.ipynb"
    open_notebook(page, lab, name)
    no_first_start_prompts(page)
    run_all(page)
    screenshot(page, "04-after-run-all")
    assert error_outputs(page) == []
    assert unrun_cells(page) == []
    no_first_start_prompts(page)
    # The lesson's own plots (timeline, acknowledged vs surviving, scaling) are on the page.
    assert page.locator(".jp-NotebookPanel .jp-OutputArea-output img").count() >= 3
    # It asked for three sidecars and the lab stack has one: it started its own, and the panel offers three.
    assert page.get_by_text("1 sidecar(s), not 3").count() == 1

    cell = page.locator(".jp-CodeCell").filter(has_text="WritersPanel(lab.endpoints)")
    launch = cell.get_by_role("button", name="Launch")
    playwright_api.expect(launch).to_be_enabled()
    writers, operations = 6, 15
    for label, value in (("writers", writers), ("ops per writer", operations)):
        readout = cell.locator(".widget-slider", has=page.get_by_text(label, exact=True)).locator(".widget-readout")
        readout.click()
        page.keyboard.press("Control+a")
        page.keyboard.type(str(value))
        page.keyboard.press("Enter")
        playwright_api.expect(readout).to_have_text(str(value))
    screenshot(cell, "04-panel-set")

    launch.click()
    ended = cell.locator(".widget-html").filter(has_text=re.compile(r"Run (finished|stopped early) in|could not start|Unexpected"))
    playwright_api.expect(ended).to_have_count(1, timeout=PANEL_RUN_TIMEOUT_MS)
    playwright_api.expect(ended).to_contain_text("Run finished in")
    bars = cell.locator(".widget-hprogress")
    playwright_api.expect(bars).to_have_count(writers)
    for i in range(writers):
        bar = bars.nth(i)
        playwright_api.expect(bar).to_contain_text(f"writer {i}")
        playwright_api.expect(bar.locator(".progress-bar")).to_have_class(re.compile(r"progress-bar-success"))
    # The retry-count plot (attempts per successful write) and the timeline, drawn and loaded.
    images = cell.locator(".jp-OutputArea-output img")
    playwright_api.expect(images).to_have_count(2, timeout=60_000)
    for i in range(2):
        playwright_api.expect(images.nth(i)).to_be_visible()
        assert images.nth(i).evaluate("img => img.complete && img.naturalWidth > 200 && img.naturalHeight > 100")
    screenshot(cell, "04-panel-finished")
    screenshot(page, "04-panel-finished-page")

    summary = summary_table(cell)
    total = writers * operations
    assert summary["writers"] == str(writers)
    assert summary["operations"] == str(total)
    assert summary["concurrency"] == "first-write"
    assert summary["acknowledged"] == summary["surviving"] == str(total)
    assert summary["lost updates"] == "0"
    assert summary["errors"] == "0"
    outcomes = ("acknowledged", "conflicts", "errors", "unknown")
    assert int(summary["attempts"]) == sum(int(summary[k]) for k in outcomes)
    counter = cell.locator(".widget-html", has_text="conflicts so far")
    playwright_api.expect(counter).to_contain_text(f"conflicts so far: {summary['conflicts']}")
    assert cell.get_by_text(f"No lost updates: all {total} acknowledged writes are in the store.").count() == 1
    playwright_api.expect(launch).to_be_enabled()

    assert saved_error_cells(page, lab, name) == []


def test_lesson_01_runs_without_an_error_cell(lab, page):
    name = "01_save_get_delete.ipynb"
    open_notebook(page, lab, name)
    no_first_start_prompts(page)
    run_all(page)
    screenshot(page, "01-after-run-all")
    assert error_outputs(page) == []
    assert unrun_cells(page) == []
    assert saved_error_cells(page, lab, name) == []
    # The setup cell says which sidecar it talks to: the stack ./scripts/lab (here: this module) started.
    assert page.get_by_text("Connected to the local stack").count() == 1
    assert overflowing_outputs(page) == []


# Lessons 01 and 04 have tests of their own above; every other lesson: run it all, as a learner would, with
# its default parameters, and look at it.
OTHER_LESSONS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")
                       if not p.name.startswith(("01_", "04_")))


@pytest.mark.parametrize("name", OTHER_LESSONS)
def test_every_lesson_runs_in_the_browser_and_fits_the_notebook(lab, page, name):
    open_notebook(page, lab, name)
    run_all(page)
    screenshot(page, f"{name[:2]}-after-run-all")
    assert error_outputs(page) == []
    assert unrun_cells(page) == []
    assert overflowing_outputs(page) == []
    assert saved_error_cells(page, lab, name) == []
