"""Directory users against the embedded SQLite store, in one run, everything on loopback
(issue 24's figures):

1. cached requests: keep-alive GETs of nginx's 1 KiB file with one user's Basic credential on
   every request (`wrk -t1 -c50`, proxy.lua) — Portcullis with the user in SQLite against
   Portcullis with the user only in slapd (`--ldap`, StartTLS): after the first check both
   answer from the credential cache;
2. logins: the same with `--credential-cache-ttl 0.001`, so every request is checked again — a
   search as the service account and a bind as the user (each on a StartTLS connection of its
   own) against slapd, a bcrypt check (cost 10, `users add`'s) in SQLite.

Targets alternate, order reversed every round; ratios are paired within a round.

    python3 bench/ldap.py [--rounds 4] [--duration 5]
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as b  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
USER, PASSWORD = "bench", "benchpass"
BASE = "dc=example,dc=test"
READER_DN, READER_PASSWORD = f"cn=reader,{BASE}", "reader-pw"


def ssha(password: str) -> str:
    salt = os.urandom(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password.encode() + salt).digest() + salt).decode()


def start_slapd(work: Path, cert: Path, key: Path) -> tuple[int, subprocess.Popen]:
    d = work / "slapd"
    (d / "db").mkdir(parents=True)
    ldif = [
        f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: example\ndc: example\n",
        f"dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: {READER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: reader\n"
        f"userPassword: {ssha(READER_PASSWORD)}\n",
    ]
    # A directory of some size: the search has an index on uid to use.
    for index in range(2000):
        uid = USER if index == 0 else f"user{index}"
        ldif.append(f"dn: uid={uid},ou=people,{BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n"
                    f"userPassword: {ssha(PASSWORD)}\n")
    (d / "data.ldif").write_text("\n".join(ldif))
    (d / "slapd.conf").write_text(f"""include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {d}/slapd.pid
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
database mdb
maxsize 104857600
suffix "{BASE}"
directory {d}/db
index uid eq
access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact="{READER_DN}" read by * none
""")
    subprocess.run([b.find("slapadd", "slapd"), "-f", d / "slapd.conf", "-l", d / "data.ldif"], check=True,
                   capture_output=True)
    port = b.free_port()
    process = b.spawn([b.find("slapd", "slapd"), "-f", d / "slapd.conf", "-h", f"ldap://127.0.0.1:{port}/", "-d", "0"])
    b.wait_port(port, 30)
    return port, process


def main():
    args, work = b.release_run(__doc__.split("\n\n")[0], ROOT, "portcullis-ldap-")
    started = time.monotonic()
    try:
        origin = b.start_origin(b.find("nginx", "nginx-light"), work)
        cert, key = b.self_signed_certificate(work, "slapd")
        ldap_port, slapd = start_slapd(work, cert, key)
        db = work / "users.db"
        b.sqlite_user(args.bin, db, USER, PASSWORD)
        empty = work / "empty.htpasswd"
        empty.write_text("")
        secret = work / "reader-password"
        secret.write_text(READER_PASSWORD + "\n")
        proxies = {}

        def start(name: str, store: list, ttl: str | None):
            port = b.free_port()
            extra = ["--credential-cache-ttl", ttl] if ttl else []
            process = b.spawn([args.bin, "serve", "--listen", f"127.0.0.1:{port}", *store, *extra,
                               "--allow-private-destinations", "--log-level", "error", "--data-dir", work / name])
            b.wait_port(port)
            proxies[name] = (port, process)

        ldap_store = ["--htpasswd", empty, "--ldap", f"ldap://127.0.0.1:{ldap_port}", "--ldap-base", BASE,
                      "--ldap-bind-dn", READER_DN, "--ldap-bind-password-file", secret, "--ldap-ca", cert]
        start("sqlite-cached", ["--store", f"sqlite:{db}"], None)
        start("ldap-cached", ldap_store, None)
        start("sqlite-logins", ["--store", f"sqlite:{db}"], "0.001")
        start("ldap-logins", ldap_store, "0.001")
        env = {"BENCH_ORIGIN_URL": f"http://127.0.0.1:{origin}/1k", "BENCH_ORIGIN_HOST": f"127.0.0.1:{origin}",
               "BENCH_PROXY_AUTH": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
        lua = ROOT / "bench" / "proxy.lua"

        def run(name: str, duration: int) -> dict:
            port, process = proxies[name]
            before = sum(b.cpu_seconds(process.pid))
            slapd_before = sum(b.cpu_seconds(slapd.pid))
            x = b.wrk(port, duration, 50, lua, env)
            n = max(x["requests"], 1)
            x["proxy_cpu_us"] = (sum(b.cpu_seconds(process.pid)) - before) / n * 1e6
            x["slapd_cpu_us"] = (sum(b.cpu_seconds(slapd.pid)) - slapd_before) / n * 1e6
            assert x["non2xx"] == 0, (name, x)
            return x

        for name in proxies:
            run(name, 2)
        results = b.alternate(args.rounds, (("sqlite-cached", "ldap-cached"), ("sqlite-logins", "ldap-logins")), run,
                              args.duration, "ldap",
                              lambda x: f", proxy {x['proxy_cpu_us']:.1f} µs/req, slapd {x['slapd_cpu_us']:.1f} µs/req")
        ratios = {
            "cached req/s, LDAP user / SQLite user (target >= 0.95)": b.paired(results, "ldap-cached", "sqlite-cached"),
            "logins/s, LDAP search+bind / SQLite bcrypt": b.paired(results, "ldap-logins", "sqlite-logins"),
        }
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
                "rounds": args.rounds, "duration": args.duration,
                "slapd": subprocess.run([b.find("slapd", "slapd"), "-VV"], capture_output=True,
                                        text=True).stderr.strip().split("\n")[0],
                "seconds": round(time.monotonic() - started)}
        labels = {
            "sqlite-cached": "SQLite user, cached credential",
            "ldap-cached": "directory user (slapd, StartTLS), cached credential",
            "sqlite-logins": "SQLite user, every request checked (bcrypt)",
            "ldap-logins": "directory user, every request checked (search + bind)",
        }
        text = b.paired_report("Directory users vs SQLite", meta, labels, results, ratios,
                               [("proxy CPU", "proxy_cpu_us"), ("slapd CPU", "slapd_cpu_us")])
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "ldap.md").write_text(text)
        (OUT / "ldap.json").write_text(json.dumps({"meta": meta, "results": results, "ratios": ratios}, indent=2))
        print(text)
    finally:
        b.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
