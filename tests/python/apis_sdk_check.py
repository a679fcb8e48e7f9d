"""The official `openai` (Responses API) and `anthropic` (Messages API) Python SDKs through weir.

Run by tests/tests/apis_sdk.rs:
    python apis_sdk_check.py WEIR_ADDR CLIENT_KEY
The routes (see the Rust test): `gpt-r`, `claude` whole; `gpt-r-429`, `claude-529` whose first
target refuses; `gpt-r-cut`, `claude-cut` whose first target resets after 3 tokens and whose
second continues the answer; `gpt-r-none`, `claude-none` whose second does not.
Prints `ok ...` per step; exits non-zero on the first failed assertion.
"""

import sys

import anthropic
import openai

addr, key = sys.argv[1], sys.argv[2]
oa = openai.OpenAI(base_url=f"http://{addr}/v1", api_key=key, max_retries=0)
an = anthropic.Anthropic(base_url=f"http://{addr}", api_key=key, max_retries=0)


def expected(n):
    return "".join(f"tok{i} " for i in range(n))


WHOLE = expected(20)

# --- OpenAI's Responses API (a 429 with `Retry-After: 1` is waited out on its target for the
# default three attempts, then the next target answers: four in all) ---

text, completed, seqs, ids = "", None, [], set()
for event in oa.responses.create(model="gpt-r", input="Say the tokens.", stream=True):
    seqs.append(event.sequence_number)
    if event.type == "response.output_text.delta":
        text += event.delta
    if event.type in ("response.created", "response.completed"):
        ids.add(event.response.id)
    if event.type == "response.completed":
        completed = event.response
assert text == WHOLE, text
assert completed is not None and completed.status == "completed"
assert completed.usage.output_tokens == 20, completed.usage
assert completed.usage.total_tokens == completed.usage.input_tokens + 20
assert seqs == list(range(len(seqs))), seqs
assert len(ids) == 1, ids
print("ok responses.create(stream=True)", len(seqs), "events")

with oa.responses.stream(model="gpt-r", input="Say the tokens.") as stream:
    deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
    final = stream.get_final_response()
assert "".join(deltas) == WHOLE and final.output_text == WHOLE, final.output_text
print("ok responses.stream get_final_response")

whole = oa.responses.create(model="gpt-r", input="Say the tokens.")
assert whole.output_text == WHOLE and whole.usage.output_tokens == 20, whole
print("ok responses.create whole", whole.usage.total_tokens, "tokens")

again = oa.responses.retrieve(whole.id)
assert again.id == whole.id, again
deleted = oa.responses.delete(whole.id)
print("ok responses.retrieve and delete at the provider that made it")

arguments = ""
for event in oa.responses.create(
    model="gpt-r", input="Weather?", stream=True, extra_headers={"x-mock": "tool=get_weather"},
    tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
):
    if event.type == "response.function_call_arguments.delta":
        arguments += event.delta
    if event.type == "response.completed":
        call = event.response.output[0]
assert arguments == '{"city":"Paris"}' and call.type == "function_call" and call.name == "get_weather", (arguments, call)
print("ok responses tool call")

try:
    oa.responses.create(model="no-such-model", input="hi")
    raise AssertionError("an unknown model was answered")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e.body
print("ok responses unknown model -> 404 model_not_found")

raw = oa.responses.with_raw_response.create(model="gpt-r-429", input="hi", stream=True)
text = "".join(e.delta for e in raw.parse() if e.type == "response.output_text.delta")
assert text == WHOLE and raw.headers.get("x-weir-attempts") == "4", (text, raw.headers)
print("ok responses 429 failed over before the first token, attempts", raw.headers.get("x-weir-attempts"))

text, seqs, ids, items = "", [], set(), set()
for event in oa.responses.create(model="gpt-r-cut", input="hi", stream=True, store=False):
    seqs.append(event.sequence_number)
    if event.type == "response.output_text.delta":
        text += event.delta
        items.add(event.item_id)
    if event.type in ("response.created", "response.completed"):
        ids.add(event.response.id)
