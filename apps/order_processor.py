"""order-processor: a tiny Dapr app, in the shape of Dapr's state management quickstart.

It saves three orders, reads one back, deletes one, and prints each step. Run it beside a sidecar:

    statelab run -- python apps/order_processor.py       # statelab's sidecar and a Redis of its own
    dapr run --app-id myapp --resources-path components/redis -- python apps/order_processor.py

It finds its sidecar where `dapr run` tells every app: DAPR_HTTP_PORT on 127.0.0.1 (DAPR_HTTP_ENDPOINT first, when
set, as the SDKs do). Any answer other than success stops it with a traceback and exit code 1.
"""

import os

import requests

sidecar = os.environ.get("DAPR_HTTP_ENDPOINT") or f"http://127.0.0.1:{os.environ.get('DAPR_HTTP_PORT', '3500')}"
state_url = f"{sidecar}/v1.0/state/statestore"
headers = {"dapr-api-token": os.environ["DAPR_API_TOKEN"]} if os.environ.get("DAPR_API_TOKEN") else {}
print(f"app id {os.environ.get('APP_ID', '?')}, sidecar {sidecar}")

for order_id in (1, 2, 3):
    order = {"orderId": order_id, "item": "coffee", "qty": order_id}
    requests.post(state_url, json=[{"key": f"order-{order_id}", "value": order}], headers=headers).raise_for_status()
    print(f"saved order-{order_id}: {order}")

resp = requests.get(f"{state_url}/order-1", headers=headers)
resp.raise_for_status()
print(f"read order-1: {resp.json()} (ETag {resp.headers['ETag']})")

requests.delete(f"{state_url}/order-3", headers=headers).raise_for_status()
print("deleted order-3")
