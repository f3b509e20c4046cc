/* Benchmark workloads for scripts/bench. The timed modes print one line "NAME OPS SECONDS"
 * (rtt and http-get add the median and 99th percentile of one operation, in microseconds).
 *
 *   workloads syscalls N     N cheap syscalls (getppid), N/10 file open+close, N/1000 fork+exec of /bin/true
 *   workloads connect N      N blocking TCP connects (+accept, close) to a listener on 127.0.0.1
 *                            in the same process (so accept is traced too)
 *   workloads connect-to N PORT [HOST]   N blocking TCP connects to HOST:PORT (an IPv4
 *                            address; default 127.0.0.1), another process
 *   workloads connect-udp N  N connect() calls of one UDP socket to 127.0.0.1:9: no packet is
 *                            sent and no other process woken, so what a tool adds to it is
 *                            its own price per connect, free of another process's scheduling
 *   workloads resolve N NAME N getaddrinfo(NAME) calls (glibc's resolver, A and AAAA)
 *   workloads hold N PORT HOST    opens N TCP connections to HOST:PORT (an echo server),
 *                            sends one byte on each and reads it back, as a client's pooled
 *                            connections have, then keeps them idle until stdin closes;
 *                            prints "held N" once all are open
 *   workloads acceptor N PORT     accept and close N connections on 127.0.0.1:PORT (0: any
 *                            free port), then exit; prints "ready PORT" once listening
 *   workloads allow-all PROGRAM [ARGS]  runs PROGRAM under a seccomp filter that allows
 *                            everything: the cost the kernel charges any seccomp-based tool
 *   workloads trap-connect PROGRAM [ARGS]  runs PROGRAM with its connect() calls trapped by
 *                            seccomp user notification and answered "continue" at once by a
 *                            supervisor that does nothing else (synchronous wake-ups where
 *                            the kernel has them): the price of the trap itself, which any
 *                            seccomp-notify tool pays per trapped call
 *   workloads pingpong N     N one-byte round trips between two threads over pipes: the
 *                            cost of two context switches, the floor of any interception
 *                            that wakes another thread
 *   workloads sockets N      N socket()+close() of UDP sockets (sctrace's container mode
 *                            traps socket() for inet domains)
 *   workloads msgs N         N small messages over one connected TCP socket pair with sendmsg/recvmsg
 *   workloads rtt N PORT HOST [SIZE]   one TCP connection to an echo server; after 100
 *                            untimed warm-up exchanges, N times: write SIZE bytes (default 64),
 *                            read them back; prints "rtt N SECONDS MEDIAN_US P99_US"
 *   workloads echo-server PORT HOST    TCP echo server, one thread per connection (blocking
 *                            read/write, TCP_NODELAY); prints "ready" once listening
 *   workloads http-server PORT HOST TAG   answers every HTTP request with the body "TAG\n" and
 *                            closes the connection; prints "ready" once listening
 *   workloads http-get N PORT HOST TAG   N HTTP/1.1 GETs, a new connection each, every answer
 *                            checked to be 200 with the body "TAG\n";
 *                            prints "http-get N SECONDS MEDIAN_US P99_US"
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <poll.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int listener_on(struct sockaddr_in *addr, int port) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0) die("socket");
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr->sin_port = htons(port);
    if (bind(l, (struct sockaddr *)addr, sizeof *addr)) die("bind");
    if (listen(l, 4096)) die("listen");
    socklen_t len = sizeof *addr;
    getsockname(l, (struct sockaddr *)addr, &len);
    return l;
}

static int listener(struct sockaddr_in *addr) { return listener_on(addr, 0); }

static long count;

static void *acceptor(void *arg) {
    int l = *(int *)arg;
    for (long i = 0; i < count; i++) {
        int c = accept(l, NULL, NULL);
        if (c < 0) die("accept");
        close(c);
    }
    return NULL;
}

static void connect_loop(long n, struct sockaddr_in *addr, const char *name) {
    double t0 = now();
    for (long i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0) die("socket");
        /* Closing with RST keeps TIME_WAIT from exhausting ephemeral ports. */
        struct linger lg = {1, 0};
        setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        if (connect(s, (struct sockaddr *)addr, sizeof *addr)) die("connect");
        close(s);
    }
    printf("%s %ld %.6f\n", name, n, now() - t0);
}

static void target(struct sockaddr_in *addr, int port, const char *host) {
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_port = htons(port);
    if (inet_pton(AF_INET, host ? host : "127.0.0.1", &addr->sin_addr) != 1) {
        fprintf(stderr, "not an IPv4 address: %s\n", host);
        exit(2);
    }
}

static void bench_connect_to(long n, int port, const char *host) {
    struct sockaddr_in addr;
    target(&addr, port, host);
    connect_loop(n, &addr, "connect-to");
}

