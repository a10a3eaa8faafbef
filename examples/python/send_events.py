#!/usr/bin/env python3
"""Send AI-agent usage to the Tally HTTP gateway with only the Python standard library.

    TALLY_GATEWAY_URL=http://127.0.0.1:8088 TALLY_API_KEY=tk_... \
        python3 examples/python/send_events.py --customer acme --agent support-bot-7

Builds a batch of CloudEvents (LLM tokens by model and kind, tool calls), gzips it, posts it
to POST /v1/events and prints the gateway's JSON answer. Retries are safe: every event keeps
its id, so a resent event is answered "duplicate" and counted once. It retries on 429 (after
Retry-After) and on 503 or a network error (with backoff), at most 5 times, and exits 0 only
when every event is accepted or duplicate. --run-id makes the ids deterministic.
"""

import argparse
import datetime
import gzip
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid


def cloudevent(event_id, customer, agent, event_type, data):
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": agent,  # the agent
        "subject": customer,  # the customer; must be the API key's customer
        "type": event_type,
        "time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": data,  # quantities as integers or decimal strings, never floats
    }


def usage_batch(customer, agent, run_id):
    steps = [
        ("llm.tokens", {"tokens": 1200, "model": "gpt-4o", "kind": "input"}),
        ("llm.tokens", {"tokens": 340, "model": "gpt-4o", "kind": "output"}),
        ("tool.call", {"tool": "search"}),
    ]
    return [
        cloudevent(f"{run_id}-{i}", customer, agent, event_type, data)
        for i, (event_type, data) in enumerate(steps)
    ]


def post(url, api_key, events, attempts=5):
    body = gzip.compress(json.dumps(events).encode("utf-8"))
    request = urllib.request.Request(
        url.rstrip("/") + "/v1/events",
        data=body,
        method="POST",
        headers={
            "Authorization": "Bearer " + api_key,
            "Content-Type": "application/cloudevents-batch+json",
            "Content-Encoding": "gzip",
        },
    )
    delay = 0.5
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as err:
            answer = json.load(err)
            if err.code == 429 and attempt + 1 < attempts:
                time.sleep(int(err.headers.get("Retry-After", "1")))
                continue
            if err.code == 503 and attempt + 1 < attempts:
                time.sleep(delay)
                delay *= 2
                continue
            return err.code, answer
        except urllib.error.URLError:
            if attempt + 1 == attempts:
                raise
            time.sleep(delay)
            delay *= 2
    raise RuntimeError("unreachable")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customer", required=True)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--run-id", default=str(uuid.uuid4()))
    args = parser.parse_args()
    url = os.environ.get("TALLY_GATEWAY_URL", "http://127.0.0.1:8088")
    api_key = os.environ["TALLY_API_KEY"]
    status, answer = post(url, api_key, usage_batch(args.customer, args.agent, args.run_id))
    print(json.dumps({"status": status, **answer}))
    stored = answer.get("accepted", 0) + answer.get("duplicates", 0)
    return 0 if status == 200 and stored == len(answer.get("results", [])) else 1


if __name__ == "__main__":
    sys.exit(main())
