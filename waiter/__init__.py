"""A Waiter-compatible autoscaling HTTP router."""

from waiter.version import __version__

__all__ = ["__version__"]
