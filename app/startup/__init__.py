"""What a process settles before torch is imported: the OpenMP spin rule (openmp.py) and the
probe that tells a decoder base from any other without loading it (basekind.py). Neither
imports torch, and they are the only modules besides app/settings.py that read the environment
(libgomp reads its own variables once, when torch loads, so they must be set before)."""
