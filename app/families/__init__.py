"""The families of base models, each a unit in its own folder (mlp/, encoder/, decoder/), and
how a base model setting finds its family: `load_family(setting)`."""

from app.families.catalog import FAMILIES, detect, load_base_model, load_family
from app.families.family import Facts, Family

__all__ = ["FAMILIES", "Facts", "Family", "detect", "load_base_model", "load_family"]
