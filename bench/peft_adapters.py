"""What both per-request PEFT baselines share: every adapter folder of PEFT_ADAPTERS, loaded."""

from __future__ import annotations

import os
from pathlib import Path

from peft import PeftModel
from torch import nn


def load_all(base: nn.Module) -> PeftModel:
    """`base` with every PEFT adapter folder under PEFT_ADAPTERS loaded, named by its folder."""
    root = Path(os.environ["PEFT_ADAPTERS"])
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    model = PeftModel.from_pretrained(base, folders[0], adapter_name=folders[0].name)
    for folder in folders[1:]:
        model.load_adapter(folder, adapter_name=folder.name)
    return model.eval()
