"""Generating a chat reply with a causal LM and its own chat template: one function, two users.

`trainer eval` (the harness) and `trainer serve` (/chat, /v1/chat/completions) both render the
conversation with the tokenizer's chat template, generate, and decode only the new tokens. One
definition keeps what the harness scores and what the service answers the same computation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Settings:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy, so the same model and prompt always give the same answer
    top_p: float = 1.0
    seed: int | None = None  # sampling only: the torch seed set before generating

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "do_sample": self.sampling}


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int
    new_tokens: int
    finish_reason: str  # "stop" (end-of-turn token) or "length" (max_new_tokens reached) or "cancelled"


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The token ids of the conversation rendered for the assistant's next turn."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # the template adds BOS itself


class _Chunks:
    """A transformers streamer: decodes the new tokens as they come and hands each finished
    piece of text to `on_text` (a word or more at a time, never half a UTF-8 character)."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]):
        from transformers import TextStreamer  # deferred: a Hugging Face import waits for offline (and takes seconds)

        outer = self

        class _Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    outer.on_text(text)

        self.on_text = on_text
        self.streamer = _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def reply(
    net: Any,
    tokenizer: Any,
    messages: list[dict[str, str]],
    *,
    settings: Settings,
    rt: Any,
    ids: list[int] | None = None,
    on_text: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
) -> Reply:
    """Generate the assistant's reply to `messages`. `ids`: the prompt already tokenised
    (`prompt_ids`); `on_text`: called with each piece of text as it is generated; `cancel`: set
    it to stop generating at the next token (a client that went away)."""
    import torch  # deferred: seconds to import; only the work that needs it pays
    from transformers import StoppingCriteria, StoppingCriteriaList  # deferred: a Hugging Face import waits for offline (and takes seconds)

    ids = ids if ids is not None else prompt_ids(tokenizer, messages)
    input_ids = torch.tensor([ids], dtype=torch.long, device=rt.device)
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": settings.sampling,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if settings.sampling:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
    else:  # greedy: unset the model's own sampling defaults so transformers does not warn about them
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if on_text is not None:
        kwargs["streamer"] = _Chunks(tokenizer, on_text).streamer
    if cancel is not None:

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        kwargs["stopping_criteria"] = StoppingCriteriaList([_Cancelled()])
    with torch.inference_mode(), rt.autocast():
        out = net.generate(**kwargs)
    new = out[0, len(ids):].tolist()
    eos = tokenizer.eos_token_id
    if cancel is not None and cancel.is_set():
        reason = "cancelled"
    elif new and new[-1] == eos:
        reason = "stop"
    else:
        reason = "length" if len(new) >= settings.max_new_tokens else "stop"
    text = tokenizer.decode(new, skip_special_tokens=True)
    return Reply(text=text, prompt_tokens=len(ids), new_tokens=len(new), finish_reason=reason)
