"""Fixtures for the model services: the store tests' SeaweedFS S3 server, reused."""

from __future__ import annotations

from tests.stores.conftest import s3_server

__all__ = ["s3_server"]
