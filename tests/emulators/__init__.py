"""Emulators of cluster schedulers' HTTP APIs (Marathon, Mesos): test fixtures at the network boundary.

Each is an aiohttp server runnable on its own from the project root (``python -m tests.emulators.<name> --port N``)
that runs tasks as real local processes. Production code never imports from here.
"""
