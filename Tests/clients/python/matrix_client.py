"""One client-matrix attempt with a Python HTTP library, in its own process (so the suite can
bound it in time and run it in the DNS sandbox). Reads a JSON attempt on stdin, prints one
JSON line: {"ok": bool, "status": int|null, "error": str, "body": str}.

    python3 matrix_client.py requests|urllib|httpx|aiohttp < attempt.json

Attempt keys: url, proxy_url, proxy_url_with_credentials, scheme, user, password, ca_file,
challenge_first, timeout, scenario, workaround (apply the workaround the matrix's note describes). Each library is used the way its documentation says to use a proxy
with credentials; comments name the alternatives."""

from __future__ import annotations

import json
import sys
import traceback


def out(ok=False, status=None, error="", body=b""):
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    print(json.dumps({"ok": ok, "status": status, "error": error[-2000:], "body": body[:2000]}))


def run_requests(a):
    import requests
    proxy = a["proxy_url_with_credentials"]
    # requests has no proxy challenge handling: credentials ride in the proxy URL (sent pre-emptively).
    r = requests.get(a["url"], proxies={"http": proxy, "https": proxy}, verify=a["ca_file"], timeout=(10, 20))
    return out(r.status_code == 200, r.status_code, f"HTTP {r.status_code} {r.reason}", r.content)


def run_urllib(a):
    import ssl
    import urllib.error
    import urllib.request
    ctx = ssl.create_default_context(cafile=a["ca_file"])
    handlers = [urllib.request.HTTPSHandler(context=ctx)]
    if a["scheme"] == "digest" or a["challenge_first"]:
        # The documented way to answer a proxy's challenge: a proxy without credentials in its URL,
        # and ProxyDigestAuthHandler / ProxyBasicAuthHandler with the password for the proxy.
        mgr = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        mgr.add_password(None, a["proxy_url"], a["user"], a["password"])
        if a["workaround"]:
            # ProxyDigestAuthHandler looks the password up by the request's (target) URL.
            mgr.add_password(None, a["url"], a["user"], a["password"])
        handlers.append(urllib.request.ProxyHandler({"http": a["proxy_url"], "https": a["proxy_url"]}))
        handlers.append(urllib.request.ProxyDigestAuthHandler(mgr) if a["scheme"] == "digest"
                        else urllib.request.ProxyBasicAuthHandler(mgr))
    else:
        proxy = a["proxy_url_with_credentials"]
        handlers.append(urllib.request.ProxyHandler({"http": proxy, "https": proxy}))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(a["url"], timeout=20) as r:
            body = r.read()
            return out(r.status == 200, r.status, f"HTTP {r.status}", body)
    except urllib.error.HTTPError as e:
        return out(False, e.code, f"HTTPError {e.code}: {e.reason}")


def run_httpx(a):
    import ssl
    import httpx
    ctx = ssl.create_default_context(cafile=a["ca_file"])
    # httpx: credentials in the proxy URL (Basic, pre-emptive); DigestAuth is for origins' 401s only.
    proxy = a["proxy_url_with_credentials"]
    if a["workaround"]:
        # verify= is not used for an https:// proxy's own certificate: give the proxy its context.
        proxy = httpx.Proxy(proxy, ssl_context=ctx)
    with httpx.Client(proxy=proxy, verify=ctx, timeout=20) as c:
        r = c.get(a["url"])
        return out(r.status_code == 200, r.status_code, f"HTTP {r.status_code} {r.reason_phrase}", r.content)


def run_aiohttp(a):
    import asyncio
    import ssl
    import aiohttp
    ctx = ssl.create_default_context(cafile=a["ca_file"])

    async def go():
        # aiohttp: credentials in the proxy URL (proxy_auth= is deprecated in 3.14); Basic only,
        # pre-emptive, the password encoded as Latin-1 (BasicAuth's default).
        timeout = aiohttp.ClientTimeout(total=25)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            async with s.get(a["url"], proxy=a["proxy_url_with_credentials"], ssl=ctx) as r:
                body = await r.read()
                return out(r.status == 200, r.status, f"HTTP {r.status} {r.reason}", body)
    return asyncio.run(go())


def main():
    a = json.loads(sys.stdin.read())
    lib = sys.argv[1]
    try:
        {"requests": run_requests, "urllib": run_urllib, "httpx": run_httpx, "aiohttp": run_aiohttp}[lib](a)
    except Exception as e:  # noqa: BLE001 - reported as the client's error
        status = getattr(e, "status", None) or getattr(e, "code", None)
        out(False, status if isinstance(status, int) else None,
            f"{type(e).__module__}.{type(e).__name__}: {e}\n" + traceback.format_exc(limit=3)[-800:])


if __name__ == "__main__":
    main()
