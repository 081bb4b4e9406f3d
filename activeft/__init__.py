"""activeft: active finetuning at scale on Ray.

Embed an unlabeled image pool into a Parquet embedding store, select the images worth
labeling (ActiveFT, k-means, FDS, random; ActiveDC calibration; ASVP multi-round loop), and
finetune a timm backbone on them, on a laptop or a Ray cluster with the same code.
"""

from .calibrate import calibrate
from .models.classifier import load_model
from .embed import embed
from .finetune import finetune
from .embed.importer import import_embeddings
from .loop import loop
from .select import Selection, list_selectors, read_selection, select
from .io.store import EmbeddingStore
from .version import __version__  # noqa: F401  (activeft.__version__)

__all__ = ["embed", "import_embeddings", "select", "read_selection", "Selection", "list_selectors", "calibrate",
           "finetune", "load_model", "loop", "EmbeddingStore"]
