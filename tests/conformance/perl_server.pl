# A Perl server as IO::Socket::IP starts one: Listen on PORT (every address getaddrinfo
# offers for a passive socket, the first that binds), prints the bound address and "ready",
# then for COUNT connections the peer and local addresses and the line received, answering
# "hello <line>". Gives up after 10 s.
#
# usage: perl perl_server.pl PORT COUNT
use strict;
use warnings;
use IO::Socket::IP;

$| = 1;
my ($port, $count) = @ARGV;
my $srv = IO::Socket::IP->new(Listen => 16, LocalPort => $port, ReuseAddr => 1)
    or die "listen: $@\n";
printf "listening %s port %s family %s\n", $srv->sockhost, $srv->sockport,
    $srv->sockdomain == AF_INET6 ? "inet6" : "inet";
print "ready\n";
$SIG{ALRM} = sub { print "timed out waiting for connections\n"; exit 1 };
alarm 10;
for (1 .. $count) {
    my $conn = $srv->accept or die "accept: $!\n";
    my $line = <$conn> // "";
    chomp $line;
    printf "accept peer=%s port %s sockname=%s port %s got='%s'\n",
        $conn->peerhost, $conn->peerport, $conn->sockhost, $conn->sockport, $line;
    print $conn "hello $line\n";
    close $conn;
}
