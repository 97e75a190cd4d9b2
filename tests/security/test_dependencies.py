"""python-jose runs on the ``cryptography`` backend, at a release without known advisories.

python-jose before 3.4.0 had CVE-2024-33663 (algorithm confusion with OpenSSH ECDSA keys) and
CVE-2024-33664 (JWE "zip bomb"). Its pure-Python fallbacks (``ecdsa``, ``rsa``) are still
installed as its dependencies; with ``cryptography`` present every key type comes from the
cryptography backend, and the service only ever uses HS256 (see app/core/security.py).
"""

from __future__ import annotations

from importlib.metadata import version

import jose
import jose.backends
from packaging.version import Version

from app.core.security import JWT_ALGORITHMS


def test_python_jose_is_past_its_known_advisories() -> None:
    assert Version(version("python-jose")) >= Version("3.4.0")
    assert Version(jose.__version__) >= Version("3.4.0")


def test_every_jose_key_type_comes_from_the_cryptography_backend() -> None:
    for name in ("RSAKey", "ECKey", "HMACKey", "AESKey"):
        backend = getattr(jose.backends, name)
        assert backend.__module__ == "jose.backends.cryptography_backend", (name, backend)


def test_tokens_are_verified_with_one_symmetric_algorithm() -> None:
    assert list(JWT_ALGORITHMS) == ["HS256"]
