"""Implementations of the service ports: where images and records actually live."""
