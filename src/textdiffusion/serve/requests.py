"""Request bodies of the server's endpoints, checked field by field (no torch, no web framework).

Each endpoint takes the OpenAI fields it supports, plus the diffusion settings as top-level
fields (the ``extra_body`` of the official client): ``steps``, ``sampler`` and that sampler's
options from the registry (``block_length``, ``threshold``, ...), ``seed``, ``guidance``,
``label``. Anything else is a 400 naming it: an unknown field, and an OpenAI field this server
does not support (``logit_bias``, ``tools``, ...), unless it carries that field's neutral value
(``"presence_penalty": 0``, ``"stop": null``: clients that send their defaults still work).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..sampling.registry import BASE, SAMPLERS, option_field, option_names


class BadRequest(UsageError):
    """A request the server refuses (HTTP ``status``), naming the field (``param``) at fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


# OpenAI fields this server does not implement, with the values that ask for nothing
UNSUPPORTED = {
    "logit_bias": (None, {}), "logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False),
    "best_of": (None, 1), "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
    "stop": (None, [], ""), "tools": (None, []), "tool_choice": (None, "none", "auto"), "functions": (None, []),
    "function_call": (None, "none", "auto"), "response_format": (None, {"type": "text"}),
    "parallel_tool_calls": (None,), "store": (None, False), "metadata": (None, {}),
    "service_tier": (None, "auto", "default"), "modalities": (None, ["text"]), "audio": (None,),
    "prediction": (None,), "reasoning_effort": (None,), "web_search_options": (None,), "verbosity": (None,),
}
OPENAI_SAMPLING = ("temperature", "top_p")  # OpenAI's own names for shared sampler settings
DIFFUSION = ("steps", "sampler", "seed", "guidance", "label", "top_k", *option_names(requests=True))
ENDPOINT_FIELDS = {
    "completions": ("model", "prompt", "suffix", "max_tokens", "n", "stream", "stream_options", "user",
                    *OPENAI_SAMPLING),
    "chat": ("model", "messages", "max_tokens", "max_completion_tokens", "n", "stream", "stream_options", "user",
             *OPENAI_SAMPLING),
    "fim": ("model", "prompt", "suffix", "max_tokens", "n", "stream", "stream_options", "user", *OPENAI_SAMPLING),
    "infill": ("model", "template", "n", "candidates", "stream", "stream_options", "user", *OPENAI_SAMPLING),
    "edit": ("model", "text", "span", "strength", "n", "stream", "stream_options", "user", *OPENAI_SAMPLING),
}
MAX_N = 16
ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat", "/v1/fim/completions": "fim",
             "/v1/infill": "infill", "/v1/edit": "edit"}  # POST path -> the endpoint its body is parsed as


@dataclass
class Parsed:
    """A checked request: the task's arguments and how to answer."""

    endpoint: str
    model: str | None
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    include_denoising: bool = False
    length: int | None = None  # max_tokens: the canvas length
    prompt: str = ""
    suffix: str | None = None
    messages: list[tuple[str, str]] = field(default_factory=list)
    template: str = ""
    text: str = ""
    span: tuple[int, int] | None = None
    strength: float = 0.5
    candidates: int = 4
    settings: dict[str, Any] = field(default_factory=dict)  # steps, sampler, seed, options (None = unset)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def get_int(body: dict, name: str, low: int, high: int | None = None, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if not _whole(value) or value < low or (high is not None and value > high):
        upto = f" and <= {high}" if high is not None else ""
        raise BadRequest(f"{name} must be a whole number >= {low}{upto}; got {value!r}", name)
    return value


def get_float(body: dict, name: str, low: float, high: float, default=None, open_low: bool = False):
    value = body.get(name, default)
    if value is None:
        return default
    if not _number(value) or value < low or value > high or (open_low and value == low):
        side = ">" if open_low else ">="
        raise BadRequest(f"{name} must be a number {side} {low:g} and <= {high:g}; got {value!r}", name)
    return float(value)


def get_str(body: dict, name: str, required: bool = False, default=None):
    value = body.get(name, default)
    if value is None:
        if required:
            raise BadRequest(f"{name} is required", name)
        return default
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string; got {type(value).__name__}", name)
    return value


def check_fields(body: dict, endpoint: str) -> None:
    allowed = set(ENDPOINT_FIELDS[endpoint]) | set(DIFFUSION)
    for name, value in body.items():
        if name in allowed:
            continue
        if name in UNSUPPORTED:
            if value in UNSUPPORTED[name]:
                continue
            raise BadRequest(f"{name} is an OpenAI option this server does not support: remove it", name)
        known = ", ".join(ENDPOINT_FIELDS[endpoint])
        raise BadRequest(f"unknown field {name!r} (this endpoint takes {known}, and the diffusion settings "
                         f"steps, sampler, seed, guidance, label and the sampler's options)", name)


