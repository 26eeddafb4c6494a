"""rd3fast: the RD3 post-evaluation protocol (and every published recipe) for distilled datasets, fast.

Drop-in pieces for your own training script::

    from rd3fast import ResidentLoader, AugSpec, Relabeler, load_teachers
"""
__version__ = "0.1.0"

from .aug import AugParams, AugSpec, augment, sample_params  # noqa: E402
from .config import PRESETS, Config, resolve  # noqa: E402
from .errors import RD3Error  # noqa: E402
from .loader import Batch, ResidentLoader  # noqa: E402
from .teacher import Relabeler, load_teachers  # noqa: E402

__all__ = ["AugParams", "AugSpec", "Batch", "Config", "PRESETS", "RD3Error", "Relabeler", "ResidentLoader",
           "augment", "load_teachers", "resolve", "sample_params"]
