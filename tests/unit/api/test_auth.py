import logging

import pytest

from serving.api.auth import ApiKeyAuthenticator
from serving.config import ApiKeyHash, hash_api_key
from serving.errors import AuthenticationError

KEYS = [ApiKeyHash(id="team-a", sha256=hash_api_key("sk-a")),
        ApiKeyHash(id="team-b", sha256=hash_api_key("sk-b"))]


def test_valid_keys_return_their_id():
    auth = ApiKeyAuthenticator(KEYS)
    assert auth.authenticate("Bearer sk-a") == "team-a"
    assert auth.authenticate("bearer  sk-b ") == "team-b"


@pytest.mark.parametrize("header,match", [
    (None, "Missing API key"), ("", "Missing API key"), ("sk-a", "Malformed"),
    ("Basic c2stYQ==", "Malformed"), ("Bearer ", "Malformed"), ("Bearer sk-c", "Incorrect"),
])
def test_rejected(header, match):
    with pytest.raises(AuthenticationError, match=match):
        ApiKeyAuthenticator(KEYS).authenticate(header)


def test_open_mode_warns_and_allows(caplog):
    with caplog.at_level(logging.WARNING, logger="qvq.auth"):
        auth = ApiKeyAuthenticator([])
    assert "OPEN" in caplog.text
    assert auth.open and auth.authenticate(None) is None
