"""Token events from the usage block of an OpenAI- or Anthropic-style model response.

The events match the ``llm_tokens`` meter of ``config/tally.toml`` (type ``llm.tokens``,
``SUM`` of ``$.tokens`` grouped by ``$.model`` and ``$.kind``). Token kinds:

=============== =============================================================================
``input``       prompt tokens that were not read from a cache
``output``      completion tokens (OpenAI's reasoning tokens are part of them, as OpenAI bills)
``cached``      prompt tokens read from a cache (OpenAI ``cached_tokens``, Anthropic
                ``cache_read_input_tokens``)
``cache_write`` prompt tokens written to a cache (Anthropic ``cache_creation_input_tokens``)
=============== =============================================================================

Each kind counts once: OpenAI's ``prompt_tokens`` *include* the cached ones, so ``input`` is
``prompt_tokens - cached_tokens``; Anthropic's ``input_tokens`` exclude cache reads and writes.
Quantities are JSON integers. Event ids are ``<id_base>-<kind>``, with ``id_base`` the
response's own id by default, so handing the same response in again yields the same ids
(counted once).

Responses may be dicts (parsed JSON) or the objects of the ``openai`` and ``anthropic``
packages (attributes are read the same way).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from .events import CloudEvent, check_event_id, llm_tokens_event

__all__ = [
    "INPUT",
    "OUTPUT",
    "CACHED",
    "CACHE_WRITE",
    "TOKEN_KINDS",
    "anthropic_token_counts",
    "anthropic_token_events",
    "openai_token_counts",
    "openai_token_events",
    "token_events",
]

INPUT = "input"
OUTPUT = "output"
CACHED = "cached"
CACHE_WRITE = "cache_write"
#: Every kind, in the order events are emitted.
TOKEN_KINDS = (INPUT, OUTPUT, CACHED, CACHE_WRITE)

def _field(obj: Any, name: str) -> Any:
    """``obj[name]`` for mappings, ``obj.name`` for SDK objects; None when absent."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _count(obj: Any, name: str, what: str, required: bool = False) -> int:
    value = _field(obj, name)
    if value is None:
        if required:
            raise ValueError(f"usage block has no `{name}`")
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} `{name}` is {value!r}, expected a whole number of tokens")
    if value < 0:
        raise ValueError(f"{what} `{name}` is negative ({value})")
    return value


def _usage_of(response_or_usage: Any) -> Any:
    usage = _field(response_or_usage, "usage")
    return usage if usage is not None else response_or_usage


def openai_token_counts(response_or_usage: Any) -> Dict[str, int]:
    """Tokens by kind (``input``, ``output``, ``cached``) of an OpenAI usage block, either the
    Chat Completions form (``prompt_tokens``, ``completion_tokens``,
    ``prompt_tokens_details.cached_tokens``) or the Responses form (``input_tokens``,
    ``output_tokens``, ``input_tokens_details.cached_tokens``). Accepts the whole response."""
    usage = _usage_of(response_or_usage)
    if _field(usage, "prompt_tokens") is not None or _field(usage, "completion_tokens") is not None:
        prompt = _count(usage, "prompt_tokens", "OpenAI usage", required=True)
        output = _count(usage, "completion_tokens", "OpenAI usage", required=True)
        details = _field(usage, "prompt_tokens_details")
    elif _field(usage, "input_tokens") is not None:
        prompt = _count(usage, "input_tokens", "OpenAI usage", required=True)
        output = _count(usage, "output_tokens", "OpenAI usage", required=True)
        details = _field(usage, "input_tokens_details")
    else:
        raise ValueError(
            "not an OpenAI usage block: expected prompt_tokens/completion_tokens "
            "or input_tokens/output_tokens"
        )
    cached = _count(details, "cached_tokens", "OpenAI usage details")
    if cached > prompt:
        raise ValueError(f"cached_tokens ({cached}) exceed the prompt's tokens ({prompt})")
    return {INPUT: prompt - cached, OUTPUT: output, CACHED: cached}


