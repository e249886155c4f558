"""Doors: each translates one protocol into service calls and the results back."""
