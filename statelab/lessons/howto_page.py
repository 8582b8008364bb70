"""The Dapr docs page "How-To: Build a stateful service": its Python snippets verbatim, our fixed versions, and the
stages in which ``statelab.lessons.howto`` runs them (one more bug fixed per stage, each a visible text change).

Source of the snippets: dapr/docs,
``daprdocs/content/en/developing-applications/building-blocks/state-management/howto-stateful-service.md``
(unchanged since dapr/docs PR #2541, 2022; published at ``DOCS_URL``), © The Dapr Authors, Apache-2.0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DOCS_URL = "https://docs.dapr.io/developing-applications/building-blocks/state-management/howto-stateful-service/"
DOCS_SOURCE = (
    "https://github.com/dapr/docs/blob/v1.15/daprdocs/content/en/developing-applications/"
    "building-blocks/state-management/howto-stateful-service.md"
)
ATTRIBUTION = (
    'Snippets quoted verbatim from the Dapr documentation page "How-To: Build a stateful service" '
    "(dapr/docs, © The Dapr Authors, Apache License 2.0)."
)

# --- the page's snippets, verbatim ---------------------------------------------------------------------------
# Copied at authoring time from dapr/docs howto-stateful-service.md (see the module docstring), one string per
# ```python block, in page order. tests/lessons/test_howto.py checks them against the page when a copy is at hand.

DOCS_SAVE = """\
import requests
import json

store_name = "redis-store" # name of the state store as specified in state store component yaml file
dapr_state_url = "http://localhost:3500/v1.0/state/{}".format(store_name)
stateReq = '[{ "key": "k1", "value": "Some Data", "options": { "consistency": "strong" }}]'
response = requests.post(dapr_state_url, json=stateReq)
"""

DOCS_GET = """\
import requests
import json

store_name = "redis-store" # name of the state store as specified in state store component yaml file
dapr_state_url = "http://localhost:3500/v1.0/state/{}".format(store_name)
response = requests.get(dapr_state_url + "/key1", headers={"consistency":"strong"})
print(response.headers['ETag'])
"""

DOCS_DELETE = """\
import requests
import json

store_name = "redis-store" # name of the state store as specified in state store component yaml file
dapr_state_url = "http://localhost:3500/v1.0/state/{}".format(store_name)
response = requests.delete(dapr_state_url + "/key1", headers={"consistency":"strong"})
"""

DOCS_ETAG = """\
import requests
import json

store_name = "redis-store" # name of the state store as specified in state store component yaml file
dapr_state_url = "http://localhost:3500/v1.0/state/{}".format(store_name)
response = requests.get(dapr_state_url + "/key1", headers={"concurrency":"first-write"})
etag = response.headers['ETag']
newState = '[{ "key": "k1", "value": "New Data", "etag": {}, "options": { "concurrency": "first-write" }}]'.format(etag)

requests.post(dapr_state_url, json=newState)
response = requests.delete(dapr_state_url + "/key1", headers={"If-Match": "{}".format(etag)})
"""

DOCS_RETRY = """\
import requests
import json

# This method saves the state and returns false if failed to save state
def save_state(data):
    try:
        store_name = "redis-store" # name of the state store as specified in state store component yaml file
        dapr_state_url = "http://localhost:3500/v1.0/state/{}".format(store_name)
        response = requests.post(dapr_state_url, json=data)
        if response.status_code == 200:
            return True
    except:
        return False
    return False

# This method gets the state and returns the response, with the ETag in the header -->
def get_state(key):
    response = requests.get("http://localhost:3500/v1.0/state/<state_store_name>/{}".format(key), headers={"concurrency":"first-write"})
    return response

# Exit when save state is successful. success will be False if there's an ETag mismatch -->
success = False
while success != True:
    response = get_state("key1")
    etag = response.headers['ETag']
    newState = '[{ "key": "key1", "value": "New Data", "etag": {}, "options": { "concurrency": "first-write" }}]'.format(etag)

    success = save_state(newState)
"""

# --- the fixed versions (ours), in the page's style so they can be copied into a `dapr init` setup -----------

FIXED_SAVE = """\
import requests

store_name = "statestore"  # the component name; `dapr init` creates "statestore"
dapr_state_url = "http://localhost:3500/v1.0/state/{}".format(store_name)
stateReq = [{"key": "k1", "value": "Some Data", "options": {"consistency": "strong"}}]  # a list, not a string
response = requests.post(dapr_state_url, json=stateReq)  # requests encodes the list once
response.raise_for_status()  # success is 204 No Content
"""

FIXED_GET = """\
import requests

