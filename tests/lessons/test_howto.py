"""statelab.lessons.howto: the Dapr how-to's snippets run for real against a sidecar on every store, and fixed."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator

import pytest
import requests
from helpers import ROOT

from statelab.lessons import howto, howto_page
from statelab.session import Session

PAGE = ROOT.parent / "shared" / "howto-stateful-service.md"
TIMEOUT = 0.5  # seconds an endless loop may run here; enough for many attempts on loopback


@pytest.fixture
def lab(api) -> Iterator[Session]:
    """A Session on the fixture's running stack (never closed here: the stack belongs to conftest)."""
    session = Session(api.url, stack=api.stack)
    yield session
    session.client.close()


def codes(run: howto.Run) -> list[str]:
    return [f.code for f in run.findings]


# --- the stored snippets ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not PAGE.exists(), reason="the shared copy of the docs page is not beside this checkout")
def test_stored_snippets_are_the_pages_python_blocks_verbatim():
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    assert blocks == [s.docs for s in howto.SNIPPETS.values()]


@pytest.mark.parametrize("name", list(howto.SNIPPETS))
def test_every_stage_fix_matches_its_snippet_text(name):
    snippet = howto.SNIPPETS[name]
    for stage in snippet.stages:
        text = snippet.docs
        for fix in stage.fixes:
            text = fix.apply(text)
        compile(text, f"<{name}: {stage.label}>", "exec")
    assert howto.PAGE_ENDPOINT in snippet.docs and howto.PAGE_ENDPOINT in snippet.fixed


def test_a_rewrite_that_does_not_match_is_an_error():
    with pytest.raises(ValueError):
        howto.Rewrite("not in there", "x", "why").apply("print(1)")


# --- running text against the sidecar -----------------------------------------------------------------------------


def test_execute_records_calls_and_print_and_returns_the_exception_as_data(lab):
    source = (
        "import requests\n"
        'r = requests.get("http://localhost:3500/v1.0/state/statestore/never-saved", headers={"x": "1"})\n'
        "print('status', r.status_code)\n"
        "1 / 0\n"
    )
    run = howto.execute(source, lab, label="t")
    assert [(c.method, c.path, c.status, c.request_headers) for c in run.calls] == [
        ("GET", "/v1.0/state/statestore/never-saved", 204, {"x": "1"})
    ]
    assert run.printed == ["status 204"]
    assert (run.exception_type, run.exception_line) == ("ZeroDivisionError", "1 / 0")
    assert run.outcome.startswith("raised ZeroDivisionError")
    assert requests.get.__module__ == "requests.api"  # the snippet got a recorder; the real module is untouched


def test_a_loop_with_a_bare_except_is_stopped_at_the_timeout_without_a_thread(lab):
    source = (
        "import requests\n"
        "def call():\n"
        "    try:\n"
        '        return requests.get("http://localhost:3500/v1.0/healthz")\n'
        "    except:\n"
        "        return None\n"
        "while True:\n"
        "    call()\n"
        '    requests.get("http://localhost:3500/v1.0/healthz")\n'
    )
    threads = threading.active_count()
    run = howto.execute(source, lab, timeout=TIMEOUT)
    assert run.stopped and run.exception is None
    assert len(run.calls) > 2 and {c.status for c in run.calls} == {204}
    assert run.seconds < TIMEOUT + 5  # stopped at the next call after the deadline, not whenever
    assert threading.active_count() == threads


# --- what goes wrong in each snippet -------------------------------------------------------------------------------


def test_save_as_written_is_store_not_found_then_double_encoded_malformed_and_fixed_is_204(lab):
    save = howto.run("save", lab, timeout=TIMEOUT, progress=False)
    written, fixed_name = save.stages
    assert (written.calls[0].status, written.calls[0].error_code) == (400, "ERR_STATE_STORE_NOT_FOUND")
    assert codes(written)[0] == "store_not_found"
    assert (fixed_name.calls[0].status, fixed_name.calls[0].error_code) == (400, "ERR_MALFORMED_REQUEST")
    assert fixed_name.calls[0].request_body.startswith('"[{')  # a JSON string literal went over the wire
    assert codes(fixed_name)[0] == "double_encoded"
    assert fixed_name.after["k1"] is None
    assert save.fixed.statuses == ["POST 204"] and save.fixed.after["k1"] == "Some Data"
    assert save.fixed_ok


def test_get_reads_key1_after_k1_was_saved_gets_204_and_keyerror_and_ignores_the_header(lab):
    get = howto.run("get", lab, timeout=TIMEOUT, progress=False)
    missing = get.stage("store name fixed")
    assert missing.calls[0].status == 204 and missing.before["k1"] == "Some Data"
    assert missing.exception_type == "KeyError" and "headers['ETag']" in missing.exception_line
    assert codes(missing)[0] == "missing_key"
    header = get.stage("key fixed").calls[0]
    assert header.status == 200 and header.request_headers == {"consistency": "strong"}
    assert "consistency" not in header.query
    assert codes(get.stage("key fixed")) == ["header_ignored"]
    fixed = get.fixed.calls[0]
    assert (fixed.status, fixed.value, fixed.query) == (200, "Some Data", {"consistency": ["strong"]})
    assert get.fixed.printed[0].startswith("Some Data ")
    assert get.fixed_ok


