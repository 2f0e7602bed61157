"""loraserve: many LoRA adapters of one frozen base model behind one HTTP endpoint."""

import os

from app.openmp import choose_spin

# libgomp reads its spin setting once, when torch loads it, so it is chosen here, from the
# base model the environment names (app.openmp says why the families differ). The `loraserve`
# command chooses again from its --base-model before it imports torch (app.launch).
choose_spin(os.environ.get("LORASERVE_BASE_MODEL"))
