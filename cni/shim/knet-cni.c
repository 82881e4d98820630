/* knet-cni: the executable a container runtime runs for the knet CNI plugin (native thin client).
 *
 * As with Cilium's and Multus' plugins, what the runtime executes is a small native program and the
 * logic lives in the node's long-running agent (cni/agent.py). This program does what the Python
 * thin executable (cni/knet-cni -> cni/shim.py) does on its agent path, at the start-up cost of a
 * C program (~1 ms of CPU instead of an interpreter's ~15 ms):
 *   - read the CNI_* environment and the network configuration on stdin;
 *   - find the agent's socket: the configuration's top-level string "agentSocket", else
 *     /run/knet/cni.sock (the only JSON this program interprets; it also reads "cniVersion" for
 *     its one error of its own);
 *   - speak the exchange of cni/wire.py (KNETCNI3 header with the caller's network namespace inode
 *     and its CLOCK_MONOTONIC deadline for STARTED; STARTED, then "<exit status> <size>" + stdout);
 *   - write the agent's stdout and exit with its status.
 * Whenever the agent cannot take the request (no socket, nobody listening, refused, another
 * namespace, no STARTED by the deadline, ABORTED, gone or garbled before its answer) it execs the
 * Python executable, `knet-cni-py --direct`, with the same environment and the same stdin (a memfd
 * holding what was read), which runs the plugin in-process. VERSION and KNET_CNI_DIRECT=1 go there
 * at once. The bounds are cni/shim.py's (connect 1 s, STARTED 3 s, answer 120 s of silence, after
 * which the answer is CNI error 11); KNET_CNI_START_TIMEOUT and KNET_CNI_ANSWER_TIMEOUT (seconds)
 * override the last two in both executables, for tests.
 *
 * Only libc. Built by scripts/install-deps (gcc -O2, static when libc.a is there) into the
 * environment's bin next to knet-cni-py, and by the Containerfile's build stage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define DEFAULT_AGENT_SOCKET "/run/knet/cni.sock"
#define PROTOCOL "KNETCNI3"
#define FALLBACK_NAME "knet-cni-py"
#define CONNECT_TIMEOUT_NS 1000000000LL
#define START_TIMEOUT_S 3.0
#define ANSWER_TIMEOUT_S 120.0
#define TRY_AGAIN_LATER 11
#define IO_FAILURE 5
#define LINE_LIMIT 4096              /* as shim._Reader.line */
#define MAX_ANSWER (64u << 20)       /* a larger announced answer is garbage */
#define MAX_JSON_DEPTH 900           /* deeper: not a configuration (Python: RecursionError) */

/* Must equal cni/versions.py (tests/unit/test_cni_native.py compares them). */
static const char *const SUPPORTED_VERSIONS[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};
#define LATEST_VERSION "1.1.0"

struct buf {
    char *data;
    size_t len, cap;
};

static void buf_add(struct buf *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p) {
            static const char oom[] = "knet-cni: out of memory\n";
            if (write(2, oom, sizeof oom - 1) < 0) { /* nothing more to do */ }
            _exit(1);
        }
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void buf_str(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t seconds_from_env(const char *name, double fallback)
{
    const char *v = getenv(name);
    double s = fallback;
    if (v && *v) {
        char *end;
        double parsed = strtod(v, &end);
        if (*end == '\0' && parsed > 0 && parsed < 1e6)
            s = parsed;
    }
    return (int64_t)(s * 1e9);
}

/* ---- the configuration: strict JSON (as Python's json module with strict=True), one pass ---- */

struct token {                 /* a JSON string's contents between its quotes, undecoded */
    const unsigned char *start;
    size_t len;
    int is_string;             /* 0: the key is absent or its value is not a string */
};

struct scanner {
    const unsigned char *p, *end;
    int depth;
    struct token agent_socket, cni_version;
};

static int valid_utf8(const unsigned char *p, size_t n)
{
    const unsigned char *end = p + n;
    while (p < end) {
        unsigned char c = *p++;
        if (c < 0x80)
            continue;
        int more;
        unsigned char lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) more = 1;
        else if (c == 0xe0) { more = 2; lo = 0xa0; }
        else if (c >= 0xe1 && c <= 0xef) { more = 2; if (c == 0xed) hi = 0x9f; }
        else if (c == 0xf0) { more = 3; lo = 0x90; }
        else if (c >= 0xf1 && c <= 0xf3) more = 3;
        else if (c == 0xf4) { more = 3; hi = 0x8f; }
        else return 0;
        if (end - p < more || p[0] < lo || p[0] > hi)
            return 0;
        for (int i = 1; i < more; i++)
            if ((p[i] & 0xc0) != 0x80)
                return 0;
        p += more;
    }
    return 1;
}

