"""eseg: the ESeg semantic-segmentation family (Meng et al., 2022) in PyTorch.

>>> from eseg_cli import build_model
>>> model = build_model("eseg-s", num_classes=19)
"""

from eseg_cli.errors import EsegError
from eseg_cli.models import SCALES, build_model, list_models

__version__ = "0.1.0"
__all__ = ["SCALES", "EsegError", "__version__", "build_model", "list_models"]
