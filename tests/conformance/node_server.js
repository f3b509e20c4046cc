// A Node server as most are started: net.createServer().listen(PORT) (every address, dual
// stack). Prints the bound address and "ready", then for COUNT connections the peer and
// local addresses and the line received, answering "hello <line>". Gives up after 10 s.
//
// usage: node node_server.js PORT COUNT
const net = require("net");
const [port, count] = process.argv.slice(2).map(Number);
let seen = 0;
const server = net.createServer((c) => {
  let buf = "";
  c.on("data", (d) => {
    buf += d;
    if (!buf.includes("\n")) return;
    const line = buf.split("\n")[0];
    console.log(`connection peer=${c.remoteAddress} port ${c.remotePort} local=${c.localAddress} port ${c.localPort} got='${line}'`);
    c.end(`hello ${line}\n`);
    if (++seen >= count) server.close();
  });
});
server.on("error", (e) => {
  console.log("listen error", e.code);
  process.exit(1);
});
server.listen(port, () => {
  const a = server.address();
  console.log(`listening ${a.address} port ${a.port} ${a.family}`);
  console.log("ready");
  if (count === 0) server.close();
});
setTimeout(() => {
  console.log("timed out waiting for connections");
  process.exit(1);
}, 10000).unref();
