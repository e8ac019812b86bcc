"""Redaction finds every registered value however many are registered."""

from __future__ import annotations

import hashlib
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from connect.redact import PLACEHOLDER, redact, redact_text, register_secret, registered

ALPHABET = string.ascii_letters + string.digits + "@:/._-"


def naive(text: str) -> str:
    """What redaction must equal: every registered value replaced, longest first."""
    for value in sorted(registered(), key=len, reverse=True):
        text = text.replace(value, PLACEHOLDER)
    return text


@given(
    secrets=st.lists(st.text(ALPHABET, min_size=4, max_size=12), min_size=1, max_size=6),
    before=st.text(ALPHABET, max_size=20),
    after=st.text(ALPHABET, max_size=20),
    pick=st.integers(min_value=0),
)
@settings(max_examples=300)
def test_a_registered_value_is_replaced_wherever_it_sits(
    secrets: list[str], before: str, after: str, pick: int
) -> None:
    register_secret(*secrets)
    secret = secrets[pick % len(secrets)]
    text = f"{before}{secret}{after}"
    redacted = redact_text(text)
    assert secret not in redacted or secret in PLACEHOLDER
    if "@" not in text:  # (user info of a URL is redacted too, beyond the registered values)
        assert redacted == naive(text)


def test_thousands_of_accounts_secrets_are_all_found() -> None:
    passwords = [f"pw-{i:05d}-{hashlib.sha1(str(i).encode()).hexdigest()[:8]}" for i in range(3000)]
    for password in passwords:
        register_secret(password)
    for password in passwords[::97]:
        line = f"login refused for {password} (sha1 {hashlib.sha1(password.encode()).hexdigest()})"
        out = redact_text(line)
        assert password not in out and hashlib.sha1(password.encode()).hexdigest() not in out
        assert out == f"login refused for {PLACEHOLDER} (sha1 {PLACEHOLDER})"
    status = {"sources": [{"error": f"bad {passwords[5]}", "nested": [passwords[2999]]}]}
    assert redact(status) == {"sources": [{"error": f"bad {PLACEHOLDER}", "nested": [PLACEHOLDER]}]}


def test_a_value_inside_a_longer_one_leaves_no_remains() -> None:
    register_secret("abcd1234", "xxabcd1234yy")
    assert redact_text("token=xxabcd1234yy!") == f"token={PLACEHOLDER}!"
    assert redact_text("short abc") == "short abc"
    assert redact_text("ab") == "ab"


def test_extra_values_and_url_user_info() -> None:
    assert redact_text("key=q9q9 at https://me:pw@site.example/x", extra=["q9q9", ""]) == (
        f"key={PLACEHOLDER} at https://{PLACEHOLDER}@site.example/x"
    )
