"""activeft: active finetuning at scale on Ray.

Embed an unlabeled image pool into a Parquet embedding store, select the images worth
labeling (ActiveFT, k-means, FDS, random; ActiveDC calibration; ASVP multi-round loop), and
finetune a timm backbone on them, on a laptop or a Ray cluster with the same code.
"""

__version__ = "0.1.0"

from .calibrate import calibrate  # noqa: E402
from .classifier import load_model  # noqa: E402
from .embed import embed  # noqa: E402
from .finetune import finetune  # noqa: E402
from .importer import import_embeddings  # noqa: E402
from .loop import loop  # noqa: E402
from .select import Selection, list_selectors, read_selection, select  # noqa: E402
from .store import EmbeddingStore  # noqa: E402

__all__ = ["embed", "import_embeddings", "select", "read_selection", "Selection", "list_selectors", "calibrate",
           "finetune", "load_model", "loop", "EmbeddingStore"]
