"""Drives weir-test's mock upstream directly with the official `openai` and `anthropic` SDKs.

It proves that the mock's Responses API and Messages API shapes (streamed and whole, tool calls,
errors) are what the SDKs parse. Run it against a running mock:

    weir-mock --listen 127.0.0.1:18099 --api-key test
    python mock_sdk_shapes.py http://127.0.0.1:18099

Exits non-zero (with the failed assertion) on any mismatch, and prints a short summary.
"""

import json
import sys

import anthropic
import openai

base = sys.argv[1].rstrip("/")
if base.endswith("/v1"):
    base = base[: -len("/v1")]
oa = openai.OpenAI(base_url=f"{base}/v1", api_key="test", max_retries=0)
# The anthropic SDK appends /v1/messages itself.
an = anthropic.Anthropic(base_url=base, api_key="test", max_retries=0)


def answer(chunks):
    return "".join(f"tok{i} " for i in range(chunks))


def mock(directives):
    return {"x-mock": directives}


passed = []


def ok(name, *detail):
    passed.append(name)
    print("ok", name, *detail)


# ---- OpenAI Responses API ------------------------------------------------------------------

# Streamed, raw events.
stream = oa.responses.create(model="gpt-test", input="Say the tokens.", stream=True)
deltas, types, seqs, completed = [], [], [], None
for event in stream:
    types.append(event.type)
    seqs.append(event.sequence_number)
    if event.type == "response.output_text.delta":
        deltas.append(event.delta)
    elif event.type == "response.completed":
        completed = event.response
assert "".join(deltas) == answer(20), deltas
assert seqs == list(range(len(seqs))), seqs
assert types[:4] == [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
], types
assert types[-4:] == [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
], types
assert completed is not None and completed.status == "completed", completed
assert completed.usage.output_tokens == 20, completed.usage
assert completed.usage.input_tokens > 0, completed.usage
assert completed.usage.total_tokens == completed.usage.input_tokens + 20, completed.usage
assert completed.output_text == answer(20), completed.output_text
ok("responses.create(stream=True)", len(types), "events, usage", completed.usage.output_tokens)

# The streaming helper, which accumulates a final response.
with oa.responses.stream(
    model="gpt-test", input="Say the tokens.", instructions="Be brief.", extra_headers=mock("chunks=7")
) as stream:
    texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
    final = stream.get_final_response()
assert "".join(texts) == answer(7), texts
assert final.output_text == answer(7), final.output_text
assert final.status == "completed" and final.id.startswith("resp_mock_"), final
assert final.instructions == "Be brief.", final.instructions
assert final.output[0].type == "message" and final.output[0].content[0].text == answer(7), final.output
assert final.usage.output_tokens == 7, final.usage
ok("responses.stream() get_final_response", final.id)

# `max_output_tokens` caps the chunks.
with oa.responses.stream(model="gpt-test", input="x", max_output_tokens=3) as stream:
    final = stream.get_final_response()
assert final.output_text == answer(3) and final.usage.output_tokens == 3, final
assert final.max_output_tokens == 3, final.max_output_tokens
ok("responses max_output_tokens", final.usage.output_tokens)

# Not streamed.
response = oa.responses.create(model="gpt-test", input=[{"role": "user", "content": "Hi"}])
assert response.status == "completed", response
assert response.output_text == answer(20), response.output_text
assert response.usage.output_tokens == 20 and response.usage.input_tokens > 0, response.usage
assert response.model == "gpt-test" and response.tools == [] and response.parallel_tool_calls, response
ok("responses.create()", response.id)

# Retrieve and delete.
got = oa.responses.retrieve(response.id)
assert got.id == response.id and got.status == "completed", got
oa.responses.delete(response.id)
ok("responses.retrieve/delete", got.id)

# A tool call, streamed and not.
tools = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    }
]
with oa.responses.stream(
    model="gpt-test", input="Weather in Paris?", tools=tools, extra_headers=mock("tool=get_weather,chunks=4")
) as stream:
    pieces = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
    final = stream.get_final_response()
