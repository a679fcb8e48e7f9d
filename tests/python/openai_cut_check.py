"""The official `openai` Python SDK against weir in front of a hostile upstream that cuts its
stream at chosen byte offsets (by a clean close and by a reset), with a healthy second target.

Run by tests/tests/openai_sdk.rs:
    python openai_cut_check.py BASE_URL EXPECTED_TEXT OFFSET [OFFSET ...]
For each offset and way to cut it: on the routes that continue by replay and by prefill, the SDK
streams exactly the whole answer; on the route with nothing to continue it, the SDK either
streams the whole answer (cut before the first token, failed over; or after the finish) or
raises. Never a JSON decode error, never a short answer that looks whole.
"""

import sys

import openai

base_url, expected = sys.argv[1], sys.argv[2]
offsets = [int(o) for o in sys.argv[3:]]
client = openai.OpenAI(base_url=base_url, api_key="sk-client-side-key", max_retries=0)
messages = [{"role": "user", "content": "Say the tokens."}]


def stream(model, end):
    text, ids, finish = "", set(), None
    for chunk in client.chat.completions.create(
        model=model, messages=messages, stream=True, extra_headers={"x-raw-end": end}
    ):
        ids.add(chunk.id)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, ids, finish


checked = raised = 0
for offset in offsets:
    for how in ("close", "reset"):
        end = f"{how}:{offset}"
        for model in ("gpt-replay", "gpt-prefill"):
            text, ids, finish = stream(model, end)
            assert text == expected, f"{model} {end}: {text!r}"
            assert len(ids) == 1, f"{model} {end}: ids {ids}"
            assert finish == "stop", f"{model} {end}: finish {finish}"
            checked += 1
        try:
            text, ids, finish = stream("gpt-none", end)
            assert text == expected and finish == "stop", f"gpt-none {end}: a short answer looked whole: {text!r}"
        except openai.APIError as e:
            # The SDK raises on the in-band error event: the answer is known to be cut.
            assert "before the answer was complete" in str(e), f"gpt-none {end}: {e!r}"
            raised += 1
        checked += 1
print("ok cuts", checked, "streams", raised, "raised")
