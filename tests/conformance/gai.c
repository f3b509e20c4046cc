/* getaddrinfo(HOST, PORT) for a stream socket, from C (no runtime of its own): prints each
 * result as "family address port", or the error's text.
 *
 * usage: gai HOST PORT [passive] */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: gai HOST PORT [passive]\n");
        return 2;
    }
    struct addrinfo hints, *res, *ai;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (argc > 3 && strcmp(argv[3], "passive") == 0)
        hints.ai_flags = AI_PASSIVE;
    const char *host = strcmp(argv[1], "-") == 0 ? NULL : argv[1];
    int rc = getaddrinfo(host, argv[2], &hints, &res);
    if (rc != 0) {
        printf("getaddrinfo: %s\n", gai_strerror(rc));
        return 1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        char text[INET6_ADDRSTRLEN] = "?";
        int port = 0;
        if (ai->ai_family == AF_INET) {
            struct sockaddr_in *sin = (struct sockaddr_in *)ai->ai_addr;
            inet_ntop(AF_INET, &sin->sin_addr, text, sizeof text);
            port = ntohs(sin->sin_port);
        } else if (ai->ai_family == AF_INET6) {
            struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ai->ai_addr;
            inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof text);
            port = ntohs(sin6->sin6_port);
        }
        printf("%s %s %d\n", ai->ai_family == AF_INET ? "inet" : "inet6", text, port);
    }
    freeaddrinfo(res);
    return 0;
}