static void bench_connect_udp(long n) {
    struct sockaddr_in addr;
    target(&addr, 9, NULL);
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket");
    double t0 = now();
    for (long i = 0; i < n; i++)
        if (connect(s, (struct sockaddr *)&addr, sizeof addr)) die("connect");
    printf("connect-udp %ld %.6f\n", n, now() - t0);
    close(s);
}

/* socket() and close() of UDP sockets: what creating a socket costs (sctrace's container
 * mode traps socket() for inet domains). */
static void bench_sockets(long n) {
    double t0 = now();
    for (long i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (s < 0) die("socket");
        close(s);
    }
    printf("sockets %ld %.6f\n", n, now() - t0);
}

static void bench_resolve(long n, const char *name) {
    double t0 = now();
    for (long i = 0; i < n; i++) {
        struct addrinfo hints = {0}, *res;
        hints.ai_socktype = SOCK_STREAM;
        int err = getaddrinfo(name, NULL, &hints, &res);
        if (err) {
            fprintf(stderr, "getaddrinfo %s: %s\n", name, gai_strerror(err));
            exit(1);
        }
        freeaddrinfo(res);
    }
    printf("resolve %ld %.6f\n", n, now() - t0);
}

static void hold(long n, int port, const char *host) {
    struct sockaddr_in addr;
    target(&addr, port, host);
    for (long i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0) die("socket");
        if (connect(s, (struct sockaddr *)&addr, sizeof addr)) die("connect");
        char c = 'x';
        if (write(s, &c, 1) != 1) die("write");
        if (read(s, &c, 1) != 1) die("read");
    }
    printf("held %ld\n", n);
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
}

static void run_acceptor(long n, int port) {
    struct sockaddr_in addr;
    int l = listener_on(&addr, port);
    printf("ready %d\n", ntohs(addr.sin_port));
    fflush(stdout);
    count = n;
    acceptor(&l);
}

static void bench_connect(long n) {
    struct sockaddr_in addr;
    int l = listener(&addr);
    count = n;
    pthread_t t;
    pthread_create(&t, NULL, acceptor, &l);
    connect_loop(n, &addr, "connect");
    pthread_join(t, NULL);
}

static void *echo_reader(void *arg) {
    int s = *(int *)arg;
    char buf[64];
    struct iovec iov = {buf, sizeof buf};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    long got = 0, want = count * 16;
    while (got < want) {
        ssize_t r = recvmsg(s, &msg, 0);
        if (r <= 0) die("recvmsg");
        got += r;
    }
    return NULL;
}

static void bench_msgs(long n) {
    struct sockaddr_in addr;
    int l = listener(&addr);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&addr, sizeof addr)) die("connect");
    int s = accept(l, NULL, NULL);
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    count = n;
    pthread_t t;
    pthread_create(&t, NULL, echo_reader, &s);
    char payload[16] = "0123456789abcdef";
    struct iovec iov = {payload, sizeof payload};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    double t0 = now();
    for (long i = 0; i < n; i++) {
        if (sendmsg(c, &msg, 0) != sizeof payload) die("sendmsg");
    }
    pthread_join(t, NULL);
    printf("msgs %ld %.6f\n", n, now() - t0);
}

static int ping[2], pong[2];

static void *ponger(void *arg) {
    (void)arg;
    char c;
    for (long i = 0; i < count; i++) {
        if (read(ping[0], &c, 1) != 1 || write(pong[1], &c, 1) != 1) die("pipe");
    }
    return NULL;
}

static void bench_pingpong(long n) {
    if (pipe(ping) || pipe(pong)) die("pipe");
    count = n;
    pthread_t t;
    pthread_create(&t, NULL, ponger, NULL);
    char c = 0;
    double t0 = now();
    for (long i = 0; i < n; i++) {
        if (write(ping[1], &c, 1) != 1 || read(pong[0], &c, 1) != 1) die("pipe");
    }
    printf("pingpong %ld %.6f\n", n, now() - t0);
    pthread_join(t, NULL);
}

static void bench_syscalls(long n) {
    double t0 = now();
    for (long i = 0; i < n; i++) getppid();
    for (long i = 0; i < n / 10; i++) {
        int fd = open("/etc/hostname", O_RDONLY);
        if (fd < 0) die("open");
        close(fd);
    }
    for (long i = 0; i < n / 1000; i++) {
        pid_t p = fork();
        if (p == 0) {
            execl("/bin/true", "true", (char *)NULL);
            _exit(127);
        }
        int st;
        waitpid(p, &st, 0);
    }
    printf("syscalls %ld %.6f\n", n, now() - t0);
}

