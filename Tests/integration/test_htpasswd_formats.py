"""Every htpasswd hash format the contract names verifies, and a wrong password fails."""

from __future__ import annotations

import shutil
import subprocess
import warnings

import pytest

from portcullis_helpers import (
    assert_proxy_status, basic, htpasswd_line, mkpasswd_hash,
)

# user -> (password, expected hash prefix). DES crypt looks at 8 characters only, so its
# password is 8 long and the wrong password differs in the first character.
FORMATS = {
    "bcrypt-2y-htpasswd": ("Bcrypt-2y!", "$2y$"),
    "bcrypt-2b-mkpasswd": ("Bcrypt-2b!", "$2b$"),
    "bcrypt-2a-rewritten": ("Bcrypt-2a!", "$2a$"),
    "bcrypt-2a-mkpasswd": ("Bcrypt-2a-mk", "$2a$"),
    "apr1-htpasswd": ("Apr1-md5 pw", "$apr1$"),
    "sha1-htpasswd": ("Sha1-pw:x", "{SHA}"),
    "des-htpasswd": ("Des1pw!x", ""),
    "des-mkpasswd": ("Des2pw!y", ""),
    "sha256-crypt": ("Sha256-crypt", "$5$"),
    "sha512-crypt": ("Sha512-crypt", "$6$"),
    "sha256-mkpasswd": ("Sha256-mk", "$5$"),
    "sha512-mkpasswd": ("Sha512-mk", "$6$"),
}
WRONG = "zz-wrong-password"


def _htpasswd_supports(flag: str) -> bool:
    r = subprocess.run(["htpasswd", "-nb" + flag, "u", "p"], capture_output=True, timeout=30)
    return r.returncode == 0


def _make_hash(user: str, pw: str) -> str:
    if user == "bcrypt-2y-htpasswd":
        return htpasswd_line(user, pw, "-B", ["-C", "5"]).split(":", 1)[1]
    if user == "bcrypt-2b-mkpasswd":
        return mkpasswd_hash(pw, "bcrypt", ["-R", "5"])
    if user == "bcrypt-2a-rewritten":
        h = mkpasswd_hash(pw, "bcrypt", ["-R", "5"])
        assert h.startswith("$2b$")
        return "$2a$" + h[4:]
    if user == "bcrypt-2a-mkpasswd":
        return mkpasswd_hash(pw, "bcrypt-a", ["-R", "5"])
    if user == "apr1-htpasswd":
        return htpasswd_line(user, pw, "-m").split(":", 1)[1]
    if user == "sha1-htpasswd":
        return htpasswd_line(user, pw, "-s").split(":", 1)[1]
    if user == "des-htpasswd":
        return htpasswd_line(user, pw, "-d").split(":", 1)[1]
    if user == "des-mkpasswd":
        return mkpasswd_hash(pw, "descrypt")
    if user == "sha256-crypt":
        if _htpasswd_supports("2"):
            return htpasswd_line(user, pw, "-2").split(":", 1)[1]
        return mkpasswd_hash(pw, "sha256crypt")
    if user == "sha512-crypt":
        if _htpasswd_supports("5"):
            return htpasswd_line(user, pw, "-5").split(":", 1)[1]
        return mkpasswd_hash(pw, "sha512crypt")
    if user == "sha256-mkpasswd":
        return mkpasswd_hash(pw, "sha256crypt")
    if user == "sha512-mkpasswd":
        return mkpasswd_hash(pw, "sha512crypt")
    raise KeyError(user)


def _sanity_check(user: str, pw: str, h: str):
    """Make sure the test data itself is right before blaming the proxy."""
    prefix = FORMATS[user][1]
    assert h.startswith(prefix), (user, h)
    if user.startswith("des-"):
        assert len(h) == 13 and not h.startswith("$"), (user, h)
    if h.startswith("{SHA}") or h.startswith("$apr1$"):
        return  # checked by htpasswd -v below
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt  # libxcrypt, like the proxy
        except ImportError:
            return
    assert crypt.crypt(pw, h) == h, f"test data bug: {user} hash does not verify with crypt(3)"
    assert crypt.crypt(WRONG, h) != h


@pytest.fixture(scope="module")
def formats_proxy(module_launcher, tmp_path_factory):
    if not shutil.which("mkpasswd"):
        pytest.fail("mkpasswd (Debian package whois) is required")
    lines = []
    for user, (pw, _) in FORMATS.items():
        h = _make_hash(user, pw)
        _sanity_check(user, pw, h)
        lines.append(f"{user}:{h}")
    path = tmp_path_factory.mktemp("formats") / "formats.htpasswd"
    path.write_text("\n".join(lines) + "\n")
    for user, (pw, prefix) in FORMATS.items():
        if prefix in ("{SHA}", "$apr1$", "$2y$"):
            r = subprocess.run(["htpasswd", "-vb", str(path), user, pw], capture_output=True, timeout=30)
            assert r.returncode == 0, f"test data bug: htpasswd -v fails for {user}: {r.stderr!r}"
    return module_launcher.start(htpasswd=path)


@pytest.mark.parametrize("user", list(FORMATS))
def test_format_verifies(formats_proxy, module_origin, user):
    pw = FORMATS[user][0]
    with formats_proxy.conn() as c:
        r = c.request("GET", f"{module_origin.base}/text", [("Proxy-Authorization", basic(user, pw))])
    assert r.status == 200, f"{user}: {r.describe()}"
    assert r.body == b"hello from origin\n"


@pytest.mark.parametrize("user", list(FORMATS))
def test_format_wrong_password_is_407(formats_proxy, module_origin, user):
    with formats_proxy.conn() as c:
        r = c.request("GET", f"{module_origin.base}/text", [("Proxy-Authorization", basic(user, WRONG))])
        assert r.status == 407, f"{user}: {r.describe()}"
        assert_proxy_status(r, details="invalid-credentials")
        # the right password after the wrong one, same connection
        pw = FORMATS[user][0]
        r = c.request("GET", f"{module_origin.base}/text", [("Proxy-Authorization", basic(user, pw))])
        assert r.status == 200, f"{user}: {r.describe()}"
