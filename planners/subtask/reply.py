"""The planner's reply: `PlanStep` JSON, parsed and validated, with the errors a runtime can act on."""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import ValidationError

from hybrid.types import PlanStep

FaultKind = Literal["bad_reply", "timeout", "server_error"]


class BadReply(ValueError):
    """One reply that is not a usable `PlanStep` (the planner retries these)."""

    def __init__(self, kind: str, detail: str, text: str = ""):
        self.kind, self.detail, self.text = kind, detail, text
        shown = text if len(text) <= 120 else text[:117] + "..."
        super().__init__(f"{kind}: {detail}" + (f" (reply {shown!r})" if text else ""))


class PlannerFault(RuntimeError):
    """The planner could not produce a valid `PlanStep`; the runtime keeps the current subtask.

    ``kind`` is the last failure's kind; ``attempts`` says what went wrong on each attempt.
    """

    def __init__(self, kind: FaultKind, attempts: list[str]):
        self.kind, self.attempts = kind, list(attempts)
        super().__init__(f"planner {kind} after {len(attempts)} attempt(s): " + "; ".join(
            f"[{i + 1}] {a}" for i, a in enumerate(attempts)))


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive form used to match a reply against a vocabulary."""
    return " ".join(text.lower().split()).rstrip(".")


_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


def parse_reply(text: str, vocabulary: dict[str, str] | None = None) -> PlanStep:
    """Parse a model's reply into a `PlanStep`, or raise `BadReply`.

    Models often wrap JSON in a code fence or add a word around it, so the outermost ``{...}`` is
    taken. ``vocabulary`` maps ``normalize(text)`` to the canonical subtask; a subtask outside it is
    rejected (a known set of skills is what the executor can do).
    """
    raw = text.strip()
    if not raw:
        raise BadReply("empty", "the reply is empty")
    body = _FENCE.sub("", raw)
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        raise BadReply("invalid_json", "no JSON object in the reply", raw)
    try:
        data = json.loads(body[start:end + 1])
    except json.JSONDecodeError as err:
        raise BadReply("invalid_json", str(err), raw) from None
    if not isinstance(data, dict):
        raise BadReply("schema", f"expected a JSON object, got {type(data).__name__}", raw)
    try:
        step = PlanStep.model_validate(data)
    except ValidationError as err:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'reply'}: {e['msg']}" for e in err.errors())
        raise BadReply("schema", msgs, raw) from None
    if step.done:
        return step.model_copy(update={"subtask": None})
    subtask = " ".join(step.subtask.split())
    if vocabulary is not None:
        canonical = vocabulary.get(normalize(subtask))
        if canonical is None:
            raise BadReply("unknown_subtask", f"{subtask!r} is not in the planner's vocabulary", raw)
        subtask = canonical
    return step.model_copy(update={"subtask": subtask})


def reply_text(step: PlanStep) -> str:
    """The JSON text a model is trained to emit for ``step`` (compact, no reason)."""
    if step.done:
        return json.dumps({"done": True})
    return json.dumps({"subtask": step.subtask, "done": False})


def make_vocabulary(subtasks: list[str] | None) -> dict[str, str] | None:
    if subtasks is None:
        return None
    vocab = {normalize(s): " ".join(s.split()) for s in subtasks if s.strip()}
    if not vocab:
        raise ValueError("vocabulary: expected at least one non-empty subtask")
    return vocab