/* --- request/response over the network: echo and HTTP, servers and clients ----------- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Sorts the N samples (seconds) and prints "NAME N TOTAL MEDIAN_US P99_US". */
static void report_samples(const char *name, double *t, long n, double total) {
    qsort(t, n, sizeof *t, cmp_double);
    printf("%s %ld %.6f %.2f %.2f\n", name, n, total, t[n / 2] * 1e6, t[n * 99 / 100] * 1e6);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int listen_at(int port, const char *host) {
    if (!strcmp(host, "::")) {
        /* Dual-stack, as Go's, Node's and Python's servers listen: IPv4 clients v4-mapped. */
        struct sockaddr_in6 any = {0};
        any.sin6_family = AF_INET6;
        any.sin6_port = htons((uint16_t)port);
        any.sin6_addr = in6addr_any;
        int l = socket(AF_INET6, SOCK_STREAM, 0), zero = 0, on = 1;
        if (l < 0) die("socket");
        setsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
        if (bind(l, (struct sockaddr *)&any, sizeof any)) die("bind");
        if (listen(l, 4096)) die("listen");
        return l;
    }
    struct sockaddr_in addr;
    target(&addr, port, host);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0) die("socket");
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&addr, sizeof addr)) die("bind");
    if (listen(l, 4096)) die("listen");
    return l;
}

static int write_all(int s, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t w = write(s, buf, len);
        if (w <= 0) return -1;
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Accepts forever, one detached thread with a small stack per connection (the memory
 * benchmark holds thousands of idle connections). */
static void serve_forever(int l, void *(*conn)(void *)) {
    raise_nofile();
    printf("ready\n");
    fflush(stdout);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 128 * 1024);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0) continue; /* ECONNABORTED, EMFILE: the client sees a reset, we go on */
        int one = 1;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_t t;
        if (pthread_create(&t, &attr, conn, (void *)(long)c)) close(c);
    }
}

static void *echo_conn(void *arg) {
    int c = (int)(long)arg;
    char buf[16384];
    ssize_t r;
    while ((r = read(c, buf, sizeof buf)) > 0) {
        if (write_all(c, buf, (size_t)r)) break;
    }
    close(c);
    return NULL;
}

static void echo_server(int port, const char *host) { serve_forever(listen_at(port, host), echo_conn); }

static void bench_rtt(long n, int port, const char *host, long size) {
    struct sockaddr_in addr;
    target(&addr, port, host);
    if (size < 1 || size > 65536 || n < 1) {
        fprintf(stderr, "rtt: N >= 1 and 1 <= SIZE <= 65536\n");
        exit(2);
    }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) die("socket");
    if (connect(s, (struct sockaddr *)&addr, sizeof addr)) die("connect");
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char *out = malloc(size), *in = malloc(size);
    double *t = malloc(n * sizeof *t);
    if (!out || !in || !t) die("malloc");
    memset(out, 'x', size);
    double total = 0;
    for (long i = -100; i < n; i++) {
        double t0 = now();
        if (write_all(s, out, size)) die("write");
        for (long got = 0; got < size;) {
            ssize_t r = read(s, in + got, size - got);
            if (r <= 0) die("read");
            got += r;
        }
        double dt = now() - t0;
        if (i >= 0) {
            t[i] = dt;
            total += dt;
        }
    }
    close(s);
    report_samples("rtt", t, n, total);
}

static const char *http_tag;

static void *http_conn(void *arg) {
    int c = (int)(long)arg;
    char buf[8192];
    size_t got = 0;
    while (got < sizeof buf - 1) {
        ssize_t r = read(c, buf + got, sizeof buf - 1 - got);
        if (r <= 0) break;
        got += (size_t)r;
        buf[got] = 0;
        if (strstr(buf, "\r\n\r\n")) break;
    }
    char resp[512];
    int len = snprintf(resp, sizeof resp,
                       "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                       "Connection: close\r\n\r\n%s\n",
                       strlen(http_tag) + 1, http_tag);
    write_all(c, resp, (size_t)len);
    close(c);
    return NULL;
}

static void http_server(int port, const char *host, const char *tag) {
    if (strlen(tag) > 256) {
        fprintf(stderr, "http-server: TAG too long\n");
        exit(2);
    }
    http_tag = tag;
    serve_forever(listen_at(port, host), http_conn);
}

