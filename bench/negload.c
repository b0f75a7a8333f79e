/* negload — the load client of bench/negotiate.py (issue 19). One thread, epoll, closed loop:
 * every connection waits for its response before it sends the next request, as wrk does.
 * Compiled by negotiate.py with `cc -O2 … -lgssapi_krb5 -lkrb5`.
 *
 *   negload keepalive SECONDS REQUEST_FILE FD…
 *       FD… are connections negotiate.py already opened (and authenticated, for NTLM and
 *       Negotiate: the proxy binds the connection to the user). Each sends REQUEST_FILE's bytes,
 *       reads the whole response, sends again, for SECONDS.
 *   negload handshake SECONDS CONCURRENCY PORT TARGET HOST SPN [preemptive]
 *       CONCURRENCY connections to 127.0.0.1:PORT at a time; each opens a connection, sends
 *       `GET TARGET` without credentials, expects a 407 offering Negotiate, answers with a
 *       SPNEGO token from gss_init_sec_context for SPN (a principal such as HTTP/localhost, or a
 *       host-based name such as HTTP@localhost, which MIT canonicalises on every call) on the
 *       same connection, expects 200, checks the proxy's mutual-authentication token when it
 *       sends one, closes, and starts over. `preemptive` skips the first 407 (token on the first
 *       request). The user's tickets come from KRB5CCNAME, copied once into a MEMORY cache, so
 *       after the first handshake fetched the service ticket no handshake reads a file (MIT still
 *       stats krb5.conf a few times per call) or asks the KDC on the client side.
 *
 * Prints one JSON object: completed requests or handshakes inside the window, errors, p50/p90/
 * p99/max latency (µs; for handshakes: from connect() to the 200's last byte), and the client's
 * own CPU seconds (getrusage) so the harness can tell whether the client was the bottleneck. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <gssapi/gssapi.h>
#include <gssapi/gssapi_krb5.h>
#include <krb5.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF 65536

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

/* ------------------------------------------------------------------ latencies */
static uint32_t *lat;
static size_t nlat, caplat;
static void record(double seconds) {
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 1 << 16;
        lat = realloc(lat, caplat * sizeof *lat);
        if (!lat) die("realloc");
    }
    lat[nlat++] = (uint32_t)(seconds * 1e6);
}
static int cmp32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}
static uint32_t pct(double p) {
    if (!nlat) return 0;
    size_t i = (size_t)(p * (nlat - 1) + 0.5);
    return lat[i];
}

/* ------------------------------------------------------------------ responses */
/* One response being read: the head until CRLFCRLF, then Content-Length bytes of body. */
struct resp {
    char buf[BUF];
    size_t len;        /* bytes in buf */
    long head_end;     /* index after CRLFCRLF, or -1 */
    long body_left;    /* body bytes still to come, once the head is parsed */
    int status;
    int close;         /* Connection: close */
    int offers_negotiate;
    char token[8192];  /* base64 of `Proxy-Authenticate: Negotiate TOKEN`, if any */
};

static void resp_reset(struct resp *r) {
    r->len = 0;
    r->head_end = -1;
    r->body_left = 0;
    r->status = 0;
    r->close = 0;
    r->offers_negotiate = 0;
    r->token[0] = 0;
}

static void parse_head(struct resp *r) {
    char *p = r->buf, *end = r->buf + r->head_end;
    r->status = atoi(p + 9);
    long cl = 0;
    while (p < end) {
        char *eol = memmem(p, end - p, "\r\n", 2);
        if (!eol) break;
        size_t n = eol - p;
        if (n > 15 && !strncasecmp(p, "Content-Length:", 15)) cl = atol(p + 15);
        else if (n > 11 && !strncasecmp(p, "Connection:", 11) && memmem(p, n, "close", 5)) r->close = 1;
        else if (n >= 28 && !strncasecmp(p, "Proxy-Authenticate:", 19)) {
            char *v = p + 19;
            while (*v == ' ') v++;
            if (!strncasecmp(v, "Negotiate", 9)) {
                r->offers_negotiate = 1;
                char *t = v + 9;
                while (*t == ' ' && t < eol) t++;
                size_t tn = eol - t;
                if (tn > 0 && tn < sizeof r->token) {
                    memcpy(r->token, t, tn);
                    r->token[tn] = 0;
                }
            }
        }
        p = eol + 2;
    }
    r->body_left = cl;
}

