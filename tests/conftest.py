"""Shared test setup: fixture plugins."""

pytest_plugins = ("tests.docker_engine",)