static void bench_http_get(long n, int port, const char *host, const char *tag) {
    struct sockaddr_in addr;
    target(&addr, port, host);
    if (n < 1) {
        fprintf(stderr, "http-get: N >= 1\n");
        exit(2);
    }
    double *t = malloc(n * sizeof *t);
    if (!t) die("malloc");
    char req[256], want[512], buf[4096];
    int reqlen = snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n", host, port);
    snprintf(want, sizeof want, "\r\n\r\n%s\n", tag);
    double total = 0;
    for (long i = 0; i < n; i++) {
        double t0 = now();
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0) die("socket");
        if (connect(s, (struct sockaddr *)&addr, sizeof addr)) die("connect");
        if (write_all(s, req, (size_t)reqlen)) die("write");
        size_t got = 0;
        ssize_t r;
        while (got < sizeof buf - 1 && (r = read(s, buf + got, sizeof buf - 1 - got)) > 0) got += (size_t)r;
        buf[got] = 0;
        close(s);
        t[i] = now() - t0;
        total += t[i];
        size_t wl = strlen(want);
        if (strncmp(buf, "HTTP/1.1 200 ", 13) || got < wl || strcmp(buf + got - wl, want)) {
            fprintf(stderr, "http-get: request %ld: unexpected answer (want body \"%s\"): %.200s\n", i, tag, buf);
            exit(1);
        }
    }
    report_samples("http-get", t, n, total);
}

static int allow_all(char **argv) {
    struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {1, &allow};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("prctl");
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) die("seccomp");
    execvp(argv[0], argv);
    die("execvp");
    return 127;
}

/* The child installs the filter and hands its listener to the parent over a socket pair,
 * then becomes PROGRAM; the parent answers every trapped call with "continue". */
static int trap_connect(char **argv) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) die("socketpair");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    char byte = 0;
    union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } ctl;
    struct iovec iov = {&byte, 1};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl.buf;
    msg.msg_controllen = sizeof ctl.buf;
    if (pid == 0) {
        struct sock_filter f[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 3),
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_connect, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = {sizeof f / sizeof f[0], f};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("prctl");
        int lfd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
        if (lfd < 0) die("seccomp");
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &lfd, sizeof(int));
        if (sendmsg(sv[1], &msg, 0) != 1) die("sendmsg");
        close(lfd);
        close(sv[0]);
        close(sv[1]);
        execvp(argv[0], argv);
        die("execvp");
    }
    close(sv[1]);
    if (recvmsg(sv[0], &msg, 0) != 1) die("recvmsg");
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_type != SCM_RIGHTS) die("no listener");
    int lfd;
    memcpy(&lfd, CMSG_DATA(c), sizeof(int));
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS /* Linux 6.6; Debian 12's headers predate it */
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
    ioctl(lfd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, 1UL); /* SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP */
    for (;;) {
        struct seccomp_notif req;
        memset(&req, 0, sizeof req);
        if (ioctl(lfd, SECCOMP_IOCTL_NOTIF_RECV, &req) == 0) {
            struct seccomp_notif_resp resp = {req.id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE};
            ioctl(lfd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
            continue;
        }
        if (errno != ENOENT && errno != EINTR) die("SECCOMP_IOCTL_NOTIF_RECV");
        struct pollfd p = {lfd, POLLIN, 0};
        if (poll(&p, 1, 0) == 1 && !(p.revents & POLLIN) && (p.revents & POLLHUP)) break;
    }
    int status;
    if (waitpid(pid, &status, 0) < 0) die("waitpid");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "allow-all")) return allow_all(argv + 2);
    if (argc >= 3 && !strcmp(argv[1], "trap-connect")) return trap_connect(argv + 2);
    if (argc < 3) {
        fprintf(stderr, "usage: see the comment at the top of scripts/workloads/workloads.c\n");
        return 2;
    }
    long n = atol(argv[2]);
    int port = argc > 3 ? atoi(argv[3]) : 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(argv[1], "connect")) bench_connect(n);
    else if (!strcmp(argv[1], "connect-to")) bench_connect_to(n, port, argc > 4 ? argv[4] : NULL);
    else if (!strcmp(argv[1], "connect-udp")) bench_connect_udp(n);
    else if (!strcmp(argv[1], "resolve") && argc > 3) bench_resolve(n, argv[3]);
    else if (!strcmp(argv[1], "hold") && argc > 4) hold(n, port, argv[4]);
    else if (!strcmp(argv[1], "acceptor")) run_acceptor(n, port);
    else if (!strcmp(argv[1], "msgs")) bench_msgs(n);
    else if (!strcmp(argv[1], "syscalls")) bench_syscalls(n);
    else if (!strcmp(argv[1], "sockets")) bench_sockets(n);
    else if (!strcmp(argv[1], "pingpong")) bench_pingpong(n);
    else if (!strcmp(argv[1], "rtt") && argc > 4) bench_rtt(n, port, argv[4], argc > 5 ? atol(argv[5]) : 64);
    else if (!strcmp(argv[1], "echo-server") && argc > 3) echo_server(atoi(argv[2]), argv[3]);
    else if (!strcmp(argv[1], "http-server") && argc > 4) http_server(atoi(argv[2]), argv[3], argv[4]);
    else if (!strcmp(argv[1], "http-get") && argc > 5) bench_http_get(n, port, argv[4], argv[5]);
    else {
        fprintf(stderr, "workloads: unknown mode or missing arguments: %s\n", argv[1]);
        return 2;
    }
    return 0;
}
