"""An agent loop that asks Tally before each model call and stops when it is denied.

Each step declares the most tokens the call may use (``max_quantity``); an allowed answer
carries a hold, which the usage event of the call names (``hold_id``), so the committed usage
settles it. A call that used less than it declared gives the rest back: once its usage event
is stored, the loop releases the hold (otherwise the rest stays reserved until the hold
expires and can deny calls that would fit). A call that used all of it is not released: its
usage ends the hold. (Between a release and the commit of the call's usage, about one
aggregator batch, that usage is counted by no hold: docs/SDK.md.) A denial (``budget_exceeded``: the customer's or this agent's budget is
spent; ``unavailable``: no decider answered and the client fails closed) ends the loop.
Environment: TALLY_GATEWAY_URL, TALLY_API_KEY, TALLY_CUSTOMER, TALLY_AGENT, TALLY_STEPS
(default 10).
"""

import os
import random

from tally_sdk import EventIds, FailClosed, HttpClient, SpendClient, llm_tokens_event

MAX_TOKENS = 4000

url, key = os.environ["TALLY_GATEWAY_URL"], os.environ["TALLY_API_KEY"]
customer, agent = os.environ["TALLY_CUSTOMER"], os.environ.get("TALLY_AGENT", "agent-1")
steps = int(os.environ.get("TALLY_STEPS", "10"))

spend = SpendClient(url, key, policy=FailClosed())
ids = EventIds(f"run-{random.getrandbits(64):016x}")  # the run's own id: stable across retries
with HttpClient(url, key) as usage:
    for step in range(steps):
        ok = spend.authorize(agent, "llm_tokens", MAX_TOKENS, group={"model": "gpt-4o", "kind": "output"})
        if not ok.allow:
            print(f"step {step}: stopped: {ok.reason} ({ok.detail})")
            break
        used = random.randint(500, MAX_TOKENS)  # the model call; its response says what it used
        # the usage is stored before the rest of the hold goes back
        stored = usage.send([llm_tokens_event(customer=customer, agent=agent, id=ids.next(), model="gpt-4o",
                                              kind="output", tokens=used, hold_id=ok.hold_id)])
        assert stored.ok, stored.not_stored()
        released = ok.hold_id is not None and used < MAX_TOKENS and spend.release(agent, ok.hold_id)
        print(f"step {step}: allowed (hold {ok.hold_id}, {ok.remaining} left), used {used}"
              + (", released the rest" if released else ""))
