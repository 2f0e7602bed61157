"""loraserve: many LoRA adapters of one frozen base model behind one HTTP endpoint."""

from app.startup.openmp import base_model_named, choose_spin

# libgomp reads its spin setting once, when torch loads it, so it is chosen here, from the
# base model the environment names (app.startup.openmp says why the families differ). The `loraserve`
# command chooses again from its --base-model before it imports torch (app.startup.launch).
choose_spin(base_model_named())
