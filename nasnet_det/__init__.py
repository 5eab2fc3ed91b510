"""nasnet-det: NASNet cells, networks built from them, and their use as Detectron2 backbones."""

__version__ = "0.1.0"
