"""Where the shared real media live: ../shared beside the checkout (as on CI), or $EGOATTN_SHARED."""

import os
from pathlib import Path

SHARED = Path(os.environ.get("EGOATTN_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REAL = SHARED / "data" / "real"
