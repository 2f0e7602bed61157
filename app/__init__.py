"""loraserve: many LoRA adapters of one frozen base model behind one HTTP endpoint."""

import os

# Torch's CPU kernels run on libgomp, whose idle workers spin for 300,000 rounds after every
# parallel region before they sleep. In this service the event loop, the HTTP stack and those
# workers share the cores, so the spinning takes CPU from the requests. Under wrk on two cores,
# workers that sleep at once served 29% more one-row requests/s at c=64 than the default (33%
# more over 64 adapters), for 6% more model time on a lone 256-row batch (bench/spin.py). Set
# before torch loads libgomp, which reads it once; a value in the environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "0")