static void skip_ws(struct scanner *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static int literal(struct scanner *s, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
        return -1;
    s->p += n;
    return 0;
}

static int scan_string(struct scanner *s, struct token *tok)
{
    const unsigned char *start = ++s->p;  /* past the opening quote */
    while (s->p < s->end) {
        unsigned char c = *s->p;
        if (c == '"') {
            tok->start = start;
            tok->len = (size_t)(s->p - start);
            tok->is_string = 1;
            s->p++;
            return 0;
        }
        if (c < 0x20)
            return -1;
        if (c != '\\') {
            s->p++;
            continue;
        }
        if (s->end - s->p < 2)
            return -1;
        if (s->p[1] && strchr("\"\\/bfnrt", s->p[1])) {
            s->p += 2;
        } else if (s->p[1] == 'u' && s->end - s->p >= 6 && is_hex(s->p[2]) && is_hex(s->p[3]) &&
                   is_hex(s->p[4]) && is_hex(s->p[5])) {
            s->p += 6;
        } else {
            return -1;
        }
    }
    return -1;
}

static int scan_number(struct scanner *s)
{
    if (*s->p == '-')
        s->p++;
    if (s->p < s->end && *s->p == '0') {
        s->p++;
    } else if (s->p < s->end && *s->p >= '1' && *s->p <= '9') {
        while (s->p < s->end && is_digit(*s->p))
            s->p++;
    } else {
        return -1;
    }
    if (s->end - s->p >= 2 && *s->p == '.' && is_digit(s->p[1])) {
        s->p += 2;
        while (s->p < s->end && is_digit(*s->p))
            s->p++;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        const unsigned char *q = s->p + 1;
        if (q < s->end && (*q == '+' || *q == '-'))
            q++;
        if (q < s->end && is_digit(*q)) {
            while (q < s->end && is_digit(*q))
                q++;
            s->p = q;
        }  /* else the 'e' is left for the caller to reject, as Python does */
    }
    return 0;
}

static int token_equals(const struct token *tok, const char *ascii);
static int scan_value(struct scanner *s);

static int scan_container(struct scanner *s, unsigned char close)
{
    if (++s->depth > MAX_JSON_DEPTH)
        return -1;
    int top = s->depth == 1 && close == '}';
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        s->depth--;
        return 0;
    }
    for (;;) {
        struct token *field = NULL;
        if (close == '}') {
            struct token key = {0};
            if (s->p >= s->end || *s->p != '"' || scan_string(s, &key) < 0)
                return -1;
            if (top && token_equals(&key, "agentSocket"))
                field = &s->agent_socket;
            else if (top && token_equals(&key, "cniVersion"))
                field = &s->cni_version;
            skip_ws(s);
            if (s->p >= s->end || *s->p != ':')
                return -1;
            s->p++;
            skip_ws(s);
        }
        if (field) {  /* the last occurrence of a key is the one that counts, as in Python */
            field->is_string = 0;
            if (s->p < s->end && *s->p == '"') {
                if (scan_string(s, field) < 0)
                    return -1;
            } else if (scan_value(s) < 0) {
                return -1;
            }
        } else if (scan_value(s) < 0) {
            return -1;
        }
        skip_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            skip_ws(s);
            continue;
        }
        if (s->p < s->end && *s->p == close) {
            s->p++;
            s->depth--;
            return 0;
        }
        return -1;
    }
}

