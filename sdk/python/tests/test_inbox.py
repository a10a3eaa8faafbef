"""Issue 16, finding 6: a NATS user may receive replies only on ``_INBOX.<user>.>``. On a
nats-server of the test's own with the authorization ``tally-gateway nats-config`` generates,
where the gateway and the real ``tally-spend`` run as their own users, the SDK's ``connect``
helpers log in as ``agent-acme`` without naming an inbox prefix and their request/reply works:
publishes are acknowledged, the decider answers. A client on nats-py's default ``_INBOX``
gets no reply; an ``inbox_prefix`` given explicitly is used as given."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import pytest

from harness import NatsServer, Stack, stored_messages
from tally_sdk import llm_tokens_event
from tally_sdk.jetstream import NatsPublisher, connect, inbox_prefix, with_user_inbox
from tally_sdk.nats_spend import NatsSpendClient


@pytest.fixture(scope="module")
def restricted():
    stack = Stack("sdkinbox")
    server = None
    try:
        server = NatsServer(stack.config, ["acme", "globex"])
        stack.use_nats(server.url, server.users)
        stack.start(["rater", "spend", "gateway"])  # the gateway declares the usage stream
        yield stack, server, {"user": "agent-acme", "password": server.users["agent-acme"]}
    finally:
        stack.cleanup()
        if server is not None:
            server.stop()


def event(id: str):
    return llm_tokens_event(customer="acme", agent="bot-1", id=id, model="m1", kind="input", tokens=5)


def test_the_prefix_is_the_users_inbox_unless_given():
    assert inbox_prefix("agent-acme") == "_INBOX.agent-acme"
    assert with_user_inbox("nats://h:4222", {"user": "agent-acme"})["inbox_prefix"] == "_INBOX.agent-acme"
    assert with_user_inbox("nats://agent-acme:pw@h:4222", {})["inbox_prefix"] == "_INBOX.agent-acme"
    assert with_user_inbox(["nats://agent-acme:pw@h:4222"], {})["inbox_prefix"] == "_INBOX.agent-acme"
    assert with_user_inbox("nats://h:4222", {"user": "agent-acme", "inbox_prefix": "_INBOX.x"})["inbox_prefix"] == "_INBOX.x"
    assert "inbox_prefix" not in with_user_inbox("nats://h:4222", {})


def test_the_publisher_as_the_agents_user_gets_its_acks(restricted):
    stack, server, acme = restricted

    async def run():
        async with await NatsPublisher.connect(server.url, subject_prefix=stack.prefix, timeout=3,
                                               max_attempts=1, **acme) as publisher:
            result = await publisher.publish_many([event("inbox-1"), event("inbox-2")])
            resend = await publisher.publish(event("inbox-1"))
        return result, resend

    result, resend = asyncio.run(run())
    assert [v.status for v in result.verdicts] == ["accepted", "accepted"]
    assert resend.status == "duplicate"
    stored = asyncio.run(stored_messages(stack.stream, stack.prefix, "acme", url=server.url,
                                         user="tally-admin", password=server.users["tally-admin"]))
    assert [m.msg_id for m in stored] == ["acme:bot-1:inbox-1", "acme:bot-1:inbox-2"]


def test_the_spend_client_as_the_agents_user_gets_the_deciders_answers(restricted):
    stack, server, acme = restricted

    async def run():
        async with await NatsSpendClient.connect(server.url, subject_root=stack.spend_root, timeout=3,
                                                 **acme) as client:
            a = await client.authorize("acme", "bot-1", "llm_tokens", 100)
            assert a.allow and a.hold_id and not a.offline, a
            balance = await client.balance("acme")
            assert (balance["customer"], balance["holds"]) == ("acme", 1)
            assert await client.release("acme", "bot-1", a.hold_id) is True

    asyncio.run(run())


def test_the_default_inbox_gets_nothing_and_an_explicit_prefix_is_used_as_given(restricted):
    stack, server, acme = restricted

    async def run():
        # nats-py itself, no prefix: the reply subscription is refused, no ack arrives
        bare = await nats.connect(server.url, **acme)
        try:
            with pytest.raises(nats.errors.Error):
                await bare.jetstream().publish(f"{stack.prefix}.acme.bot-1", b"{}", timeout=1.5)
        finally:
            await bare.close()
        # a prefix of the user's own below _INBOX.agent-acme: answered there
        mine = await connect(server.url, inbox_prefix="_INBOX.agent-acme.mine", **acme)
        try:
            balance = await NatsSpendClient(mine, subject_root=stack.spend_root, timeout=3).balance("acme")
            assert balance["customer"] == "acme"
            # another customer's subjects are not the agent's to ask on: no answer
            assert await NatsSpendClient(mine, subject_root=stack.spend_root, timeout=1).balance("globex") is None
        finally:
            await mine.close()
        # a prefix the user may not receive on, given explicitly, is used: no answer arrives
        # (nats-py reports the refused subscription to its error callback only), so the
        # failure policy decides: closed, denied
        wrong = await connect(server.url, inbox_prefix="_INBOX", **acme)
        try:
            client = NatsSpendClient(wrong, subject_root=stack.spend_root, timeout=1)
            a = await client.authorize("acme", "bot-1", "llm_tokens", 1)
            assert (a.allow, a.reason, a.offline) == (False, "unavailable", True)
        finally:
            await wrong.close()

    asyncio.run(run())
