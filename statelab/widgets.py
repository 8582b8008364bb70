"""The writers panel: launch concurrent writers from ipywidgets and watch them.

The panel only collects parameters and calls ``statelab.writers.run_writers`` — the same function a
headless notebook calls — on a background thread, feeding its progress callback into per-writer
progress bars and a running conflict count. When the run ends, the summary, the checker's findings and
the plots go into the panel's output area. Errors (sidecar down, unknown store) show as a message.
``launch()`` and ``stop()`` are the button handlers; tests call them directly.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Sequence
from dataclasses import fields

import ipywidgets as W

from statelab import plots
from statelab.backoff import POLICY_NAMES
from statelab.errors import StatelabError
from statelab.writers import STOP_GRACE_SECONDS, Progress, RunResult, WritersConfig, run_writers


class WritersPanel:
    """``WritersPanel(endpoints)``; display it as the last line of a cell."""

    def __init__(self, endpoints: Sequence[str] | str, *, defaults: WritersConfig | None = None,
                 max_writers: int = 64) -> None:
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        d = defaults or WritersConfig()
        self.defaults = d
        style = {"description_width": "110px"}
        self.writers = W.IntSlider(d.writers, 1, max_writers, description="writers", style=style)
        self.operations = W.IntSlider(d.operations, 1, 200, description="ops per writer", style=style)
        self.sidecars = W.IntSlider(len(self.endpoints), 1, len(self.endpoints), description="sidecars", style=style,
                                    disabled=len(self.endpoints) == 1)
        self.concurrency = W.Dropdown(options=["first-write", "last-write"], value=d.concurrency,
                                      description="concurrency", style=style)
        self.consistency = W.Dropdown(options=["eventual", "strong"], value=d.consistency,
                                      description="consistency", style=style)
        self.policy = W.Dropdown(options=list(POLICY_NAMES), value=d.policy, description="retry policy", style=style)
        self.base = W.FloatLogSlider(d.base, base=10, min=-4, max=0, step=0.25, description="base (s)", style=style,
                                     readout_format=".4f")
        self.cap = W.FloatLogSlider(d.cap, base=10, min=-3, max=1, step=0.25, description="cap (s)", style=style,
                                    readout_format=".3f")
        self.launch_button = W.Button(description="Launch", button_style="success", icon="play")
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.launch_button.on_click(self.launch)
        self.stop_button.on_click(self.stop)
        self.status = W.HTML("Set the parameters and press <b>Launch</b>.")
        self.conflict_count = W.HTML("")
        self.bars = W.VBox([])
        self.output = W.Output()
        controls = W.VBox([self.writers, self.operations, self.sidecars, self.concurrency, self.consistency,
                           self.policy, self.base, self.cap, W.HBox([self.launch_button, self.stop_button])])
        self.widget = W.VBox([controls, self.status, self.conflict_count, self.bars, self.output])
        self.result: RunResult | None = None
        self.error: str | None = None
        self._stop, self._ended = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    # --- what the buttons do ---------------------------------------------------------------------

    def config(self) -> WritersConfig:
        """The run the controls describe (everything else as in ``defaults``)."""
        values = {f.name: getattr(self.defaults, f.name) for f in fields(WritersConfig)}
        values.update(writers=self.writers.value, operations=self.operations.value,
                      concurrency=self.concurrency.value, consistency=self.consistency.value,
                      policy=self.policy.value, base=self.base.value, cap=self.cap.value)
        return WritersConfig(**values)

    def launch(self, _button: object = None) -> threading.Thread | None:
        """Start a run in the background; returns its thread (None if one is already running)."""
        if self._thread is not None and self._thread.is_alive():
            return None
        config = self.config()
        endpoints = self.endpoints[: self.sidecars.value]
        self.result, self.error = None, None
        self._stop, self._ended = threading.Event(), threading.Event()
        self.bars.children = [
            W.IntProgress(0, 0, config.operations, description=f"writer {i}", style={"description_width": "70px"})
            for i in range(config.writers)
        ]
        self.conflict_count.value = "conflicts so far: 0"
        self.status.value = (f"Running {config.writers} writers × {config.operations} operations on "
                             f"{len(endpoints)} sidecar(s), {config.concurrency}, retry {config.policy}…")
        self.output.clear_output()
        self.launch_button.disabled, self.stop_button.disabled = True, False
        self._thread = threading.Thread(target=self._run, args=(config, endpoints), name="writers-panel", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, _button: object = None) -> None:
        """Ask the writers to stop after their current attempt; the run still returns what happened."""
        self._stop.set()
        self.status.value = "Stopping: the writers finish their current attempt…"

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Block until the current run has ended (for headless use and tests). Interrupted (the stop button),
        it stops the writers as the panel's Stop does and gives them ``STOP_GRACE_SECONDS`` to end."""
        if self._thread is not None:
            # An Event, not Thread.join: on Python 3.10-3.12 an interrupted join marks the run as ended while it
            # still runs, and the grace wait after it would return at once (see writers.run_threads).
            try:
                ended = self._ended.wait(timeout)
            except KeyboardInterrupt:
                self.stop()
                self._ended.wait(STOP_GRACE_SECONDS)
                raise
            if ended:
                self._thread.join()  # what is left is the thread's own exit
        return self.result

    # --- the background run ----------------------------------------------------------------------

    def _on_progress(self, p: Progress) -> None:
        for bar, done in zip(self.bars.children, p.done, strict=False):
            bar.value = done
            bar.bar_style = "success" if done >= p.total_per_writer else ""
        extra = f", errors: {p.errors}" if p.errors else ""
        self.conflict_count.value = f"conflicts so far: <b>{p.conflicts}</b>{extra} ({p.elapsed:.1f} s)"

    def _run(self, config: WritersConfig, endpoints: list[str]) -> None:
        try:
            result = run_writers(endpoints, config, stop=self._stop, progress=self._on_progress)
        except StatelabError as exc:
            self.error = str(exc)
            self.status.value = f"<span style='color:#b00020'>The run could not start: {html.escape(str(exc))}</span>"
        except Exception as exc:  # noqa: BLE001 - a panel shows the problem instead of dying silently
            self.error = f"{type(exc).__name__}: {exc}"
            self.status.value = f"<span style='color:#b00020'>Unexpected error: {html.escape(self.error)}</span>"
        else:
            self.result = result
            ended = "stopped early" if result.stopped_early else "finished"
            self.status.value = f"Run {ended} in {result.wall_time:.2f} s."
            self.output.append_display_data(result)
            self.output.append_display_data(plots.attempts_histogram({config.policy: result}))
            self.output.append_display_data(plots.timeline(result))
        finally:
            self.launch_button.disabled, self.stop_button.disabled = False, True
            self._ended.set()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
