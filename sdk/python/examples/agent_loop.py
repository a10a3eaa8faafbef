"""An agent loop that asks Tally before each model call and stops when it is denied.

Each step declares the most tokens the call may use (``max_quantity``); an allowed answer
carries a hold, which the usage event of the call names (``hold_id``), so the committed usage
settles it to what the call really used. A denial (``budget_exceeded``: the customer's or this
agent's budget is spent; ``unavailable``: no decider answered and the client fails closed)
ends the loop. Environment: TALLY_GATEWAY_URL, TALLY_API_KEY, TALLY_CUSTOMER, TALLY_AGENT,
TALLY_STEPS (default 10).
"""

import os
import random

from tally_sdk import EventIds, FailClosed, HttpClient, SpendClient, llm_tokens_event

url, key = os.environ["TALLY_GATEWAY_URL"], os.environ["TALLY_API_KEY"]
customer, agent = os.environ["TALLY_CUSTOMER"], os.environ.get("TALLY_AGENT", "agent-1")
steps = int(os.environ.get("TALLY_STEPS", "10"))

spend = SpendClient(url, key, policy=FailClosed())
ids = EventIds(f"run-{random.getrandbits(64):016x}")  # the run's own id: stable across retries
with HttpClient(url, key) as usage:
    for step in range(steps):
        ok = spend.authorize(agent, "llm_tokens", 4000, group={"model": "gpt-4o", "kind": "output"})
        if not ok.allow:
            print(f"step {step}: stopped: {ok.reason} ({ok.detail})")
            break
        used = random.randint(500, 4000)  # the model call; its response says what it used
        usage.add(llm_tokens_event(customer=customer, agent=agent, id=ids.next(),
                                   model="gpt-4o", kind="output", tokens=used, hold_id=ok.hold_id))
        print(f"step {step}: allowed (hold {ok.hold_id}, {ok.remaining} left), used {used}")
    result = usage.flush()
assert result.ok, result.not_stored()
