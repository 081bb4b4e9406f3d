"""activeft: active finetuning at scale on Ray.

Embed an unlabeled image pool into a Parquet embedding store, select the images worth labeling
(ActiveFT, k-means, coverage methods; ActiveDC calibration; ASVP multi-round loop), and finetune a
timm backbone on them, on a laptop or a Ray cluster with the same code.

The stages register themselves in the stage table (:mod:`activeft.stages`) as they are imported
here, in pipeline order; each is ``activeft.<name>``.
"""

# isort: skip_file
# (the stages in pipeline order: the order of the command line and of the configs)
from .embed import embed  # noqa: F401  (each stage: public through __all__, from the table)
from .embed.importer import import_embeddings  # noqa: F401
from .dedup import dedup  # noqa: F401
from .select import Selection, list_selectors, read_selection, select  # noqa: F401
from .report import write_report  # noqa: F401
from .scores import scores  # noqa: F401
from .export import export  # noqa: F401
from .calibrate import calibrate  # noqa: F401
from .finetune import finetune  # noqa: F401
from .loop import loop  # noqa: F401
from .io.store import EmbeddingStore
from .models.classifier import load_model
from .stages import list_stages
from .version import __version__  # noqa: F401  (activeft.__version__)

__all__ = [*(entry.fn.__name__ for entry in list_stages()), "read_selection", "Selection", "list_selectors",
           "load_model", "EmbeddingStore"]


def __getattr__(name: str):
    """A stage registered after this package was imported (a plug-in) is ``activeft.<name>`` too."""
    entry = next((e for e in list_stages() if e.fn.__name__ == name), None)
    if entry is None:
        raise AttributeError(f"module 'activeft' has no attribute {name!r}")
    return entry.fn
