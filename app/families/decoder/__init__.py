"""The decoder family (`causal_lm`): OpenAI chat and completions, continuous batching across
adapters (generate/), SFT on chats, GGUF bases."""
