"""The generation engine: paged KV cache with prefix caching, a fused decoder forward, continuous
batching with an adapter per sequence."""