static int scan_value(struct scanner *s)
{
    if (s->p >= s->end)
        return -1;
    struct token ignored;
    switch (*s->p) {
    case '{': return scan_container(s, '}');
    case '[': return scan_container(s, ']');
    case '"': return scan_string(s, &ignored);
    case 't': return literal(s, "true");
    case 'f': return literal(s, "false");
    case 'n': return literal(s, "null");
    case 'N': return literal(s, "NaN");
    case 'I': return literal(s, "Infinity");
    case '-':
        if (s->end - s->p > 1 && s->p[1] == 'I')
            return literal(s, "-Infinity");
        return scan_number(s);
    default:
        return is_digit(*s->p) ? scan_number(s) : -1;
    }
}

/* The configuration's agentSocket and cniVersion (each unset unless the whole input is one valid
 * JSON object and the key's last value is a string). */
static void scan_config(const char *data, size_t len, struct token *agent_socket, struct token *cni_version)
{
    struct scanner s = {(const unsigned char *)data, (const unsigned char *)data + len, 0, {0}, {0}};
    memset(agent_socket, 0, sizeof *agent_socket);
    memset(cni_version, 0, sizeof *cni_version);
    if (!valid_utf8(s.p, len))
        return;
    skip_ws(&s);
    if (s.p >= s.end || *s.p != '{' || scan_value(&s) < 0)
        return;
    skip_ws(&s);
    if (s.p != s.end)
        return;
    *agent_socket = s.agent_socket;
    *cni_version = s.cni_version;
}

static unsigned hex4(const unsigned char *p)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++)
        v = v * 16 + (unsigned)(is_digit(p[i]) ? p[i] - '0' : (p[i] | 0x20) - 'a' + 10);
    return v;
}

/* The next code point of a scanned string token (escapes decoded, surrogate pairs joined as
 * Python's json does; a lone surrogate stays one), or -1 at its end. */
static long next_code_point(const unsigned char **pp, const unsigned char *end)
{
    const unsigned char *p = *pp;
    if (p >= end)
        return -1;
    long cp;
    if (*p == '\\') {
        switch (p[1]) {
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u': cp = -2; break;
        default: cp = p[1]; break;
        }
        if (cp != -2) {
            *pp = p + 2;
            return cp;
        }
        cp = hex4(p + 2);
        p += 6;
        if (cp >= 0xd800 && cp <= 0xdbff && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
            unsigned low = hex4(p + 2);
            if (low >= 0xdc00 && low <= 0xdfff) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
                p += 6;
            }
        }
        *pp = p;
        return cp;
    }
    int more = *p < 0x80 ? 0 : *p < 0xe0 ? 1 : *p < 0xf0 ? 2 : 3;
    cp = more ? *p & (0x3f >> more) : *p;
    for (int i = 1; i <= more; i++)
        cp = (cp << 6) | (p[i] & 0x3f);
    *pp = p + 1 + more;
    return cp;
}

static int token_equals(const struct token *tok, const char *ascii)
{
    const unsigned char *p = tok->start, *end = tok->start + tok->len;
    long cp;
    while ((cp = next_code_point(&p, end)) >= 0)
        if (*ascii == '\0' || cp != (unsigned char)*ascii++)
            return 0;
    return *ascii == '\0';
}

/* A path as Python's os functions encode a str: UTF-8, surrogateescape. 0 when it cannot be one
 * (a NUL, an unencodable surrogate): then there is no usable agent. */
