"""lowrank_lab: measure the numerical linear algebra behind low-rank adapter initialisation.

Layers point one way: :mod:`lowrank_lab.linalg` (tensors only) ← :mod:`lowrank_lab.weights`
(checkpoint I/O) ← :mod:`lowrank_lab.adapters` ← :mod:`lowrank_lab.analysis` ← the command-line
modules (``python -m lowrank_lab.analyze``, ``.params``, ``.intruders``, ``.finetune``).
"""

__version__ = "0.1.0"
