"""graphc's version: the installed distribution's, or 0+source in a checkout never installed."""
try:
    from importlib.metadata import version as _version
    __version__ = _version("graphc")
except Exception:  # running from a source tree that was never installed
    __version__ = "0+source"
