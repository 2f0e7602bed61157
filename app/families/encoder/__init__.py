"""The encoder family (`hf`): sentence embeddings (POST /v1/embeddings) as sentence-transformers
computes them; contrastive training on text pairs."""