/* Feeds newly read bytes (already appended at buf+len-got). Returns 1 when the response is
 * complete (any bytes beyond it are dropped: the client never pipelines), 0 if more is needed,
 * -1 on a malformed or oversized head. */
static int resp_feed(struct resp *r, size_t got) {
    if (r->head_end < 0) {
        size_t from = r->len - got >= 3 ? r->len - got - 3 : 0;
        char *e = memmem(r->buf + from, r->len - from, "\r\n\r\n", 4);
        if (!e) return r->len >= BUF - 1 ? -1 : 0;
        r->head_end = e + 4 - r->buf;
        parse_head(r);
        r->body_left -= (long)(r->len - r->head_end);
        r->len = 0; /* the head is parsed; the body is only counted */
    } else {
        r->body_left -= (long)got;
        r->len = 0;
    }
    return r->body_left <= 0 ? 1 : 0;
}

/* ------------------------------------------------------------------ keep-alive mode */
struct kconn {
    int fd;
    double sent;
    struct resp r;
};

static int keepalive(int argc, char **argv) {
    double seconds = atof(argv[2]);
    FILE *f = fopen(argv[3], "rb");
    if (!f) die(argv[3]);
    static char req[8192];
    size_t reqlen = fread(req, 1, sizeof req, f);
    fclose(f);
    int n = argc - 4;
    struct kconn *c = calloc(n, sizeof *c);
    int ep = epoll_create1(0);
    long done = 0, non200 = 0, errors = 0;
    double start = now(), deadline = start + seconds;
    for (int i = 0; i < n; i++) {
        c[i].fd = atoi(argv[4 + i]);
        fcntl(c[i].fd, F_SETFL, fcntl(c[i].fd, F_GETFL) | O_NONBLOCK);
        resp_reset(&c[i].r);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c[i].fd, &ev) < 0) die("epoll_ctl");
        c[i].sent = now();
        if (write(c[i].fd, req, reqlen) != (ssize_t)reqlen) die("write");
    }
    int live = n;
    struct epoll_event evs[256];
    while (live > 0) {
        double t = now();
        if (t >= deadline) break;
        int k = epoll_wait(ep, evs, 256, (int)((deadline - t) * 1000) + 1);
        for (int j = 0; j < k; j++) {
            struct kconn *x = &c[evs[j].data.u32];
            for (;;) {
                ssize_t got = read(x->fd, x->r.buf + x->r.len, BUF - x->r.len);
                if (got < 0 && errno == EAGAIN) break;
                if (got <= 0) { /* the proxy closed it: counted, the connection is lost */
                    errors++;
                    epoll_ctl(ep, EPOLL_CTL_DEL, x->fd, NULL);
                    live--;
                    break;
                }
                x->r.len += got;
                int st = resp_feed(&x->r, got);
                if (st < 0) { errors++; epoll_ctl(ep, EPOLL_CTL_DEL, x->fd, NULL); live--; break; }
                if (st == 0) continue;
                double end = now();
                if (end > deadline) break;
                done++;
                if (x->r.status != 200) non200++;
                record(end - x->sent);
                resp_reset(&x->r);
                x->sent = end;
                if (write(x->fd, req, reqlen) != (ssize_t)reqlen) { errors++; live--; break; }
            }
        }
    }
    double elapsed = now() - start;
    if (elapsed > seconds) elapsed = seconds;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    qsort(lat, nlat, sizeof *lat, cmp32);
    printf("{\"mode\":\"keepalive\",\"connections\":%d,\"seconds\":%.3f,\"requests\":%ld,\"rps\":%.1f,"
           "\"non200\":%ld,\"errors\":%ld,\"p50_us\":%u,\"p90_us\":%u,\"p99_us\":%u,\"max_us\":%u,"
           "\"cpu_user\":%.3f,\"cpu_sys\":%.3f}\n",
           n, elapsed, done, done / elapsed, non200, errors, pct(.5), pct(.9), pct(.99), nlat ? lat[nlat - 1] : 0,
           ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
    return 0;
}

