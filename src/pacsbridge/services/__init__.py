"""Use cases: what pacsbridge does, whichever door asked. Reaches the world only through ports."""
