"""lowrank_lab: measure the numerical linear algebra behind low-rank adapter initialisation.

Layers point one way: :mod:`lowrank_lab.linalg` (tensors only) ← :mod:`lowrank_lab.weights`
(checkpoint I/O) ← :mod:`lowrank_lab.adapters` ← :mod:`lowrank_lab.analysis` ← the command-line
modules (``python -m lowrank_lab.analyze``, ``.params``, ``.intruders``, ``.finetune``).
"""

import os as _os
import sys as _sys

# OpenMP threads busy-wait between parallel regions by default. On a CPU shared with anything else
# that turned a 30 ms SVD of a 384x384 matrix into 5 s and a MiniLM training step from 0.64 s into
# 2.2 s (measured on the 2-core dev machine under load); waiting passively costs nothing measurable
# on an idle machine. It only takes effect before torch loads its OpenMP runtime, which is why it
# lives here, ahead of every lowrank_lab import of torch; an explicit setting always wins.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
