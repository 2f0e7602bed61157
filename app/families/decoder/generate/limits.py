"""What a generation request may ask for: 422s for what this server could never serve."""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import InvalidInput
from app.families.decoder.generate.cache import KVCache


@dataclass(frozen=True)
class RequestLimits:
    """The context, the KV cache's budget, the sequences one request may hold, and the
    vocabulary's longest token in characters."""

    context_length: int
    cache: KVCache
    max_per_request: int
    max_token_chars: int

    def check_text(self, characters: int, param: str) -> None:
        """422 for text so long that no tokenization could fit it in the context (no token
        stands for more characters than the longest), before a tokenizer spends seconds on it."""
        if characters > self.context_length * self.max_token_chars:
            raise InvalidInput(
                f"{param} is {characters} characters, more than the model's context of "
                f"{self.context_length} tokens could ever hold",
                param,
            )

    def check_fits(self, prompt_tokens: int, max_tokens: int) -> None:
        """422 for a sequence the context or the whole KV cache could never hold."""
        total = prompt_tokens + max_tokens
        if total > self.context_length:
            raise InvalidInput(
                f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is "
                f"{total} tokens, over the model's context of {self.context_length}",
                "max_tokens",
            )
        capacity = self.cache.capacity_tokens()
        if total > capacity:
            raise InvalidInput(
                f"the prompt plus max_tokens needs {total} tokens of KV cache; this server's "
                f"KV_CACHE_BYTES holds at most {capacity} for one sequence",
                "max_tokens",
            )

    def check_request(self, sizes: list[tuple[int, int]], param: str = "n") -> None:
        """422 for a request whose sequences (prompt tokens, max_tokens) could never all be
        served: one over the context, more than a request may hold, more KV than the budget."""
        for prompt_tokens, max_tokens in set(sizes):
            self.check_fits(prompt_tokens, max_tokens)
        reserved = [p + m for p, m in sizes]
        if len(reserved) > self.max_per_request:
            raise InvalidInput(
                f"the request asks for {len(reserved)} sequences (prompts times n); this "
                f"server takes at most {self.max_per_request} per request",
                param,
            )
        total, budget = sum(reserved), self.cache.budget_bytes // self.cache.bytes_per_token
        if total > budget:
            raise InvalidInput(
                f"the request's {len(reserved)} sequences reserve {total} tokens of KV cache "
                f"(prompt plus max_tokens each); this server's KV_CACHE_BYTES holds {budget}",
                "max_tokens",
            )
