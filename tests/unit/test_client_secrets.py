"""Client secrets are kept as salted scrypt hashes (services/issuer.py)."""

from __future__ import annotations

from pacsbridge.services.issuer import hash_secret, new_client_secret, verify_secret


def test_a_secret_verifies_against_its_hash_only() -> None:
    secret = new_client_secret()
    stored = hash_secret(secret)
    assert secret not in stored and stored.startswith("scrypt$")
    assert verify_secret(secret, stored)
    assert not verify_secret(secret + "x", stored)
    assert hash_secret(secret) != stored  # salted


def test_a_malformed_hash_never_verifies() -> None:
    for stored in ("", "scrypt$1$2", "plain$16384$8$1$AA$AA", "scrypt$x$8$1$AA$AA"):
        assert not verify_secret("anything", stored)
