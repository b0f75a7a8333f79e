"""Headless Chromium (Debian's `chromium` package) driven through Playwright, for the client matrix.

The executable is the Debian binary itself, /usr/lib/chromium/chromium, not the /usr/bin/chromium
launcher script: that script sources /etc/chromium.d, which exports Google API keys and adds flags
(--enable-remote-extensions, --load-extension=…) that change the browser under test. Either way
Chromium makes background requests of its own (update.googleapis.com, accounts.google.com), which
is why it must run in a DNS sandbox (below).

One request = one page load in a NEW browser context whose proxy is the given one; the proxy
credentials are given to the context (Playwright answers Chromium's proxy auth prompt with them,
through the DevTools `Fetch.authRequired` event, once per request: a second challenge for the
same request is cancelled, as a user pressing Cancel would). Chromium itself computes Basic,
Digest or NTLM from them. Playwright adds `<-loopback>` to the proxy bypass list, so even loopback
targets go through the proxy.

Certificates: no error is ignored. `spki_pins` (base64 SHA-256 of a SubjectPublicKeyInfo) are
passed as `--ignore-certificate-errors-spki-list`, Chromium's switch that accepts certificates with
those keys only (the test CA's leaf, used by the origin and the TLS proxy); anything else still
fails. (Chromium on Linux trusts a CA from an NSS database in ~/.pki/nssdb, which needs certutil
from libnss3-tools; the pin needs nothing beyond openssl.)

CLI (one browser per call; the test module keeps one browser for all its cells):

    python3 driver.py --proxy URL --url URL [--user U --password P] [--spki-pin B64 | --cacert LEAF]
                      [--timeout S] [--executable PATH] (--wrapper ARGV-JSON | --no-dns-sandbox)

--wrapper is the argv prefix of a DNS sandbox (see client_matrix._dns_sandbox): Chromium resolves
the names of its own background requests (update.googleapis.com…) even with a proxy set, and
without a sandbox those lookups go to the machine's resolver; --no-dns-sandbox allows that.

prints ONE JSON line {"status", "body", "error", "client_version"}; exit 0 whenever a
result could be reported (a 407 or a net::ERR_… included), 2 if the driver broke.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

BODY_LIMIT = 2000
CHROMIUM = "/usr/lib/chromium/chromium"


def spki_pin(cert_pem: str | os.PathLike) -> str:
    """The base64 SHA-256 of a certificate's SubjectPublicKeyInfo, as --ignore-certificate-errors-spki-list wants."""
    pub = subprocess.run(["openssl", "x509", "-in", str(cert_pem), "-pubkey", "-noout"],
                         capture_output=True, check=True, timeout=30).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub,
                         capture_output=True, check=True, timeout=30).stdout
    import base64
    import hashlib
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def wrapper_script(directory: Path, wrapper: list[str] | None, executable: str = CHROMIUM) -> str:
    """An executable that runs Chromium under `wrapper` (the DNS sandbox's argv prefix), for
    Playwright's executable_path; the plain executable when there is no wrapper."""
    if not wrapper:
        return executable
    import shlex
    path = directory / "chromium-sandboxed"
    path.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in [*wrapper, executable]) + ' "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


class Chromium:
    """One headless browser (started by start(), ended by close()); fetch() loads one URL in a
    fresh context through a proxy."""

    def __init__(self, executable: str = CHROMIUM, spki_pins: list[str] | None = None,
                 extra_args: list[str] | None = None, env: dict | None = None):
        self.executable = executable
        self.args = ["--disable-background-networking", "--disable-component-update", "--no-first-run",
                     "--disable-sync", "--disable-domain-reliability", "--no-pings",
                     "--disable-features=OptimizationHints,MediaRouter,Translate,NetworkTimeServiceQuerying,"
                     "AutofillServerCommunication,CertificateTransparencyComponentUpdater",
                     *(extra_args or [])]
        if spki_pins:
            self.args.append("--ignore-certificate-errors-spki-list=" + ",".join(spki_pins))
        self.env = env
        self._pw = None
        self.browser = None

    def start(self, timeout: float = 60) -> "Chromium":
        from playwright.sync_api import sync_playwright
        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(
                executable_path=self.executable, headless=True, args=self.args, env=self.env,
                timeout=timeout * 1000)
        except Exception:
            self._pw.stop()
            self._pw = None
            raise
        return self

    @property
    def version(self) -> str:
        return self.browser.version if self.browser else "?"

    def fetch(self, proxy: str, url: str, user: str | None = None, password: str | None = None,
              timeout: float = 20, loads: int = 1) -> dict:
        """Load `url` through `proxy` in a new context (`loads` times in the same page: a user's
        reloads; the last load is reported); the context is closed before returning (so the
        proxy's tunnels end and their access-log lines are written)."""
        proxy_opt = {"server": proxy}
        if user is not None:
            proxy_opt.update(username=user, password=password or "")
        out = {"status": None, "body": "", "error": None, "client_version": f"chromium {self.version}"}
        context = self.browser.new_context(proxy=proxy_opt)
        try:
            page = context.new_page()
            page.set_default_timeout(timeout * 1000)
            try:
                for _ in range(loads):
                    response = page.goto(url, timeout=timeout * 1000, wait_until="load")
            except Exception as e:  # net::ERR_…, timeouts: what the user would see
                out["error"] = _first_line(str(e))
                try:  # and the error page's text ("HTTP ERROR 407"…), as a user would read it
                    text = " ".join(page.inner_text("body", timeout=2000).split())
                    if text:
                        out["error"] += f" (page: {text[:300]})"
                except Exception:
                    pass
                return out
            if response is None:
                out["error"] = "no response"
                return out
            out["status"] = response.status
            try:
                out["body"] = response.text()[:BODY_LIMIT]
            except Exception as e:
                out["error"] = "reading the body: " + _first_line(str(e))
            return out
        finally:
            context.close()

    def close(self):
        try:
            if self.browser:
                self.browser.close()
        finally:
            self.browser = None
            if self._pw:
                self._pw.stop()
                self._pw = None


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:500] if lines else text[:500]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one page load through a proxy with headless Chromium")
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--spki-pin", action="append", default=[])
    ap.add_argument("--cacert", help="a certificate whose key is pinned (the origin's / proxy's leaf)")
    ap.add_argument("--timeout", type=float, default=20)
    ap.add_argument("--executable", default=CHROMIUM)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--wrapper", help="JSON list: argv prefix to run Chromium under (a DNS sandbox)")
    where.add_argument("--no-dns-sandbox", action="store_true", help="run Chromium with the machine's resolver")
    ap.add_argument("--scheme-hint", help="ignored: Chromium picks the strongest scheme offered")
    args = ap.parse_args(argv)
    pins = list(args.spki_pin)
    if args.cacert:
        pins.append(spki_pin(args.cacert))
    with tempfile.TemporaryDirectory() as tmp:
        executable = wrapper_script(Path(tmp), json.loads(args.wrapper) if args.wrapper else None, args.executable)
        browser = Chromium(executable, pins)
        try:
            browser.start()
            result = browser.fetch(args.proxy, args.url, args.user, args.password, args.timeout)
        except Exception as e:
            print(json.dumps({"status": None, "body": "", "error": f"driver: {e}", "client_version": "chromium ?"}))
            return 2
        finally:
            browser.close()
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