store_name = "statestore"
dapr_state_url = "http://localhost:3500/v1.0/state/{}".format(store_name)
response = requests.get(dapr_state_url + "/k1", params={"consistency": "strong"})  # the key saved above; a query param
response.raise_for_status()
if response.status_code == 200:
    print(response.json(), response.headers["ETag"])
else:  # 204: no such key, and no ETag header
    print("k1 is not there")
"""

FIXED_DELETE = """\
import requests

store_name = "statestore"
dapr_state_url = "http://localhost:3500/v1.0/state/{}".format(store_name)
response = requests.delete(dapr_state_url + "/k1", params={"consistency": "strong"})
response.raise_for_status()  # 204, also when the key was not there
"""

FIXED_ETAG = """\
import requests

store_name = "statestore"
dapr_state_url = "http://localhost:3500/v1.0/state/{}".format(store_name)
response = requests.get(dapr_state_url + "/k1")  # a GET has no concurrency option
etag = response.headers["ETag"]  # there because k1 exists (200)
newState = [{"key": "k1", "value": "New Data", "etag": etag, "options": {"concurrency": "first-write"}}]
response = requests.post(dapr_state_url, json=newState)
print("save with the etag just read:", response.status_code)  # 204
response = requests.post(dapr_state_url, json=newState)
print("the same save again, now with a stale etag:", response.status_code)  # 409
etag = requests.get(dapr_state_url + "/k1").headers["ETag"]  # the version our save made
response = requests.delete(dapr_state_url + "/k1", headers={"If-Match": etag})
print("delete with the current etag:", response.status_code)  # 204
"""

FIXED_RETRY = """\
import requests

store_name = "statestore"
dapr_state_url = "http://localhost:3500/v1.0/state/{}".format(store_name)

def save_state(data):
    \"\"\"True when saved, False on an ETag conflict (409); any other answer raises.\"\"\"
    response = requests.post(dapr_state_url, json=data)
    if response.status_code == 409:
        return False
    response.raise_for_status()  # success is 204
    return True

def get_state(key):
    return requests.get("{}/{}".format(dapr_state_url, key))

attempts = 0
success = False
while not success and attempts < 10:  # bounded: give up after 10 conflicts
    attempts += 1
    response = get_state("key1")
    etag = response.headers.get("ETag")  # None when key1 does not exist yet
    newState = [{"key": "key1", "value": "New Data", "etag": etag, "options": {"concurrency": "first-write"}}]
    success = save_state(newState)