static int token_to_path(const struct token *tok, struct buf *out)
{
    const unsigned char *p = tok->start, *end = tok->start + tok->len;
    long cp;
    while ((cp = next_code_point(&p, end)) >= 0) {
        unsigned char u[4];
        size_t n;
        if (cp == 0 || (cp >= 0xd800 && cp <= 0xdfff && (cp < 0xdc80 || cp > 0xdcff)))
            return 0;
        if (cp < 0x80 || (cp >= 0xdc80 && cp <= 0xdcff)) {
            u[0] = (unsigned char)(cp < 0x80 ? cp : cp - 0xdc00);
            n = 1;
        } else if (cp < 0x800) {
            u[0] = (unsigned char)(0xc0 | (cp >> 6));
            u[1] = (unsigned char)(0x80 | (cp & 0x3f));
            n = 2;
        } else if (cp < 0x10000) {
            u[0] = (unsigned char)(0xe0 | (cp >> 12));
            u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
            u[2] = (unsigned char)(0x80 | (cp & 0x3f));
            n = 3;
        } else {
            u[0] = (unsigned char)(0xf0 | (cp >> 18));
            u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
            u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
            u[3] = (unsigned char)(0x80 | (cp & 0x3f));
            n = 4;
        }
        buf_add(out, u, n);
    }
    return 1;
}

/* A string's contents escaped as Python's json.dumps writes them (ensure_ascii), from a scanned
 * token or, when tok is NULL, from ASCII text. */
static void json_escape(struct buf *out, const struct token *tok, const char *ascii)
{
    static const char hexdigits[] = "0123456789abcdef";
    const unsigned char *p = tok ? tok->start : (const unsigned char *)ascii;
    const unsigned char *end = tok ? tok->start + tok->len : p + strlen(ascii);
    long cp;
    while ((cp = tok ? next_code_point(&p, end) : (p < end ? *p++ : -1)) >= 0) {
        const char *esc = cp == '"' ? "\\\"" : cp == '\\' ? "\\\\" : cp == '\n' ? "\\n" : cp == '\r' ? "\\r"
                        : cp == '\t' ? "\\t" : cp == '\b' ? "\\b" : cp == '\f' ? "\\f" : NULL;
        if (esc) {
            buf_str(out, esc);
        } else if (cp >= ' ' && cp <= '~') {
            char c = (char)cp;
            buf_add(out, &c, 1);
        } else {
            long units[2] = {cp, -1};
            if (cp > 0xffff) {
                units[0] = 0xd800 + ((cp - 0x10000) >> 10);
                units[1] = 0xdc00 + ((cp - 0x10000) & 0x3ff);
            }
            for (int i = 0; i < 2 && units[i] >= 0; i++) {
                char e[6] = {'\\', 'u', hexdigits[(units[i] >> 12) & 15], hexdigits[(units[i] >> 8) & 15],
                             hexdigits[(units[i] >> 4) & 15], hexdigits[units[i] & 15]};
                buf_add(out, e, 6);
            }
        }
    }
}

/* ---- the exchange with the agent (cni/wire.py) ---- */

struct conn {
    int fd;
    char buf[LINE_LIMIT + 8192];
    size_t len;
};

/* Read more into c->buf, waiting until deadline_ns (0: no waiting). 1 read, 0 EOF or error,
 * -1 nothing before the deadline. */
static int read_more(struct conn *c, int64_t deadline_ns)
{
    if (c->len == sizeof c->buf)
        return 0;
    for (;;) {
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, MSG_DONTWAIT);
        if (n > 0) {
            c->len += (size_t)n;
            return 1;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            return 0;
        if (errno == EINTR)
            continue;
        int64_t left = deadline_ns - now_ns();
        if (deadline_ns == 0 || left <= 0)
            return -1;
        struct pollfd pfd = {c->fd, POLLIN, 0};
        struct timespec ts = {left / 1000000000LL, left % 1000000000LL};
        if (ppoll(&pfd, 1, &ts, NULL) < 0 && errno != EINTR)
            return 0;
    }
}

/* The next line (without its newline, NUL-terminated in *line), as shim._Reader.line: 1 a line,
 * 0 EOF, error or more than LINE_LIMIT bytes without one, -1 the deadline passed first. */
