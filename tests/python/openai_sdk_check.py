"""Drives weir with the official `openai` Python SDK.

Run by tests/tests/openai_sdk.rs against a live weir in front of the mock upstream:
    python openai_sdk_check.py BASE_URL
Exits non-zero (with the failed assertion) when the SDK sees anything but what the mock sent.
"""

import sys

import openai

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url, api_key="sk-client-side-key", max_retries=0)
expected = "".join(f"tok{i} " for i in range(20))
messages = [{"role": "user", "content": "Say the tokens."}]

# Streaming, as chat front ends use it.
stream = client.chat.completions.create(model="gpt-test", messages=messages, stream=True)
text, finish, chunks = "", None, 0
for chunk in stream:
    chunks += 1
    choice = chunk.choices[0]
    text += choice.delta.content or ""
    finish = choice.finish_reason or finish
assert text == expected, f"streamed text differs: {text!r}"
assert finish == "stop", finish
assert chunks == 21, chunks
print("ok streaming", chunks, "chunks")

# Streaming with usage.
stream = client.chat.completions.create(
    model="gpt-test", messages=messages, stream=True, stream_options={"include_usage": True}
)
usage = [c.usage for c in stream if c.usage is not None]
assert len(usage) == 1 and usage[0].completion_tokens == 20, usage
print("ok streaming usage", usage[0].completion_tokens)

# Not streaming.
completion = client.chat.completions.create(model="gpt-test", messages=messages)
assert completion.choices[0].message.content == expected, completion
assert completion.usage.completion_tokens == 20
print("ok non-streaming")

# Unknown model: the SDK's own error type, with OpenAI's code.
try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e.code
    print("ok unknown model ->", e.status_code, e.code)

# A stream cut mid-way raises in the SDK: never a short answer that looks complete.
stream = client.chat.completions.create(
    model="gpt-test",
    messages=messages,
    stream=True,
    extra_headers={"x-mock": "chunks=10,fault=reset_after:4"},
)
received = ""
try:
    for chunk in stream:
        if chunk.choices:
            received += chunk.choices[0].delta.content or ""
    raise AssertionError(f"a cut stream ended cleanly with {received!r}")
except openai.APIError as e:
    assert received == "tok0 tok1 tok2 tok3 ", received
    assert "before the answer was complete" in str(e.message), e.message
    print("ok cut stream raises:", type(e).__name__)

# One retry layer, not two: weir retried the 500 already and says `x-should-retry: false`, so
# the SDK (with its default max_retries=2) does not send it again (the Rust side counts the
# upstream calls: 2, not 6).
retrying = openai.OpenAI(base_url=base_url, api_key="sk-client-side-key")
try:
    retrying.chat.completions.create(
        model="gpt-test", messages=messages, extra_headers={"x-mock": "fault=500"}
    )
    raise AssertionError("a 500 was answered")
except openai.InternalServerError as e:
    assert e.response.headers.get("x-should-retry") == "false", e.response.headers
    print("ok no retry on top:", e.response.headers["x-weir-attempts"], "upstream attempts")