print("saved:", success, "after", attempts, "attempt(s)")
"""


# --- how a stage changes the snippet ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rewrite:
    """One text change to a snippet before it runs, and why."""

    old: str
    new: str
    why: str

    def apply(self, source: str) -> str:
        if self.old not in source:
            raise ValueError(f"rewrite {self.old!r} does not match the snippet")
        return source.replace(self.old, self.new)


STORE_NAME_FIX = Rewrite('"redis-store"', '"statestore"', "use the store `dapr init` creates, `statestore`")
PLACEHOLDER_FIX = Rewrite("<state_store_name>", "statestore", "fill in the placeholder with the same store")
KEY_FIX = Rewrite('"/key1"', '"/k1"', "read the key the save wrote, `k1`")
ETAG_TEMPLATE_FIX = Rewrite(
    """'[{ "key": "k1", "value": "New Data", "etag": {}, "options": { "concurrency": "first-write" }}]'.format(etag)""",
    """json.dumps([{"key": "k1", "value": "New Data", "etag": etag, "options": {"concurrency": "first-write"}}])""",
    "build the JSON with `json.dumps` instead of `str.format` (still a string, as the page has it)",
)
ETAG_BODY_FIX = Rewrite(
    "requests.post(dapr_state_url, json=newState)",
    "requests.post(dapr_state_url, data=newState)",
    "send that string as the body (`data=`) instead of encoding it a second time (`json=`)",
)
RETRY_TEMPLATE_FIX = Rewrite(
    """'[{ "key": "key1", "value": "New Data", "etag": {}, "options": { "concurrency": "first-write" }}]'.format(etag)""",
    """json.dumps([{"key": "key1", "value": "New Data", "etag": etag, "options": {"concurrency": "first-write"}}])""",
    ETAG_TEMPLATE_FIX.why,
)
RETRY_BODY_FIX = Rewrite(
    "requests.post(dapr_state_url, json=data)", "requests.post(dapr_state_url, data=data)", ETAG_BODY_FIX.why
)


@dataclass(frozen=True)
class Stage:
    """One run of a snippet: the fixes applied so far (cumulative) and the store contents it starts from."""

    label: str
    fixes: tuple[Rewrite, ...] = ()
    given: tuple[tuple[str, str | None], ...] = ()  # (key, value) to set first; None = make sure it is absent


CLEAN = (("k1", None), ("key1", None))
K1_SAVED = (("k1", "Some Data"), ("key1", None))
KEY1_MISSING = (("key1", None),)
KEY1_SAVED = (("key1", "Some Data"),)


@dataclass(frozen=True)
class Snippet:
    name: str
    title: str
    intent: str
    docs: str
    fixed: str
    stages: tuple[Stage, ...]
    fixed_given: tuple[tuple[str, str | None], ...]
    fixed_expect: tuple[str, ...]  # "METHOD status" of each call the fixed snippet must make, in order
    fixed_after: dict[str, Any]  # the watched keys' values afterwards (None = absent)
    headline: int  # the stage whose diagnosis is this snippet's own lesson
    watch: tuple[str, ...] = ("k1", "key1")


SNIPPETS: dict[str, Snippet] = {
    s.name: s
    for s in (
        Snippet(
            "save", "Saving state", "Save k1 = 'Some Data' with strong consistency.", DOCS_SAVE, FIXED_SAVE,
            (Stage("as written", (), CLEAN), Stage("store name fixed", (STORE_NAME_FIX,), CLEAN)),
            CLEAN, ("POST 204",), {"k1": "Some Data"}, headline=1,
        ),
        Snippet(
            "get", "Getting state", "Read the state back with strong consistency and print its ETag.",
            DOCS_GET, FIXED_GET,
            (
                Stage("as written", (), K1_SAVED),
                Stage("store name fixed", (STORE_NAME_FIX,), K1_SAVED),
                Stage("key fixed", (STORE_NAME_FIX, KEY_FIX), K1_SAVED),
            ),
            K1_SAVED, ("GET 200",), {"k1": "Some Data"}, headline=1,
        ),
        Snippet(
            "delete", "Deleting state", "Delete the state with strong consistency.", DOCS_DELETE, FIXED_DELETE,
            (
                Stage("as written", (), K1_SAVED),
                Stage("store name fixed", (STORE_NAME_FIX,), K1_SAVED),
                Stage("key fixed", (STORE_NAME_FIX, KEY_FIX), K1_SAVED),
            ),
            K1_SAVED, ("DELETE 204",), {"k1": None}, headline=1,
        ),
        Snippet(
            "etag", "First-write-wins with an ETag",
            "Read the ETag, save a new value under first-write concurrency with it, then delete under that ETag.",
            DOCS_ETAG, FIXED_ETAG,
            (
                Stage("as written", (), K1_SAVED),
                Stage("store name fixed", (STORE_NAME_FIX,), K1_SAVED),
                Stage("key fixed", (STORE_NAME_FIX, KEY_FIX), K1_SAVED),
                Stage("template fixed", (STORE_NAME_FIX, KEY_FIX, ETAG_TEMPLATE_FIX), K1_SAVED),
                Stage("body fixed", (STORE_NAME_FIX, KEY_FIX, ETAG_TEMPLATE_FIX, ETAG_BODY_FIX), K1_SAVED),
            ),
            K1_SAVED, ("GET 200", "POST 204", "POST 409", "GET 200", "DELETE 204"), {"k1": None}, headline=2,
        ),
        Snippet(
            "retry", "Retrying on a version mismatch",
            "Retry a first-write save of key1 until no other writer got in between, then stop.",
            DOCS_RETRY, FIXED_RETRY,
            (
                Stage("as written", (), KEY1_MISSING),
                Stage("store names fixed", (STORE_NAME_FIX, PLACEHOLDER_FIX), KEY1_MISSING),
                Stage("key1 saved first", (STORE_NAME_FIX, PLACEHOLDER_FIX), KEY1_SAVED),
                Stage("template fixed", (STORE_NAME_FIX, PLACEHOLDER_FIX, RETRY_TEMPLATE_FIX), KEY1_SAVED),
                Stage("body fixed", (STORE_NAME_FIX, PLACEHOLDER_FIX, RETRY_TEMPLATE_FIX, RETRY_BODY_FIX), KEY1_SAVED),
            ),
            KEY1_SAVED, ("GET 200", "POST 204"), {"key1": "New Data"}, headline=4, watch=("key1",),
        ),
    )
}
