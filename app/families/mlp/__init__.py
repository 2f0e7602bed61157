"""The `mlp` family: vectors in, vectors out (POST /v1/predict); our own config.json, the
embedded seed model, regression training."""