def test_delete_of_key1_is_204_and_leaves_k1_while_the_fixed_delete_removes_it(lab):
    delete = howto.run("delete", lab, timeout=TIMEOUT, progress=False)
    wrong = delete.stage("store name fixed")
    assert wrong.statuses == ["DELETE 204"] and wrong.after["k1"] == "Some Data"
    assert codes(wrong)[0] == "deleted_nothing"
    assert delete.stage("key fixed").after["k1"] is None
    assert delete.fixed.calls[0].query == {"consistency": ["strong"]}
    assert delete.fixed_ok and delete.fixed.after["k1"] is None


def test_etag_template_raises_keyerror_from_format_before_any_save(lab):
    etag = howto.run("etag", lab, timeout=TIMEOUT, progress=False)
    fmt = etag.stage("key fixed")
    assert fmt.exception == "KeyError: ' \"key\"'"
    assert ".format(etag)" in fmt.exception_line
    assert fmt.statuses == ["GET 200"]  # no save was sent
    assert codes(fmt)[0] == "format_keyerror"
    unchecked = etag.stage("template fixed")
    assert unchecked.statuses == ["GET 200", "POST 400", "DELETE 204"] and unchecked.exception is None
    assert {"double_encoded", "unchecked"} <= set(codes(unchecked))
    stale = etag.stage("body fixed")
    assert stale.statuses == ["GET 200", "POST 204", "DELETE 409"] and stale.after["k1"] == "New Data"
    assert codes(stale)[0] == "stale_etag"


def test_fixed_etag_flow_saves_with_the_etag_refuses_it_when_stale_and_deletes_with_the_new_one(lab):
    etag = howto.run("etag", lab, timeout=TIMEOUT, progress=False)
    assert etag.fixed.statuses == ["GET 200", "POST 204", "POST 409", "GET 200", "DELETE 204"]
    first, second = etag.fixed.calls[0], etag.fixed.calls[3]
    assert first.response_headers["ETag"] != second.response_headers["ETag"]
    assert etag.fixed.calls[4].request_headers == {"If-Match": second.response_headers["ETag"]}
    assert etag.fixed_ok


def test_retry_loop_is_still_retrying_at_the_timeout_while_the_fixed_loop_saves_in_one_attempt(lab):
    threads = threading.active_count()
    retry = howto.run("retry", lab, timeout=TIMEOUT, progress=False)
    assert [r.exception_type for r in retry.stages[:3]] == ["KeyError", "KeyError", "KeyError"]
    assert codes(retry.stages[0])[0] == "store_not_found"
    assert retry.stages[0].calls[0].store == "<state_store_name>"
    rejected = retry.stage("template fixed")
    assert rejected.stopped and rejected.attempts > 1
    assert {c.status for c in rejected.calls if c.method == "POST"} == {400}
    assert codes(rejected)[0] == "endless_rejected"
    endless = retry.stage("body fixed")
    assert endless.stopped and endless.attempts > 1
    assert {c.status for c in endless.calls if c.method == "POST"} == {204}
    assert codes(endless)[0] == "endless_204" and retry.diagnosis == endless.diagnosis
    assert "still retrying after" in endless.outcome
    assert retry.fixed.attempts == 1 and retry.fixed.after["key1"] == "New Data"
    assert retry.fixed_ok
    assert threading.active_count() == threads


def test_summary_says_every_fixed_snippet_did_what_the_page_intended(lab):
    results = [howto.run(name, lab, timeout=TIMEOUT, progress=False) for name in howto.SNIPPETS]
    overview = howto.summary(results)
    assert overview.all_fixed_ok
    html = overview._repr_html_()
    assert html.count("<tr>") == 1 + len(results)
    for result in results:
        page = result._repr_html_()
        assert "Apache License 2.0" in page and "did what the page intended" in page


# --- where consistency is read ----------------------------------------------------------------------------------


def test_header_probe_shows_the_query_param_is_read_and_the_header_is_not(lab, api):
    probe = howto.header_probe(lab)
    assert (probe.query_delete.status, probe.query_delete.error_code) == (500, "ERR_STATE_DELETE")
    assert probe.header_delete.status == 204
    assert (probe.options_save.status, probe.header_save.status) == (204, 204)
    if api.store == "redis":  # the stack has one replica, so a strong save WAITs once
        assert (probe.options_save.redis_waits, probe.header_save.redis_waits) == (1, 0)
    else:
        assert not probe.waits_measured
    assert lab.client.get(lab.store_name, "howto-probe") is None


def test_lesson_00_offers_every_fixed_snippet_as_a_cell_to_edit_and_run() -> None:
    """The cells tagged ``snippet`` are our fixed versions, word for word but for the sidecar's address, so the code
    a learner edits is the code this module runs and checks (the lesson's headless run executes them)."""
    cells = json.loads((ROOT / "notebooks" / "00_howto_as_written.ipynb").read_text(encoding="utf-8"))["cells"]
    shown = ["".join(c["source"]) for c in cells if "snippet" in c.get("metadata", {}).get("tags", [])]
    page_address = '"http://localhost:3500/v1.0/state/{}".format(store_name)'
    expected = [getattr(howto_page, f"FIXED_{name}").rstrip("\n").replace(page_address,
                                                                          'DAPR + "/v1.0/state/{}".format(store_name)')
                for name in ("SAVE", "GET", "ETAG", "DELETE", "RETRY")]
    assert shown == expected
