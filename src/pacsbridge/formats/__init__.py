"""Pure wire codecs: bytes and strings in, values out; no I/O."""
