"""nasnet-det: NASNet cells, networks built from them, and their use as Detectron2 backbones."""

__version__ = "0.1.0"

# Read the launching process's pid as the package is first imported, before the seconds of torch imports: a
# training worker compares it when it asks to die with its launcher (nasnet_det.engine.process).
from nasnet_det.engine import process as _process  # noqa: E402,F401