def anthropic_token_counts(response_or_usage: Any) -> Dict[str, int]:
    """Tokens by kind (``input``, ``output``, ``cached``, ``cache_write``) of an Anthropic usage
    block (``input_tokens``, ``output_tokens``, ``cache_read_input_tokens``,
    ``cache_creation_input_tokens``). Accepts the whole message."""
    usage = _usage_of(response_or_usage)
    if _field(usage, "input_tokens") is None and _field(usage, "output_tokens") is None:
        raise ValueError("not an Anthropic usage block: expected input_tokens and output_tokens")
    return {
        INPUT: _count(usage, "input_tokens", "Anthropic usage", required=True),
        OUTPUT: _count(usage, "output_tokens", "Anthropic usage", required=True),
        CACHED: _count(usage, "cache_read_input_tokens", "Anthropic usage"),
        CACHE_WRITE: _count(usage, "cache_creation_input_tokens", "Anthropic usage"),
    }


def token_events(
    counts: Dict[str, int],
    *,
    customer: str,
    agent: str,
    model: str,
    id_base: str,
    time: Union[_dt.datetime, str, None] = None,
    include_zero: bool = False,
) -> List[CloudEvent]:
    """One ``llm.tokens`` event per kind in ``counts`` (kinds with 0 tokens are left out unless
    ``include_zero``), with ids ``<id_base>-<kind>``."""
    if not isinstance(model, str) or not model:
        raise ValueError("model must be a non-empty string")
    check_event_id(f"{id_base}-{CACHE_WRITE}")  # the longest id this base can produce
    events = []
    for kind, tokens in counts.items():
        if tokens == 0 and not include_zero:
            continue
        events.append(
            llm_tokens_event(
                customer=customer,
                agent=agent,
                id=f"{id_base}-{kind}",
                model=model,
                kind=kind,
                tokens=tokens,
                time=time,
            )
        )
    return events


def _response_events(
    counts: Callable[[Any], Dict[str, int]],
    response_or_usage: Any,
    customer: str,
    agent: str,
    model: Optional[str],
    id_base: Optional[str],
    time: Union[_dt.datetime, str, None],
) -> List[CloudEvent]:
    model = model if model is not None else _field(response_or_usage, "model")
    if not isinstance(model, str) or not model:
        raise ValueError("no model: pass model=... or the whole response (it names its model)")
    id_base = id_base if id_base is not None else _field(response_or_usage, "id")
    if not isinstance(id_base, str) or not id_base:
        raise ValueError("no id_base: pass id_base=... or the whole response (it has an id)")
    return token_events(
        counts(response_or_usage),
        customer=customer,
        agent=agent,
        model=model,
        id_base=id_base,
        time=time,
    )


def openai_token_events(
    response_or_usage: Any,
    *,
    customer: str,
    agent: str,
    model: Optional[str] = None,
    id_base: Optional[str] = None,
    time: Union[_dt.datetime, str, None] = None,
) -> List[CloudEvent]:
    """``llm.tokens`` events for an OpenAI response (Chat Completions or Responses API).
    ``model`` and ``id_base`` default to the response's ``model`` and ``id``."""
    return _response_events(
        openai_token_counts, response_or_usage, customer, agent, model, id_base, time
    )


def anthropic_token_events(
    response_or_usage: Any,
    *,
    customer: str,
    agent: str,
    model: Optional[str] = None,
    id_base: Optional[str] = None,
    time: Union[_dt.datetime, str, None] = None,
) -> List[CloudEvent]:
    """``llm.tokens`` events for an Anthropic message. ``model`` and ``id_base`` default to the
    message's ``model`` and ``id``."""
    return _response_events(
        anthropic_token_counts, response_or_usage, customer, agent, model, id_base, time
    )
