# Perl clients: IO::Socket::IP to HOST PORT (prints the peer it connected to, or $@), then
# HTTP::Tiny GET of URL (status, reason and body).
#
# usage: perl perl_client.pl HOST PORT URL
use strict;
use warnings;
use IO::Socket::IP;
use HTTP::Tiny;

$| = 1;
my ($host, $port, $url) = @ARGV;
my $s = IO::Socket::IP->new(PeerHost => $host, PeerPort => $port, Timeout => 3);
if ($s) {
    printf "IO::Socket::IP %s:%s connected to %s port %s\n", $host, $port, $s->peerhost, $s->peerport;
    close $s;
} else {
    print "IO::Socket::IP $host:$port: $@\n";
}
my $r = HTTP::Tiny->new(timeout => 3)->get($url);
printf "HTTP::Tiny %s: %s %s %s", $url, $r->{status}, $r->{reason}, $r->{content};
print "\n" unless $r->{content} =~ /\n\z/;