static int read_line(struct conn *c, char *line, int64_t deadline_ns)
{
    for (;;) {
        char *nl = memchr(c->buf, '\n', c->len);
        if (nl) {
            size_t n = (size_t)(nl - c->buf);
            memcpy(line, c->buf, n);
            line[n] = '\0';
            memmove(c->buf, nl + 1, c->len - n - 1);
            c->len -= n + 1;
            return 1;
        }
        if (c->len > LINE_LIMIT)
            return 0;
        int r = read_more(c, deadline_ns);
        if (r <= 0)
            return r;
    }
}

/* "<exit status 0-255> <size>": 1 parsed, 0 anything else. */
static int parse_answer_head(const char *head, int *code, size_t *size)
{
    const char *p = head;
    unsigned long v[2];
    for (int i = 0; i < 2; i++) {
        if (!is_digit((unsigned char)*p) || (p[0] == '0' && is_digit((unsigned char)p[1])))
            return 0;
        v[i] = 0;
        while (is_digit((unsigned char)*p)) {
            v[i] = v[i] * 10 + (unsigned long)(*p++ - '0');
            if (v[i] > MAX_ANSWER)
                return 0;
        }
        if (*p != (i == 0 ? ' ' : '\0'))
            return 0;
        p++;
    }
    if (v[0] > 255)
        return 0;
    *code = (int)v[0];
    *size = v[1];
    return 1;
}

enum outcome { DIRECT, ANSWERED, TOO_SLOW };

static int send_all(int fd, struct iovec *iov, int n, int64_t deadline_ns)
{
    while (n > 0) {
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t sent = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            int64_t left = deadline_ns - now_ns();
            if ((errno != EAGAIN && errno != EWOULDBLOCK) || left <= 0)
                return -1;
            struct pollfd pfd = {fd, POLLOUT, 0};
            struct timespec ts = {left / 1000000000LL, left % 1000000000LL};
            if (ppoll(&pfd, 1, &ts, NULL) < 0 && errno != EINTR)
                return -1;
            continue;
        }
        while (n > 0 && (size_t)sent >= iov->iov_len) {
            sent -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + sent;
            iov->iov_len -= (size_t)sent;
        }
    }
    return 0;
}

static enum outcome via_agent(const char *path, size_t path_len, const struct buf *env, const struct buf *in,
                              int64_t start_timeout_ns, int64_t answer_timeout_ns, struct buf *out, int *code)
{
    static struct conn c;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    struct stat ns;
    int64_t deadline = now_ns() + start_timeout_ns;
    if (path_len > sizeof addr.sun_path || stat("/proc/thread-self/ns/net", &ns) < 0)
        return DIRECT;
    memcpy(addr.sun_path, path, path_len);
    c.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c.fd < 0)
        return DIRECT;
    /* A unix socket's connect waits up to SO_SNDTIMEO for room in a full accept queue. */
    struct timeval tv = {CONNECT_TIMEOUT_NS / 1000000000LL, 0};
    setsockopt(c.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(c.fd, (struct sockaddr *)&addr, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len)) < 0)
        return DIRECT;
    char head[160];
    int head_len = snprintf(head, sizeof head, "%s %llu %lld %zu %zu\n", PROTOCOL, (unsigned long long)ns.st_ino,
                            (long long)deadline, env->len, in->len);
    struct iovec iov[3] = {{head, (size_t)head_len}, {env->data, env->len}, {in->data, in->len}};
    if (send_all(c.fd, iov, 3, deadline) < 0)
        return DIRECT;  /* not there, not listening or not reading: it cannot have started */
    char line[LINE_LIMIT + 8192];
    /* The first line until the deadline, then one more look without waiting (wire.py: why that
     * makes giving up safe). */
    int r = read_line(&c, line, deadline);
    if (r < 0)
        r = read_line(&c, line, 0);
    if (r <= 0 || strcmp(line, "STARTED") != 0)
        return DIRECT;  /* not started in time, wrong namespace, refused, or gone: nothing was done */
    r = read_line(&c, line, now_ns() + answer_timeout_ns);
    size_t size;
    if (r < 0)
        return TOO_SLOW;
    if (r == 0 || !parse_answer_head(line, code, &size))
        return DIRECT;  /* ABORTED, gone, or garbled: the agent did not answer */
    buf_add(out, c.buf, c.len < size ? c.len : size);
    c.len = 0;
    while (out->len < size) {
        r = read_more(&c, now_ns() + answer_timeout_ns);
        if (r < 0)
            return TOO_SLOW;
        if (r == 0)
            return DIRECT;
        buf_add(out, c.buf, out->len + c.len > size ? size - out->len : c.len);
        c.len = 0;
    }
    return ANSWERED;
}