assert text == WHOLE, text
assert seqs == list(range(len(seqs))), seqs
assert len(ids) == 1 and len(items) == 1, (ids, items)
print("ok responses cut after the first token rescued by replay:", len(seqs), "events, one response")

raised = None
seen = []
try:
    for event in oa.responses.create(model="gpt-r-none", input="hi", stream=True, store=False):
        seen.append(event.type)
except Exception as e:  # the SDK's or httpx's: the stream is known to be cut
    raised = e
assert "response.completed" not in seen, seen
assert raised is not None or "error" in seen, seen
print("ok responses cut with nothing to continue ends honestly:", type(raised).__name__ if raised else "error event")

# --- Anthropic's Messages API -------------------------------------------------------------

messages = [{"role": "user", "content": "Say the tokens."}]
with an.messages.stream(model="claude", max_tokens=64, messages=messages) as stream:
    text = "".join(stream.text_stream)
    message = stream.get_final_message()
assert text == WHOLE and message.content[0].text == WHOLE, text
assert message.stop_reason == "end_turn" and message.usage.output_tokens == 20, message
print("ok messages.stream text_stream and get_final_message")

message = an.messages.create(model="claude", max_tokens=64, messages=messages)
assert message.content[0].text == WHOLE and message.usage.output_tokens == 20, message
print("ok messages.create whole")

types = [e.type for e in an.messages.create(model="claude", max_tokens=64, messages=messages, stream=True)]
assert types[0] == "message_start" and types[-1] == "message_stop", types
print("ok messages.create(stream=True)", len(types), "events")

with an.messages.stream(
    model="claude", max_tokens=64, messages=[{"role": "user", "content": "Weather?"}],
    tools=[{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
    extra_headers={"x-mock": "tool=get_weather"},
) as stream:
    message = stream.get_final_message()
use = message.content[0]
assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}, message
assert message.stop_reason == "tool_use"
print("ok messages tool use")

try:
    an.messages.create(model="no-such-model", max_tokens=8, messages=messages)
    raise AssertionError("an unknown model was answered")
except anthropic.NotFoundError as e:
    assert e.body["type"] == "error" and e.body["error"]["type"] == "not_found_error", e.body
print("ok messages unknown model -> 404 not_found_error in Anthropic's shape")

try:
    anthropic.Anthropic(base_url=f"http://{addr}", api_key="sk-wrong", max_retries=0).messages.create(
        model="claude", max_tokens=8, messages=messages
    )
    raise AssertionError("a wrong key was let in")
except anthropic.AuthenticationError as e:
    assert e.body["error"]["type"] == "authentication_error", e.body
print("ok messages wrong key -> 401 authentication_error")

with an.messages.stream(model="claude-529", max_tokens=64, messages=messages) as stream:
    text = "".join(stream.text_stream)
assert text == WHOLE, text
print("ok messages 529 failed over before the first token")

with an.messages.stream(model="claude-cut", max_tokens=64, messages=messages) as stream:
    text = "".join(stream.text_stream)
    message = stream.get_final_message()
assert text == WHOLE and message.content[0].text == WHOLE, text
# The continuation counts its own tokens (here also the space the prefill could not carry),
# weir adds the deltas the client had: close to, not exactly, one answer's count.
assert 20 <= message.usage.output_tokens <= 21, message.usage
print("ok messages cut after the first token rescued by prefill, output_tokens", message.usage.output_tokens)

try:
    with an.messages.stream(model="claude-none", max_tokens=64, messages=messages) as stream:
        text = "".join(stream.text_stream)
    raise AssertionError(f"a cut answer looked whole: {text!r}")
except anthropic.APIError as e:
    assert "before the answer was complete" in str(e), repr(e)
print("ok messages cut with nothing to continue raises")

count = an.messages.count_tokens(model="claude", messages=messages)
assert count.input_tokens > 0, count
print("ok messages.count_tokens", count.input_tokens)
