"""
Signed payloads: producers add an HMAC-SHA256 of each payload, made with a secret they
share with the workers, and workers with that secret run only what carries a valid one.

The signature rides in the payload itself, as its first key::

    {"hmac":"<64 hex digits>","task_id":"…","module":"…",…}

It is computed over the payload exactly as it was written without that key (the bytes
from ``{"task_id"…`` on), so nothing is serialized twice and a worker without a secret
still reads a signed payload as plain JSON. Several secrets may be given, for rotation:
the first signs, any of them verifies.
"""

import hashlib
import hmac
from collections.abc import Iterable

from .allowlist import split_list
from .exceptions import AlligatorException, SignatureError

#: The shortest secret accepted: a shorter one is too easy to guess.
MIN_SECRET_LENGTH = 16

_PREFIX = '{"hmac":"'
_DIGITS = 64  # hex digits of a SHA-256 digest
_SEPARATOR = '",'
_BODY_START = len(_PREFIX) + _DIGITS + len(_SEPARATOR)


class Signer:
    """
    Signs and verifies payloads with shared secrets.

    Ex::

        signer = Signer(["new-secret-of-32-characters-or-so", "the-old-secret-still-accepted"])
        signed = signer.sign(task.serialize())
        data = signer.verify(signed)  # the payload as it was, or SignatureError

    :param secrets: One secret, several (a list, or a string of them separated by commas or
        spaces), the first of which signs
    :raises AlligatorException: For no secret, or one shorter than 16 characters
    """

    def __init__(self, secrets: str | Iterable[str]) -> None:
        given = split_list(secrets) if isinstance(secrets, str) else list(secrets)
        if not given:
            raise AlligatorException("A signed queue needs at least one secret.")
        for secret in given:
            if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
                raise AlligatorException(
                    f"A secret must be a string of at least {MIN_SECRET_LENGTH} characters; "
                    "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'."
                )
        self._keys = [secret.encode("utf-8") for secret in given]

    def __repr__(self) -> str:
        return f"<Signer with {len(self._keys)} secret(s)>"  # never the secrets themselves

    def _digest(self, key: bytes, body: str) -> str:
        return hmac.new(key, body.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()

    def sign(self, data: str) -> str:
        """
        Returns the payload with its signature as the first key.

        Ex::

            signed = signer.sign('{"task_id":"a1",…}')  # '{"hmac":"9f…","task_id":"a1",…}'

        :param data: A JSON object, as ``Task.serialize`` writes it
        """
        if not data.startswith("{") or data.startswith(_PREFIX):
            raise AlligatorException("Only an unsigned JSON object can be signed.")
        return f"{_PREFIX}{self._digest(self._keys[0], data)}{_SEPARATOR}{data[1:]}"

    def verify(self, data: str) -> str:
        """
        Checks a payload's signature against every secret; returns the payload without it.

        Ex::

            data = signer.verify(reserved.data)

        :raises SignatureError: When the payload is unsigned, or no secret matches
        """
        if not data.startswith(_PREFIX) or data[_BODY_START - 2 : _BODY_START] != _SEPARATOR:
            raise SignatureError(
                "It is not signed, and this queue runs only tasks signed with its secret."
            )
        body = "{" + data[_BODY_START:]
        # As bytes: compare_digest refuses a str that is not ASCII, and this one is anybody's.
        given = data[len(_PREFIX) : len(_PREFIX) + _DIGITS].encode("utf-8", "surrogateescape")
        for key in self._keys:
            if hmac.compare_digest(given, self._digest(key, body).encode()):
                return body
        raise SignatureError(
            "Its signature does not match: it was changed after it was signed, or signed with "
            "a secret this queue does not have."
        )