assert 1 <= len(pieces) <= 4 and "".join(pieces) == '{"city":"Paris"}', pieces
call = final.output[0]
assert call.type == "function_call" and call.name == "get_weather", call
assert json.loads(call.arguments) == {"city": "Paris"}, call.arguments
assert call.call_id.startswith("call_mock_"), call
assert final.tools[0].name == "get_weather", final.tools
ok("responses tool call (stream)", len(pieces), "pieces")

response = oa.responses.create(
    model="gpt-test", input="Weather in Paris?", tools=tools, extra_headers=mock("tool=get_weather")
)
call = response.output[0]
assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}, response.output
ok("responses tool call (whole)", call.call_id)

# Errors, OpenAI-shaped.
try:
    oa.responses.create(model="gpt-test", input="x", extra_headers=mock("fault=429,retry_after=1"))
    raise AssertionError("a 429 did not raise")
except openai.RateLimitError as e:
    assert e.status_code == 429 and e.code == "rate_limit_exceeded", e
ok("responses 429 -> RateLimitError")

# An in-band error event: the SDK yields it; there is no response.completed.
stream = oa.responses.create(
    model="gpt-test", input="x", stream=True, extra_headers=mock("chunks=5,fault=error_event_at:2")
)
events = list(stream)
assert events[-1].type == "error" and events[-1].code == "server_error", events[-1]
assert [e.sequence_number for e in events] == list(range(len(events))), events
assert sum(e.type == "response.output_text.delta" for e in events) == 2, events
try:
    with oa.responses.stream(
        model="gpt-test", input="x", extra_headers=mock("chunks=5,fault=error_event_at:2")
    ) as s:
        s.get_final_response()
    raise AssertionError("the helper completed a response without response.completed")
except RuntimeError:
    pass
ok("responses error_event_at:2")

# ---- Anthropic Messages API ----------------------------------------------------------------

messages = [{"role": "user", "content": "Say the tokens."}]

# The streaming helper.
with an.messages.stream(model="claude-test", max_tokens=100, messages=messages) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
assert text == answer(20), text
assert final.content[0].type == "text" and final.content[0].text == answer(20), final.content
assert final.stop_reason == "end_turn", final.stop_reason
assert final.usage.output_tokens == 20 and final.usage.input_tokens > 0, final.usage
assert final.id.startswith("msg_mock_") and final.model == "claude-test", final
ok("messages.stream() text_stream/get_final_message", final.id)

# Raw streamed events.
stream = an.messages.create(
    model="claude-test", max_tokens=5, messages=messages, system="Be brief.", stream=True
)
events = list(stream)
kinds = [e.type for e in events]
assert kinds == ["message_start", "content_block_start"] + ["content_block_delta"] * 5 + [
    "content_block_stop",
    "message_delta",
    "message_stop",
], kinds
assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == answer(5)
assert events[0].message.usage.input_tokens > 0, events[0]
assert events[-2].usage.output_tokens == 5 and events[-2].delta.stop_reason == "end_turn", events[-2]
ok("messages.create(stream=True) max_tokens caps", len(events), "events")

# Not streamed.
message = an.messages.create(model="claude-test", max_tokens=100, messages=messages)
assert message.content[0].text == answer(20) and message.stop_reason == "end_turn", message
assert message.usage.output_tokens == 20, message.usage
ok("messages.create()", message.id)

# Prefill: the answer continues after the assistant's text (Anthropic refuses trailing spaces).
prefilled = messages + [{"role": "assistant", "content": "tok0 tok1 tok2"}]
with an.messages.stream(
    model="claude-test", max_tokens=100, messages=prefilled, extra_headers=mock("chunks=6")
) as stream:
    final = stream.get_final_message()
assert final.content[0].text == " tok3 tok4 tok5 ", final.content
assert final.usage.output_tokens == 4, final.usage
message = an.messages.create(
    model="claude-test",
    max_tokens=100,
    messages=messages + [{"role": "assistant", "content": [{"type": "text", "text": "tok0 to"}]}],
    extra_headers=mock("chunks=3"),
)
assert message.content[0].text == "k1 tok2 ", message.content
assert message.usage.output_tokens == 2, message.usage
ok("messages prefill", final.usage.output_tokens, message.usage.output_tokens)