/* ---- the direct path ---- */

static void write_all(int fd, const char *data, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, data, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        data += w;
        n -= (size_t)w;
    }
}

/* The CNI error JSON as shim._error writes it, on stdout; exit status 1. The message is `msg`, then
 * the configured text `quoted` (when given) and `tail`. */
static int fail(const struct token *cni_version, int code, const char *msg, const struct token *quoted,
                const char *tail)
{
    struct buf out = {0};
    const char *version = LATEST_VERSION;
    for (size_t i = 0; cni_version->is_string && i < sizeof SUPPORTED_VERSIONS / sizeof *SUPPORTED_VERSIONS; i++)
        if (token_equals(cni_version, SUPPORTED_VERSIONS[i]))
            version = SUPPORTED_VERSIONS[i];
    char head[64];
    snprintf(head, sizeof head, "{\"cniVersion\": \"%s\", \"code\": %d, \"msg\": \"", version, code);
    buf_str(&out, head);
    json_escape(&out, NULL, msg);
    if (quoted)
        json_escape(&out, quoted, NULL);
    if (tail)
        json_escape(&out, NULL, tail);
    buf_str(&out, "\"}\n");
    write_all(1, out.data, out.len);
    return 1;
}

/* The Python executable next to this one (or in knet-cni.d/, as knet-install-cni lays it out on a
 * host), found from /proc/self/exe so that a symlink to this program works too. */
static int fallback_path(char *out, size_t size, const char *argv0)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
    } else if (strchr(argv0, '/') && strlen(argv0) < sizeof exe) {
        strcpy(exe, argv0);
    } else {
        return 0;
    }
    char *slash = strrchr(exe, '/');
    if (!slash)
        return 0;
    *slash = '\0';
    static const char *const where[] = {"%s/" FALLBACK_NAME, "%s/knet-cni.d/" FALLBACK_NAME};
    for (size_t i = 0; i < sizeof where / sizeof *where; i++) {
        int len = snprintf(out, size, where[i], exe);
        if (len > 0 && (size_t)len < size && access(out, X_OK) == 0)
            return 1;
    }
    return 0;
}

/* Give the Python executable the stdin this program consumed: a memfd (or, without memfd, a pipe
 * a child fills). */
static int restore_stdin(const struct buf *in)
{
    int fd = memfd_create("knet-cni-stdin", MFD_CLOEXEC);
    if (fd == 0) {  /* stdin was closed: the memfd took its place */
        write_all(0, in->data, in->len);
        return lseek(0, 0, SEEK_SET) == 0 && fcntl(0, F_SETFD, 0) == 0 ? 0 : -1;
    }
    if (fd > 0) {
        write_all(fd, in->data, in->len);
        if (lseek(fd, 0, SEEK_SET) == 0 && dup2(fd, 0) == 0) {
            close(fd);
            return 0;
        }
        close(fd);
        return -1;
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        write_all(p[1], in->data, in->len);
        _exit(0);
    }
    close(p[1]);
    if (pid < 0 || dup2(p[0], 0) < 0)
        return -1;
    close(p[0]);
    return 0;
}

