"""The Hierarchical Reasoning Model (HRM): model, data, training and evaluation.

This package is the code that hrm-evolve evolves. It imports nothing from the engine
(`evolver`, `sandbox`, `proposals`, `smoketests`).
"""

__version__ = "0.1.0"
