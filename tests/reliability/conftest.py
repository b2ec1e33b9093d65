"""Fixtures of the reliability suite: faults, hostile input and soak, against the real broker.

The broker, the certificates and the HTTP target come from tests/conftest.py; the topic admin and
a module's shared worker are the integration suite's.
"""

from tests.integration.conftest import admin, shared_worker

__all__ = ["admin", "shared_worker"]
