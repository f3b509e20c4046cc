/* Benchmark workloads for scripts/bench: each prints one line "NAME OPS SECONDS".
 *
 *   workloads syscalls N     N cheap syscalls (getppid), N/10 file open+close, N/1000 fork+exec of /bin/true
 *   workloads connect N      N blocking TCP connects (+accept, close) to a listener on 127.0.0.1
 *                            in the same process (so accept is traced too)
 *   workloads connect-to N PORT [HOST]   N blocking TCP connects to HOST:PORT (an IPv4
 *                            address; default 127.0.0.1), another process
 *   workloads resolve N NAME N getaddrinfo(NAME) calls (glibc's resolver, A and AAAA)
 *   workloads hold N PORT HOST    opens N TCP connections to HOST:PORT and keeps them idle
 *                            until stdin closes; prints "held N" once all are open
 *   workloads acceptor N PORT     accept and close N connections on 127.0.0.1:PORT, then exit;
 *                            prints "ready" once listening
 *   workloads allow-all PROGRAM [ARGS]  runs PROGRAM under a seccomp filter that allows
 *                            everything: the cost the kernel charges any seccomp-based tool
 *   workloads pingpong N     N one-byte round trips between two threads over pipes: the
 *                            cost of two context switches, the floor of any interception
 *                            that wakes another thread
 *   workloads msgs N         N small messages over one connected TCP socket pair with sendmsg/recvmsg
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
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
    printf("ready\n");
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

static int allow_all(char **argv) {
    struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {1, &allow};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("prctl");
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) die("seccomp");
    execvp(argv[0], argv);
    die("execvp");
    return 127;
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "allow-all")) return allow_all(argv + 2);
    if (argc < 3) {
        fprintf(stderr, "usage: workloads syscalls|sockets|connect|msgs|pingpong N | connect-to|acceptor N PORT\n");
        return 2;
    }
    long n = atol(argv[2]);
    int port = argc > 3 ? atoi(argv[3]) : 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(argv[1], "connect")) bench_connect(n);
    else if (!strcmp(argv[1], "connect-to")) bench_connect_to(n, port, argc > 4 ? argv[4] : NULL);
    else if (!strcmp(argv[1], "resolve") && argc > 3) bench_resolve(n, argv[3]);
    else if (!strcmp(argv[1], "hold") && argc > 4) hold(n, port, argv[4]);
    else if (!strcmp(argv[1], "acceptor")) run_acceptor(n, port);
    else if (!strcmp(argv[1], "msgs")) bench_msgs(n);
    else if (!strcmp(argv[1], "syscalls")) bench_syscalls(n);
    else if (!strcmp(argv[1], "sockets")) bench_sockets(n);
    else if (!strcmp(argv[1], "pingpong")) bench_pingpong(n);
    else return 2;
    return 0;
}
