"""The OpenAI chat-completions form of a served run: `POST /v1/chat/completions`, the
convention vLLM and Ray Serve LLM expose multi-LoRA adapters through, so the `openai` client
and the tools built on it talk to a run unchanged.

How a request maps onto `/v1/assist`:
- `user` names the user (their adapter, cluster, router features); without it, `model` does
  (as vLLM names a LoRA adapter by `model`). `model` is required, as in the OpenAI API.
- `metadata` carries the session context: the fields of the data's `meta` (time_of_day,
  day_of_week, weather, ...), each one of its documented values; absent: unknown.
- `messages`: `user` and `assistant` turns with string `content`, ending with the user's.
  A `system` message is refused: the run's prompt format writes its own system text (from the
  session context), and a served answer must be the offline one.
- `temperature` 0, `n` 1 and `stream` false are accepted (what the server does); anything
  else is refused, naming the field: generation is greedy, one answer, not streamed.

The answer is /v1/assist's for the same turn: `choices[0].message.content` is its text, and
`personal` holds its adapter, experts, retrieved exchanges and parsed actions.

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="personal", user="persona_003",
        messages=[{"role": "user", "content": "Lights to 40 please."}],
        metadata={"time_of_day": "evening"})
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from personal.data.schema import META_FIELDS
from personal.serving.routing import (AssistRequest, RequestError, ServeConfig, _object,
                                      json_type, parse_request)

CHAT_FIELDS = ("model", "messages", "user", "metadata", "temperature", "n", "stream")
CHAT_MESSAGE_FIELDS = ("role", "content", "name")
#: Fields whose only accepted value is what the server does anyway: (is it that value, what
#: the value is, why).
FIXED = {"temperature": (lambda v: type(v) in (int, float) and v == 0, "0", "generation is greedy"),
         "n": (lambda v: type(v) is int and v == 1, "1", "one answer per request"),
         "stream": (lambda v: v is False, "false", "answers are not streamed")}


def _assist_field(name: str) -> str:
    """An /v1/assist field name as the chat form calls it (for error messages)."""
    name = name.replace(".text", ".content")
    if name == "user_id":
        return "user"
    return "metadata" + name[4:] if name.startswith("meta") else name


def parse_chat_request(body: Any, cfg: ServeConfig) -> tuple[AssistRequest, str]:
    """(the AssistRequest, the `model` named), or a RequestError naming the chat field."""
    body = _object(body, "body", CHAT_FIELDS, ("model", "messages"))
    model = body["model"]
    if not isinstance(model, str) or not model:
        raise RequestError("model", f"must be a non-empty string, got {json_type(model)}")
    for name, (accepted, value, why) in FIXED.items():
        if name in body and not accepted(body[name]):
            raise RequestError(name, f"only {value} is supported ({why}), got "
                                     f"{str(body[name])[:40]!r}")
    messages = body["messages"]
    if isinstance(messages, list):
        messages = [_chat_message(m, i) for i, m in enumerate(messages)]
    user = body.get("user", model)
    assist = {"user_id": user, "meta": body.get("metadata"), "messages": messages}
    try:
        return parse_request(assist, cfg), model
    except RequestError as err:
        raise RequestError(_assist_field(err.field),
                           str(err).split(": ", 1)[1]) from None


def _chat_message(item: Any, i: int) -> Any:
    """A chat message as an /v1/assist message (checks what the chat form adds)."""
    where = f"messages[{i}]"
    item = _object(item, where, CHAT_MESSAGE_FIELDS, ("role", "content"))
    if item["role"] == "system":
        raise RequestError(f"{where}.role", "system messages are not accepted: the run's "
                                            "prompt format writes its own system text; send "
                                            "the session context in `metadata`")
    if not isinstance(item["content"], str):
        raise RequestError(f"{where}.content", "must be a string (content parts are not "
                                               f"supported), got {json_type(item['content'])}")
    return {"role": item["role"], "text": item["content"]}


def chat_completion(model: str, answer: dict) -> dict:
    """The chat.completion object of an /v1/assist answer."""
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": answer["text"]}}],
            "personal": {k: answer[k] for k in ("adapter", "experts", "retrieved", "actions",
                                                "latency_ms")}}


def error_object(status: int, message: str, field: Any) -> dict:
    """The OpenAI API's error body, with the field at fault as `param`."""
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": field, "code": None}}


def chat_schema(cfg: ServeConfig) -> dict[str, Any]:
    """JSON schema of a chat-completions request body (for the OpenAPI description)."""
    message = {"type": "object", "additionalProperties": False, "required": ["role", "content"],
               "properties": {"role": {"type": "string", "enum": ["user", "assistant"]},
                              "content": {"type": "string", "minLength": 1, "pattern": r"\S",
                                          "maxLength": cfg.max_message_chars},
                              "name": {"type": "string"}}}
    meta = {"type": ["object", "null"], "additionalProperties": False,
            "description": "The session context (the data's meta fields).",
            "properties": {k: {"type": "string", "enum": list(v)} for k, v in META_FIELDS.items()}}
    return {"type": "object", "additionalProperties": False, "required": ["model", "messages"],
            "properties": {
                "model": {"type": "string", "minLength": 1,
                          "description": "Names the user when `user` is absent."},
                "user": {"type": "string", "minLength": 1, "maxLength": cfg.max_user_id_chars,
                         "description": "The user the answer is personalised for."},
                "metadata": meta,
                "messages": {"type": "array", "items": message, "minItems": 1,
                             "maxItems": cfg.max_messages,
                             "description": "The dialogue so far, ending with the user's "
                                            "message."},
                "temperature": {"type": "number", "enum": [0]},
                "n": {"type": "integer", "enum": [1]},
                "stream": {"type": "boolean", "enum": [False]}}}
