"""convert: a declarative, content-addressed pipeline from trained YOLO models to deployable artifacts."""

__version__ = "0.1.0"