/* ------------------------------------------------------------------ base64 */
static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static size_t b64enc(const unsigned char *in, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = in[i] << 16 | (i + 1 < n ? in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        out[o++] = i + 1 < n ? b64[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? b64[v & 63] : '=';
    }
    out[o] = 0;
    return o;
}
static size_t b64dec(const char *in, unsigned char *out) {
    uint32_t v = 0;
    int bits = 0;
    size_t o = 0;
    for (; *in && *in != '='; in++) {
        const char *p = strchr(b64, *in);
        if (!p) continue;
        v = v << 6 | (uint32_t)(p - b64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(v >> bits);
        }
    }
    return o;
}

/* ------------------------------------------------------------------ handshake mode */
static gss_cred_id_t cred = GSS_C_NO_CREDENTIAL;
static gss_name_t target_name;
static gss_OID_desc spnego_oid = {6, "\x2b\x06\x01\x05\x05\x02"};

static void gss_die(const char *what, OM_uint32 major, OM_uint32 minor) {
    OM_uint32 m, ctx = 0;
    gss_buffer_desc t;
    fprintf(stderr, "%s failed:", what);
    gss_display_status(&m, major, GSS_C_GSS_CODE, GSS_C_NO_OID, &ctx, &t);
    fprintf(stderr, " %.*s", (int)t.length, (char *)t.value);
    gss_release_buffer(&m, &t);
    ctx = 0;
    gss_display_status(&m, minor, GSS_C_MECH_CODE, GSS_C_NO_OID, &ctx, &t);
    fprintf(stderr, "; %.*s\n", (int)t.length, (char *)t.value);
    exit(2);
}

/* The user's tickets, copied from the file cache into a MEMORY cache that becomes the process's
 * default (KRB5CCNAME), and one SPNEGO initiator credential acquired from it: gss_init_sec_context
 * then neither re-acquires credentials (a SPNEGO init with a krb5-only credential did, reading the
 * file cache eight times and probing client.keytab and ~/.k5identity per handshake) nor touches a
 * file. The target is imported as a Kerberos principal name (HTTP/localhost), not the host-based
 * HTTP@localhost, which made every init canonicalize the host through /etc/hosts. */
static void setup_gss(const char *spn) {
    krb5_context k;
    krb5_ccache fcc, mcc;
    krb5_principal me;
    if (krb5_init_context(&k)) die("krb5_init_context");
    if (krb5_cc_default(k, &fcc) || krb5_cc_get_principal(k, fcc, &me)) {
        fprintf(stderr, "no ticket in KRB5CCNAME (kinit first)\n");
        exit(2);
    }
    if (krb5_cc_new_unique(k, "MEMORY", NULL, &mcc) || krb5_cc_initialize(k, mcc, me) ||
        krb5_cc_copy_creds(k, fcc, mcc)) {
        fprintf(stderr, "cannot copy the ticket cache into memory\n");
        exit(2);
    }
    static char name[256];
    snprintf(name, sizeof name, "MEMORY:%s", krb5_cc_get_name(k, mcc));
    setenv("KRB5CCNAME", name, 1);
    krb5_cc_close(k, fcc); /* mcc stays open: a MEMORY cache lives while a handle does */
    OM_uint32 major, minor;
    gss_OID_set_desc mechs = {1, &spnego_oid};
    major = gss_acquire_cred(&minor, GSS_C_NO_NAME, GSS_C_INDEFINITE, &mechs, GSS_C_INITIATE, &cred, NULL, NULL);
    if (GSS_ERROR(major)) gss_die("gss_acquire_cred", major, minor);
    gss_buffer_desc nb = {strlen(spn), (void *)spn};
    major = gss_import_name(&minor, &nb, strchr(spn, '/') ? (gss_OID)GSS_KRB5_NT_PRINCIPAL_NAME : GSS_C_NT_HOSTBASED_SERVICE,
                            &target_name);
    if (GSS_ERROR(major)) gss_die("gss_import_name", major, minor);
}

enum hstate { CONNECTING, READ407, READ200 };
struct hconn {
    int fd;
    enum hstate st;
    double started;
    gss_ctx_id_t ctx;
    struct resp r;
};

static struct sockaddr_in proxy_addr;
static char *target, *host;
static int preemptive;
static long h_done, h_errors, h_mutual, h_no_mutual, h_unexpected;
static char last_error[256];

/* The first SPNEGO token of a new context, as a request with Proxy-Authorization. */
static int send_token(struct hconn *c) {
    OM_uint32 major, minor;
    gss_buffer_desc out = GSS_C_EMPTY_BUFFER;
    major = gss_init_sec_context(&minor, cred, &c->ctx, target_name, &spnego_oid,
                                 GSS_C_MUTUAL_FLAG, 0, GSS_C_NO_CHANNEL_BINDINGS, GSS_C_NO_BUFFER, NULL,
                                 &out, NULL, NULL);
    if (GSS_ERROR(major)) gss_die("gss_init_sec_context", major, minor);
    static char req[16384];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Negotiate ", target, host);
    n += b64enc(out.value, out.length, req + n);
    n += snprintf(req + n, sizeof req - n, "\r\n\r\n");
    gss_release_buffer(&minor, &out);
    return write(c->fd, req, n) == n ? 0 : -1;
}

static int send_plain(struct hconn *c) {
    char req[1024];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, host);
    return write(c->fd, req, n) == n ? 0 : -1;
}

