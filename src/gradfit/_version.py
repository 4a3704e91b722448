"""The version string, in the bottom layer so that any module (file headers) can read it."""

__version__ = "0.1.0"
