"""tilde: CPU-only passage re-ranking with TILDEv2 contextualised exact-term-match weights.

Heavy dependencies (torch, transformers, flask) are imported only by the modules that need
them; importing :mod:`tilde` or :mod:`tilde.rank` pulls in numpy, numba and ``tokenizers`` only.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
