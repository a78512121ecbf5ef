"""OpenAI-compatible chat-completions backend, for a planner served by vLLM (`vllm serve <model>`)
or any server that speaks the same API (`transformers serve`).

Structured output is requested the way vLLM reads it today: `structured_outputs: {"json": schema}` in
the request body (vLLM >= 0.12 dropped `guided_json` without an error, so it is never sent). Servers
that reject that key get OpenAI's `response_format` json_schema instead, then a plain request; the
reply is validated either way.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from typing import Literal

import numpy as np

from hybrid.types import PlanStep
from planners.subtask.planner import BackendError, VLMPlanner
from planners.subtask.replan import ReplanPolicy
from planners.subtask.transformers_backend import load_settings

log = logging.getLogger(__name__)

Structured = Literal["auto", "structured_outputs", "response_format", "none"]
_FALLBACK = {"structured_outputs": "response_format", "response_format": "none"}


def data_url(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class OpenAIChatBackend:
    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 30.0,
                 structured: Structured = "auto", max_tokens: int = 128, temperature: float = 0.0,
                 extra_body: dict | None = None):
        import httpx

        self.model, self.max_tokens, self.temperature = model, int(max_tokens), float(temperature)
        self.extra_body = dict(extra_body or {})
        # auto starts with vLLM's parameter and steps down when a server rejects it.
        self.structured = "structured_outputs" if structured == "auto" else structured
        self.fallback = structured == "auto"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, headers=headers)
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.client.close()

    def body(self, messages: list[dict], image: np.ndarray) -> dict:
        url = data_url(image)
        msgs = [{**m, "content": [({"type": "image_url", "image_url": {"url": url}} if c.get("type") == "image" else c)
                                  for c in m["content"]]} for m in messages]
        body = {"model": self.model, "messages": msgs, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "stream": False, **self.extra_body}
        schema = PlanStep.model_json_schema()
        if self.structured == "structured_outputs":
            body["structured_outputs"] = {"json": schema}
        elif self.structured == "response_format":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "PlanStep", "schema": schema, "strict": True}}
        return body

    def complete(self, messages: list[dict], image: np.ndarray) -> str:
        import httpx

        while True:
            try:
                resp = self.client.post("/chat/completions", json=self.body(messages, image))
            except httpx.TimeoutException:
                raise BackendError(f"no reply within {self.timeout_s:.3g} s", kind="timeout") from None
            except httpx.TransportError as err:
                raise BackendError(f"cannot reach the server: {type(err).__name__}: {err}") from None
            if resp.status_code < 400:
                return self._content(resp)
            detail = resp.text[:500]
            if self.fallback and resp.status_code in (400, 422) and self.structured in detail:
                log.warning("server rejected %s (%s); falling back", self.structured, resp.status_code)
                self.structured = _FALLBACK[self.structured]
                continue
            # 4xx is our request (not worth repeating); 5xx and 429 may pass on a retry.
            retryable = resp.status_code >= 500 or resp.status_code == 429
            raise BackendError(f"server answered {resp.status_code}: {detail}", retryable=retryable)

    @staticmethod
    def _content(resp) -> str:
        """Reply text from a JSON completion, or from server-sent events (some servers always stream)."""
        try:
            if resp.headers.get("content-type", "").startswith("text/event-stream"):
                parts = []
                for line in resp.text.splitlines():
                    if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                        for choice in json.loads(line[5:]).get("choices", []):
                            parts.append((choice.get("delta") or {}).get("content") or "")
                return "".join(parts)
            return resp.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise BackendError(f"malformed completion from the server: {type(err).__name__}: {err}; "
                               f"body {resp.text[:200]!r}") from None


def http_planner(base_url: str, model: str, api_key: str | None = None, timeout_s: float = 30.0,
                 structured: Structured = "auto", max_tokens: int = 128, prompt: dict | None = None,
                 vocabulary: list[str] | None = None, settings_from: str | None = None, max_attempts: int = 3,
                 retry_backoff_s: float = 0.5, replan: dict | ReplanPolicy | None = None,
                 extra_body: dict | None = None) -> VLMPlanner:
    """A `VLMPlanner` on a served model. ``settings_from``: a local copy of a planner trained here,
    whose saved prompt and vocabulary the served model expects."""
    saved = load_settings(settings_from)
    backend = OpenAIChatBackend(base_url, model, api_key, timeout_s, structured, max_tokens, extra_body=extra_body)
    return VLMPlanner(backend, prompt={**saved.get("prompt", {}), **dict(prompt or {})},
                      vocabulary=vocabulary if vocabulary is not None else saved.get("vocabulary"),
                      max_attempts=max_attempts, retry_backoff_s=retry_backoff_s, replan=replan)
