"""The examples `loraserve demo`, `text-demo` and `chat-demo` run against a service, over HTTP
only: the reference example on the seed model, a jargon adapter on a text encoder, and an SFT
chat adapter on a decoder."""
