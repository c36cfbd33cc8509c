"""The version of objstore, in one place: the package, the metadata of new stores and the wheel read it."""

__version__ = "0.1.0"
