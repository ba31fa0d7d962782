"""The router's version, and the server header Waiter clients see on router-generated responses."""

__version__ = "0.1.0"
SERVER_HEADER = f"waiter/py-{__version__}"
