"""The models endpoints through the official `openai` Python SDK, as one client key sees them.

Run by tests/tests/openai_sdk.rs:  python openai_models_check.py BASE_URL KEY
The key may use the routes `gpt-a` and `team/b` only; weir also serves `gpt-secret`.
"""

import sys

import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)

listed = sorted(m.id for m in client.models.list())
assert listed == ["gpt-a", "team/b"], listed
print("ok models.list", listed)

model = client.models.retrieve("gpt-a")
assert (model.id, model.object, model.owned_by) == ("gpt-a", "model", "weir"), model
print("ok models.retrieve", model.id)

# A model id with a slash, as vLLM and OpenRouter name them.
assert client.models.retrieve("team/b").id == "team/b"
print("ok models.retrieve with a slash")

for hidden in ["gpt-secret", "no-such-model"]:
    try:
        client.models.retrieve(hidden)
        raise AssertionError(f"{hidden} was shown")
    except openai.NotFoundError as e:
        assert e.code == "model_not_found", e.code
print("ok models.retrieve of a model the key may not use -> 404 model_not_found")
