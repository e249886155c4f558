"""Security at the HTTP edge: token verification, the access middleware, the built-in issuer's routes."""
