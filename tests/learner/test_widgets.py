"""The writers panel, driven through its own handlers (Button.click() would swallow exceptions)."""

from __future__ import annotations

from helpers import free_port_base

from statelab.widgets import WritersPanel


def test_launch_handler_runs_the_writers_and_shows_the_result(api):
    panel = WritersPanel([api.url])
    panel.writers.value, panel.operations.value = 6, 5
    panel.policy.value = "equal-jitter"
    thread = panel.launch()
    assert thread is not None and panel.launch_button.disabled and not panel.stop_button.disabled
    result = panel.wait(timeout=60)
    assert panel.error is None
    assert result.config.writers == 6 and result.config.policy == "equal-jitter"
    assert result.acknowledged == 30 and result.lost_updates == 0
    assert [bar.value for bar in panel.bars.children] == [5] * 6
    assert "conflicts so far" in panel.conflict_count.value
    assert "finished" in panel.status.value
    assert len(panel.output.outputs) == 3  # summary table, histogram, timeline
    assert not panel.launch_button.disabled and panel.stop_button.disabled


def test_stop_handler_ends_a_long_run_early(api):
    panel = WritersPanel([api.url])
    panel.writers.value, panel.operations.value = 2, 200
    panel.launch()
    panel.stop()
    result = panel.wait(timeout=60)
    assert result.stopped_early
    assert "stopped early" in panel.status.value


def test_a_sidecar_that_is_down_is_a_message_in_the_panel():
    panel = WritersPanel([f"http://127.0.0.1:{free_port_base(1)}"])
    panel.launch()
    assert panel.wait(timeout=30) is None
    assert "cannot reach the Dapr sidecar" in panel.error
    assert "could not start" in panel.status.value
    assert not panel.launch_button.disabled
