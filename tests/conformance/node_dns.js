// What a Node program sees of each NAME: dns.lookup (getaddrinfo in libuv's pool, all
// addresses, in the order returned) and dns.resolve4/resolve6 with TTLs (c-ares, Node's
// own DNS client), errors by their codes.
//
// usage: node node_dns.js NAME...
const dns = require("dns").promises;

async function show(label, f) {
  try {
    console.log(label, JSON.stringify(await f()));
  } catch (e) {
    console.log(label, "error", e.code);
  }
}

(async () => {
  for (const name of process.argv.slice(2)) {
    await show(`lookup ${name}:`, () => dns.lookup(name, { all: true }));
    await show(`resolve4 ${name}:`, () => dns.resolve4(name, { ttl: true }));
    await show(`resolve6 ${name}:`, () => dns.resolve6(name, { ttl: true }));
  }
})();
