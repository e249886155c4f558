"""Helpers shared by the test suites: servers on loopback, peers, data."""
