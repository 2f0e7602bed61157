"""The causal-LM family: decoders that generate text (Llama, Qwen2, Mistral, GPT-2 layouts).

A base is a `save_pretrained` folder of a causal LM, or a `.gguf` file that app.families.decoder.gguf
converts once into such a folder. transformers (the `hf` extra) builds the module; the service
runs it with its own forward (app.families.decoder.generate.forward) so that a step can hold many sequences,
each with its own adapter and KV cache slot.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from app.errors import InvalidInput, shorten
from app.model.config import InvalidModelConfig

# model_type -> the forward layout app.families.decoder.generate.forward runs for it.
Layout = Literal["llama", "gpt2"]
LAYOUTS: dict[str, Layout] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gpt2": "gpt2",
}


@dataclass(frozen=True)
class CausalInfo:
    """What generation needs besides the module: tokenizer, template, limits, stop tokens."""

    tokenizer: Any  # a transformers tokenizer
    layout: Layout
    context_length: int
    vocab_size: int
    eos_token_ids: frozenset[int]
    chat_template: str | None

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    @cached_property
    def _control_texts(self) -> tuple[str, ...]:
        """The added tokens' strings (`<|im_end|>`), bar whitespace ones (Gemma's "\n")."""
        added = self.tokenizer.added_tokens_decoder.values()
        return tuple(t.content for t in added if t.special or not t.content.isspace())

    @cached_property
    def _can_sanitize(self) -> bool:
        # transformers added it in 5.x; older versions pass unknown keywords to the template
        # and would ignore it silently.
        signature = inspect.signature(self.tokenizer.apply_chat_template)
        return "sanitize_control_tokens" in signature.parameters

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        """A chat's token ids; by default with the assistant's turn opened, as a prompt.

        Only the template's own markers are control tokens: `<|im_end|>` written in a message
        is tokenized as text, so a tenant's user cannot close a turn and forge the next one.
        Serving and SFT both tokenize through here, so a trained adapter sees at serving
        time exactly the tokens it was trained on.
        """
        held = next((t for m in messages for t in self._control_texts if t in m["content"]), None)
        if held is None:  # the common case: exactly the ids HF's own path gives
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if not self._can_sanitize:
            raise InvalidInput(
                f"a message holds the control token {shorten(held)!r}; this transformers "
                "cannot tokenize it as text (it needs apply_chat_template's "
                "sanitize_control_tokens): upgrade transformers, or remove it",
                "messages",
            )
        try:
            ids = self.tokenizer.apply_chat_template(
                messages,
                tokenize=True,
                return_dict=False,
                add_generation_prompt=add_generation_prompt,
                sanitize_control_tokens=True,
            )
        except ValueError as exc:  # a tokenizer that makes the token from its own text
            raise InvalidInput(f"messages: {shorten(str(exc))}", "messages") from exc
        return list(ids)

    def encode_text(self, text: str) -> list[int]:
        """Text's token ids with no special tokens added; special tokens in it are parsed."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str) -> list[int]:
        """A completion prompt's token ids, special tokens added as the tokenizer does.

        Special tokens written in a raw prompt are control tokens, as in OpenAI's and vLLM's
        /v1/completions: the client writes the whole prompt, template markers included.
        """
        return list(self.tokenizer(text)["input_ids"])


def _eos_ids(model: nn.Module, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    if isinstance(getattr(tokenizer, "eos_token_id", None), int):
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def load_causal(folder: Path, dtype: torch.dtype) -> tuple[nn.Module, CausalInfo]:
    """The model (frozen, eval, Conv1D as Linear) and what generating with it needs."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise InvalidModelConfig(
            f"{folder} is a causal LM; serving it needs transformers: pip install -e '.[gen]'"
        ) from None
    from transformers.utils import logging as hf_logging

    from app.model.conv1d import convert_conv1d

    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InvalidModelConfig(f"cannot load the causal LM in {folder}: {exc}") from exc
    model_type = str(model.config.model_type)
    if model_type not in LAYOUTS:
        raise InvalidModelConfig(
            f"causal LM type {model_type!r} is not supported; supported: {sorted(LAYOUTS)}"
        )
    convert_conv1d(model)
    model.requires_grad_(False)
    model.eval()
    config = model.config
    context = int(
        getattr(config, "max_position_embeddings", None)
        or getattr(config, "n_positions", 1024)
        or 1024
    )
    # We attend over the whole context; a model trained with a sliding window is served within it.
    window = getattr(config, "sliding_window", None)
    if isinstance(window, int) and window > 0 and getattr(config, "use_sliding_window", True):
        context = min(context, window)
    template = getattr(tokenizer, "chat_template", None)
    info = CausalInfo(
        tokenizer=tokenizer,
        layout=LAYOUTS[model_type],
        context_length=context,
        vocab_size=int(config.vocab_size),
        eos_token_ids=_eos_ids(model, tokenizer),
        chat_template=template if isinstance(template, str) and template else None,
    )
    return model, info