# A tool use, streamed and not.
anthropic_tools = [
    {
        "name": "get_weather",
        "description": "The weather in a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
with an.messages.stream(
    model="claude-test",
    max_tokens=100,
    messages=[{"role": "user", "content": "Weather in Paris?"}],
    tools=anthropic_tools,
    extra_headers=mock("tool=get_weather,chunks=5"),
) as stream:
    final = stream.get_final_message()
block = final.content[0]
assert block.type == "tool_use" and block.name == "get_weather", block
assert block.input == {"city": "Paris"} and block.id.startswith("toolu_mock_"), block
assert final.stop_reason == "tool_use" and final.usage.output_tokens == 5, final
ok("messages tool_use (stream)", block.id)

message = an.messages.create(
    model="claude-test",
    max_tokens=100,
    messages=[{"role": "user", "content": "Weather in Paris?"}],
    tools=anthropic_tools,
    extra_headers=mock("tool=get_weather"),
)
block = message.content[0]
assert block.type == "tool_use" and block.input == {"city": "Paris"}, message.content
assert message.stop_reason == "tool_use", message
ok("messages tool_use (whole)", block.id)

# Token counting.
count = an.messages.count_tokens(model="claude-test", messages=messages)
assert count.input_tokens > 0, count
ok("messages.count_tokens", count.input_tokens)

# Errors, Anthropic-shaped.
try:
    an.messages.create(model="claude-test", max_tokens=10, messages=messages, extra_headers=mock("fault=529"))
    raise AssertionError("a 529 did not raise")
except anthropic.APIStatusError as e:
    # `InternalServerError` in some SDK versions, its own `OverloadedError` in others.
    assert isinstance(e, getattr(anthropic, "OverloadedError", anthropic.InternalServerError)), type(e)
    assert e.status_code == 529, e.status_code
    assert e.body["error"]["type"] == "overloaded_error", e.body
ok("messages 529 -> overloaded_error")

for fault, kind, status in [
    ("429", anthropic.RateLimitError, 429),
    ("500", anthropic.InternalServerError, 500),
    ("context_length", anthropic.BadRequestError, 400),
]:
    try:
        an.messages.create(
            model="claude-test", max_tokens=10, messages=messages, extra_headers=mock(f"fault={fault}")
        )
        raise AssertionError(f"fault={fault} did not raise")
    except kind as e:
        assert e.status_code == status and e.body["type"] == "error", e.body
ok("messages 429/500/context_length")

try:
    anthropic.Anthropic(base_url=base, api_key="wrong", max_retries=0).messages.create(
        model="claude-test", max_tokens=10, messages=messages
    )
    raise AssertionError("a wrong key did not raise")
except anthropic.AuthenticationError as e:
    assert e.body["error"]["type"] == "authentication_error", e.body
ok("messages wrong key -> AuthenticationError")

# An in-band error event after two deltas.
got, raised = [], None
try:
    with an.messages.stream(
        model="claude-test", max_tokens=100, messages=messages, extra_headers=mock("chunks=5,fault=error_event_at:2")
    ) as stream:
        for t in stream.text_stream:
            got.append(t)
    raise AssertionError("error_event_at:2 did not raise")
except anthropic.APIStatusError as e:
    assert "overloaded_error" in str(e), e
    raised = type(e).__name__
assert got == ["tok0 ", "tok1 "], got
ok("messages error_event_at:2 raises", raised)

# `no_done`: no message_stop; the helper still has the accumulated message.
stream = an.messages.create(
    model="claude-test", max_tokens=100, messages=messages, stream=True, extra_headers=mock("chunks=2,fault=no_done")
)
kinds = [e.type for e in stream]
assert kinds[-1] == "message_delta" and "message_stop" not in kinds, kinds
ok("messages no_done")

print(f"all {len(passed)} checks passed")
