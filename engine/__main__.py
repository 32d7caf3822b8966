"""``python -m errands``: the command line (it lives in errands.adapters).

Imported by name at run time, so the core never imports an adapter statically.
"""

from __future__ import annotations

import importlib
import sys

if __name__ == "__main__":
    sys.exit(importlib.import_module("errands.adapters.cli").main())