static int direct(const char *argv0, const struct buf *in, int stdin_consumed, const struct token *cni_version)
{
    char exe[PATH_MAX];
    if (!fallback_path(exe, sizeof exe, argv0))
        return fail(cni_version, IO_FAILURE, "knet-cni: no usable agent, and " FALLBACK_NAME
                    " (the direct path) is not installed next to this executable", NULL, NULL);
    if (stdin_consumed && restore_stdin(in) < 0)
        return fail(cni_version, IO_FAILURE, "knet-cni: cannot pass stdin to the direct path", NULL, NULL);
    char *args[] = {exe, "--direct", NULL};
    execv(exe, args);
    char msg[PATH_MAX + 128];
    snprintf(msg, sizeof msg, "knet-cni: cannot run the direct path %s: %s", exe, strerror(errno));
    return fail(cni_version, IO_FAILURE, msg, NULL, NULL);
}

/* ---- main ---- */

/* The environment as Python's os.environb sees it (entries without '=' left out, the first of
 * duplicate names kept), as NUL-separated "name=value" entries. */
static void environment_block(struct buf *out)
{
    for (char **e = environ; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        size_t key = (size_t)(eq - *e) + 1;  /* with the '=' */
        int seen = 0;
        for (char **f = environ; f < e && !seen; f++)
            seen = strncmp(*f, *e, key) == 0;
        if (seen)
            continue;
        if (out->len)
            buf_add(out, "\0", 1);
        buf_str(out, *e);
    }
}

int main(int argc, char **argv)
{
    const char *argv0 = argc > 0 && argv[0] ? argv[0] : "";
    struct buf in = {0}, env = {0}, out = {0};
    struct token agent_socket = {0}, cni_version = {0};
    const char *command = getenv("CNI_COMMAND"), *forced = getenv("KNET_CNI_DIRECT");
    if ((command && strcmp(command, "VERSION") == 0) || (forced && strcmp(forced, "1") == 0))
        return direct(argv0, &in, 0, &cni_version);
    int consumed = !isatty(0);
    if (consumed) {
        char chunk[65536];
        ssize_t n;
        while ((n = read(0, chunk, sizeof chunk)) != 0) {
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                break;
            buf_add(&in, chunk, (size_t)n);
        }
    }
    if (!in.data)
        buf_add(&in, "", 0);
    scan_config(in.data, in.len, &agent_socket, &cni_version);
    struct buf path = {0};
    struct token default_socket = {(const unsigned char *)DEFAULT_AGENT_SOCKET, sizeof DEFAULT_AGENT_SOCKET - 1, 1};
    const struct token *socket_token = agent_socket.is_string && agent_socket.len ? &agent_socket : &default_socket;
    struct stat st;
    if (!token_to_path(socket_token, &path) || stat(path.data ? path.data : "", &st) < 0)
        return direct(argv0, &in, consumed, &cni_version);
    environment_block(&env);
    if (!env.data)
        buf_add(&env, "", 0);
    int64_t answer_timeout = seconds_from_env("KNET_CNI_ANSWER_TIMEOUT", ANSWER_TIMEOUT_S);
    int code = 0;
    switch (via_agent(path.data, path.len, &env, &in, seconds_from_env("KNET_CNI_START_TIMEOUT", START_TIMEOUT_S),
                      answer_timeout, &out, &code)) {
    case ANSWERED:
        if (out.len) {
            buf_add(&out, "\n", 1);
            write_all(1, out.data, out.len);
        }
        return code;
    case TOO_SLOW: {
        char tail[96];
        snprintf(tail, sizeof tail, " started the request but did not answer within %.0fs; try again",
                 (double)answer_timeout / 1e9);
        return fail(&cni_version, TRY_AGAIN_LATER, "knet-cni-agent at ", socket_token, tail);
    }
    default:
        return direct(argv0, &in, consumed, &cni_version);
    }
}
