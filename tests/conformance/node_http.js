// Node HTTP clients: http.get (net.connect with Node 20's happy eyeballs) and fetch
// (undici) of URL; prints the status, the body and the address the socket connected to.
// Errors by their codes. Each bounded by 5 s.
//
// usage: node node_http.js URL
const http = require("http");
const url = process.argv[2];

function get() {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: 5000 }, (res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => {
        console.log(`http.get ${url}: ${res.statusCode} ${JSON.stringify(body)} from ${res.socket.remoteAddress} port ${res.socket.remotePort}`);
        resolve();
      });
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", (e) => {
      console.log(`http.get ${url}: error ${e.code || e.message}`);
      resolve();
    });
  });
}

(async () => {
  await get();
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(5000) });
    console.log(`fetch ${url}: ${r.status} ${JSON.stringify(await r.text())}`);
  } catch (e) {
    console.log(`fetch ${url}: error ${(e.cause && e.cause.code) || e.name}`);
  }
})();
