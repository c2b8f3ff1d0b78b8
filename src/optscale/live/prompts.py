"""Prompt templates: how a dataset question becomes a request.

Chat endpoints get messages (the server applies the model's own chat template). Completion
endpoints get raw text, so the chat markup has to be written out here; ``chatml`` covers
Qwen, SmolLM2 and most open models, ``llama3`` the Llama 3 family and ``plain`` base models.
Templates use a literal ``{question}`` placeholder (replaced, not ``str.format``-ed, so the
braces of ``\\boxed{}`` need no escaping).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import InputError
from .types import Prompt

__all__ = ["BOXED_INSTRUCTION", "PromptTemplate", "CHAT_MARKUP", "render_markup"]

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
"""The instruction of the Qwen math models (and the paper's runs)."""

ChatMarkup = Literal["chatml", "llama3", "plain"]

CHAT_MARKUP: dict[str, tuple[str, str, str, str]] = {
    # (system block, user block, assistant opening, assistant closing)
    "chatml": ("<|im_start|>system\n{}<|im_end|>\n", "<|im_start|>user\n{}<|im_end|>\n", "<|im_start|>assistant\n",
               "<|im_end|>\n"),
    "llama3": ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{}<|eot_id|>",
               "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>",
               "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    "plain": ("{}\n\n", "{}\n\n", "", ""),
}


def render_markup(markup: str, messages: list[dict[str, str]], open_assistant: bool = True) -> str:
    """Chat messages written out in one model family's markup.

    With ``open_assistant`` the text ends where the model should start writing; otherwise a
    final assistant message is closed (as a reward model expects to read it).
    """
    if markup not in CHAT_MARKUP:
        raise InputError(f"unknown chat markup {markup!r}; choose from {', '.join(CHAT_MARKUP)}", "chat_markup")
    system, user, assistant, close = CHAT_MARKUP[markup]
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(system.replace("{}", m["content"]))
        elif m["role"] == "user":
            parts.append(user.replace("{}", m["content"]))
        else:
            parts.append(assistant + m["content"] + close)
    if open_assistant:
        parts.append(assistant)
    return "".join(parts)


@dataclass(frozen=True)
class PromptTemplate:
    """System prompt, user message template and (for completion endpoints) the chat markup."""

    user: str = "{question}\n" + BOXED_INSTRUCTION
    system: str | None = None
    markup: ChatMarkup = "chatml"

    def __post_init__(self) -> None:
        if "{question}" not in self.user:
            raise InputError("the prompt template must contain {question}", "template")
        if self.markup not in CHAT_MARKUP:
            raise InputError(f"unknown chat markup {self.markup!r}; choose from {', '.join(CHAT_MARKUP)}",
                             "chat_markup")

    def messages(self, question: str) -> list[dict[str, str]]:
        out = [{"role": "system", "content": self.system}] if self.system else []
        return out + [{"role": "user", "content": self.user.replace("{question}", question)}]

    def render(self, question: str) -> Prompt:
        """Both forms of the request; the generator sends the one its endpoint takes."""
        messages = self.messages(question)
        return Prompt(messages=tuple(messages), text=render_markup(self.markup, messages))