static void h_close(int ep, struct hconn *c) {
    OM_uint32 minor;
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (c->ctx != GSS_C_NO_CONTEXT) gss_delete_sec_context(&minor, &c->ctx, GSS_C_NO_BUFFER);
}

static void h_open(int ep, struct hconn *c, uint32_t id) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->started = now();
    c->st = CONNECTING;
    c->ctx = GSS_C_NO_CONTEXT;
    resp_reset(&c->r);
    if (connect(c->fd, (struct sockaddr *)&proxy_addr, sizeof proxy_addr) < 0 && errno != EINPROGRESS) die("connect");
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = id};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void h_fail(int ep, struct hconn *c, uint32_t id, const char *why) {
    h_errors++;
    snprintf(last_error, sizeof last_error, "%s", why);
    h_close(ep, c);
    h_open(ep, c, id);
}

static int handshake(int argc, char **argv) {
    double seconds = atof(argv[2]);
    int n = atoi(argv[3]);
    proxy_addr.sin_family = AF_INET;
    proxy_addr.sin_port = htons(atoi(argv[4]));
    proxy_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    target = argv[5];
    host = argv[6];
    preemptive = argc > 8 && !strcmp(argv[8], "preemptive");
    setup_gss(argv[7]);
    struct hconn *c = calloc(n, sizeof *c);
    int ep = epoll_create1(0);
    double start = now(), deadline = start + seconds;
    for (int i = 0; i < n; i++) h_open(ep, &c[i], i);
    struct epoll_event evs[256];
    for (;;) {
        double t = now();
        if (t >= deadline) break;
        int k = epoll_wait(ep, evs, 256, (int)((deadline - t) * 1000) + 1);
        for (int j = 0; j < k; j++) {
            uint32_t id = evs[j].data.u32;
            struct hconn *x = &c[id];
            if (x->fd < 0) continue;
            if (x->st == CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(x->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) { h_fail(ep, x, id, "connect failed"); continue; }
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = id};
                epoll_ctl(ep, EPOLL_CTL_MOD, x->fd, &ev);
                x->st = preemptive ? READ200 : READ407;
                if ((preemptive ? send_token(x) : send_plain(x)) < 0) h_fail(ep, x, id, "write failed");
                continue;
            }
            for (;;) {
                ssize_t got = read(x->fd, x->r.buf + x->r.len, BUF - x->r.len);
                if (got < 0 && errno == EAGAIN) break;
                if (got <= 0) { h_fail(ep, x, id, x->st == READ407 ? "closed after the 407" : "closed before the 200"); break; }
                x->r.len += got;
                int st = resp_feed(&x->r, got);
                if (st < 0) { h_fail(ep, x, id, "bad response head"); break; }
                if (st == 0) continue;
                if (x->st == READ407) {
                    if (x->r.status != 407 || !x->r.offers_negotiate || x->r.close) {
                        char why[64];
                        snprintf(why, sizeof why, "first answer %d%s", x->r.status, x->r.close ? " with close" : "");
                        h_unexpected++;
                        h_fail(ep, x, id, why);
                        break;
                    }
                    resp_reset(&x->r);
                    x->st = READ200;
                    if (send_token(x) < 0) h_fail(ep, x, id, "write failed");
                    break;
                }
                /* READ200 */
                if (x->r.status != 200) {
                    char why[64];
                    snprintf(why, sizeof why, "answer to the token %d", x->r.status);
                    h_unexpected++;
                    h_fail(ep, x, id, why);
                    break;
                }
                double end = now();
                int counted = end <= deadline;
                if (x->r.token[0]) {
                    static unsigned char tok[8192];
                    gss_buffer_desc in = {b64dec(x->r.token, tok), tok}, out = GSS_C_EMPTY_BUFFER;
                    OM_uint32 major, minor;
                    major = gss_init_sec_context(&minor, cred, &x->ctx, target_name, &spnego_oid,
                                                 GSS_C_MUTUAL_FLAG, 0, GSS_C_NO_CHANNEL_BINDINGS, &in, NULL,
                                                 &out, NULL, NULL);
                    gss_release_buffer(&minor, &out);
                    if (major != GSS_S_COMPLETE) { h_fail(ep, x, id, "mutual authentication failed"); break; }
                    h_mutual += counted;
                } else {
                    h_no_mutual += counted;
                }
                if (counted) {
                    h_done++;
                    record(end - x->started);
                }
                h_close(ep, x);
                h_open(ep, x, id);
                break;
            }
        }
    }
    double elapsed = now() - start;
    if (elapsed > seconds) elapsed = seconds;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    qsort(lat, nlat, sizeof *lat, cmp32);
    printf("{\"mode\":\"handshake\",\"concurrency\":%d,\"seconds\":%.3f,\"handshakes\":%ld,\"rate\":%.1f,"
           "\"errors\":%ld,\"unexpected_status\":%ld,\"mutual_checked\":%ld,\"no_mutual_token\":%ld,"
           "\"last_error\":\"%s\",\"p50_us\":%u,\"p90_us\":%u,\"p99_us\":%u,\"max_us\":%u,"
           "\"cpu_user\":%.3f,\"cpu_sys\":%.3f}\n",
           n, elapsed, h_done, h_done / elapsed, h_errors, h_unexpected, h_mutual, h_no_mutual, last_error,
           pct(.5), pct(.9), pct(.99), nlat ? lat[nlat - 1] : 0,
           ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "keepalive")) return keepalive(argc, argv);
    if (argc >= 8 && !strcmp(argv[1], "handshake")) return handshake(argc, argv);
    fprintf(stderr,
            "usage: negload keepalive SECONDS REQUEST_FILE FD…\n"
            "       negload handshake SECONDS CONCURRENCY PORT TARGET HOST SPN [preemptive]\n");
    return 2;
}
