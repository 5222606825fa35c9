"""The OpenAI chat-completions form of a request: what maps onto /v1/assist, and what is
refused with the chat form's own field names (no Ray, no model)."""
import pytest

from personal.serving.openai_api import chat_completion, error_object, parse_chat_request
from personal.serving.routing import RequestError, ServeConfig

CFG = ServeConfig()
HELLO = [{"role": "user", "content": "Lights to 40 please."}]


def test_user_names_the_user_and_metadata_is_the_session_context():
    req, model = parse_chat_request({"model": "personal", "user": "persona_003",
                                     "metadata": {"time_of_day": "evening"},
                                     "messages": [{"role": "user", "content": "Hi"},
                                                  {"role": "assistant", "content": "Hello"},
                                                  {"role": "user", "content": "Lights on"}],
                                     "temperature": 0, "n": 1, "stream": False}, CFG)
    assert model == "personal" and req.user_id == "persona_003"
    assert req.meta == {"time_of_day": "evening"}
    assert [(m.role, m.text) for m in req.messages] == [("user", "Hi"), ("assistant", "Hello"),
                                                        ("user", "Lights on")]


def test_without_user_the_model_names_the_user():
    req, _ = parse_chat_request({"model": "persona_007", "messages": HELLO}, CFG)
    assert req.user_id == "persona_007" and req.meta is None


@pytest.mark.parametrize("body,field", [
    ({"messages": HELLO}, "model"),
    ({"model": "m", "messages": [{"role": "system", "content": "Be brief."}] + HELLO},
     "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
     "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": "  "}]}, "messages[0].content"),
    ({"model": "m", "messages": HELLO, "temperature": 0.7}, "temperature"),
    ({"model": "m", "messages": HELLO, "temperature": True}, "temperature"),
    ({"model": "m", "messages": HELLO, "n": 2}, "n"),
    ({"model": "m", "messages": HELLO, "stream": True}, "stream"),
    ({"model": "m", "messages": HELLO, "max_tokens": 5}, "max_tokens"),
    ({"model": "m", "messages": HELLO, "metadata": {"weather": "foggy"}}, "metadata.weather"),
    ({"model": "m", "messages": HELLO, "user": ""}, "user"),
    ({"model": "m", "messages": HELLO + [{"role": "assistant", "content": "ok"}]},
     "messages[1].role"),
])
def test_refused_naming_the_chat_field(body, field):
    with pytest.raises(RequestError) as err:
        parse_chat_request(body, CFG)
    assert err.value.field == field, str(err.value)


def test_the_completion_and_error_shapes():
    answer = {"text": "Lights set to 40%.", "adapter": "unified_lora", "latency_ms": 3.0,
              "experts": [{"name": "unified_lora", "weight": 1.0}], "retrieved": None,
              "actions": {"lights": {"brightness": 40}}}
    out = chat_completion("personal", answer)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Lights set to 40%."}
    assert out["personal"]["experts"] == answer["experts"]
    assert error_object(422, "bad", "n") == {"error": {"message": "bad", "type":
                                                       "invalid_request_error", "param": "n",
                                                       "code": None}}
    assert error_object(503, "later", None)["error"]["type"] == "server_error"