def sampler_settings(body: dict, max_steps: int) -> dict[str, Any]:
    """steps, sampler, seed, guidance, label and the sampler options (unset: None), each checked."""
    out: dict[str, Any] = {"steps": get_int(body, "steps", 1, max_steps), "seed": get_int(body, "seed", -2**63, 2**63 - 1)}
    sampler = get_str(body, "sampler")
    if sampler is not None and sampler not in SAMPLERS:
        raise BadRequest(f"unknown sampler {sampler!r} (choose {', '.join(SAMPLERS)})", "sampler")
    out["sampler"] = sampler
    out["guidance"] = get_float(body, "guidance", 0.0, 1e3, default=0.0)
    out["label"] = get_str(body, "label")
    for name in (*BASE, *option_names(requests=True)):
        value = body.get(name)
        if value is None:
            out[name] = None
            continue
        from ..sampling.registry import check_temperature, check_value, options_named

        try:
            with options_named("name"):
                check_value(option_field(name), value)
                if name == "temperature":
                    check_temperature(value)
        except UsageError as exc:
            raise BadRequest(str(exc), name) from None
        out[name] = value
    return out


def parse(body: Any, endpoint: str, *, context: int, max_steps: int) -> Parsed:
    """Check ``body`` (decoded JSON) for ``endpoint`` (completions, chat, fim, infill, edit)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    check_fields(body, endpoint)
    p = Parsed(endpoint, get_str(body, "model"))
    p.n = get_int(body, "n", 1, MAX_N, default=1)
    p.settings = sampler_settings(body, max_steps)
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest(f"stream must be true or false; got {stream!r}", "stream")
    p.stream = bool(stream)
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise BadRequest("stream_options must be an object", "stream_options")
        for key, value in opts.items():
            if key not in ("include_usage", "include_denoising"):
                raise BadRequest(f"unknown stream option {key!r} (include_usage, include_denoising)", "stream_options")
            if not isinstance(value, bool):
                raise BadRequest(f"stream_options.{key} must be true or false", "stream_options")
        if not p.stream:
            raise BadRequest("stream_options needs stream: true", "stream_options")
        p.include_usage = opts.get("include_usage", False)
        p.include_denoising = opts.get("include_denoising", False)
    length_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    p.length = get_int(body, length_name, 1, context)
    if endpoint in ("completions", "fim"):
        prompt = body.get("prompt", "")
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                raise BadRequest("prompt must be a string (or a list of one string): send one prompt per request",
                                 "prompt")
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string (token ids are not accepted)", "prompt")
        p.prompt = prompt
        p.suffix = get_str(body, "suffix", required=endpoint == "fim")
    elif endpoint == "chat":
        p.messages = parse_messages(body.get("messages"))
    elif endpoint == "infill":
        p.template = get_str(body, "template", required=True)
        p.candidates = get_int(body, "candidates", 1, MAX_N, default=4)
    elif endpoint == "edit":
        p.text = get_str(body, "text", required=True)
        span = body.get("span")
        if span is not None:
            if not (isinstance(span, list) and len(span) == 2 and all(_whole(v) for v in span)):
                raise BadRequest("span must be [start, end], character offsets into text (or mark the span "
                                 "with [EDIT]...[/EDIT])", "span")
            p.span = (span[0], span[1])
        p.strength = get_float(body, "strength", 0.0, 1.0, default=0.5, open_low=True)
    return p


def parse_messages(messages: Any) -> list[tuple[str, str]]:
    """The conversation as (role, text) pairs: user and assistant turns, ending with the user's."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a role and a content", "messages")
        role, content = m["role"], m.get("content")
        if role not in ("user", "assistant"):
            raise BadRequest(f"messages[{i}] has role {role!r}: this model was tuned on user and assistant turns "
                             f"only; put instructions in the user message", "messages")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
                       for c in content):
                raise BadRequest(f"messages[{i}].content parts must all be text", "messages")
            content = "".join(c["text"] for c in content)
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string", "messages")
        extra = set(m) - {"role", "content", "name"}
        if extra:
            raise BadRequest(f"messages[{i}] has unsupported fields: {', '.join(sorted(extra))}", "messages")
        out.append((role, content))
    for i, (role, _) in enumerate(out):
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise BadRequest("messages must alternate user, assistant, user, ... and start with the user", "messages")
    if out[-1][0] != "user":
        raise BadRequest("the last message must be the user's", "messages")
    return out
