// A Node app's fetch through the sidecar with undici's agents, the way Node apps do it:
//   node client.mjs proxy <proxy-url> <base-url> <MiB>   ProxyAgent, explicit
//   node client.mjs env <base-url> <MiB>                 EnvHttpProxyAgent (HTTP(S)_PROXY)
// Trust comes from NODE_EXTRA_CA_CERTS. Prints one JSON line.
import { createHash, randomBytes } from "node:crypto";
import { EnvHttpProxyAgent, ProxyAgent, fetch } from "undici";

const [mode, ...rest] = process.argv.slice(2);
const dispatcher = mode === "proxy" ? new ProxyAgent(rest.shift()) : new EnvHttpProxyAgent();
const [base, mib] = rest;
const sha256 = (data) => createHash("sha256").update(data).digest("hex");
const out = {};
try {
  const report = await (await fetch(`${base}/ntb/report`, { dispatcher })).json();
  out.authorization = report.headers.authorization ?? "";
  const data = randomBytes(Number(mib) * 1024 * 1024);
  const echo = await fetch(`${base}/ntb/echo?echo=1`, { dispatcher, method: "POST", body: data });
  out.status = echo.status;
  out.up = sha256(data);
  out.down = sha256(Buffer.from(await echo.arrayBuffer()));
} catch (error) {
  // The whole chain of causes: undici wraps the proxy's or the TLS layer's reason.
  const reasons = [];
  for (let e = error; e; e = e.cause) reasons.push(`${e.code ?? e.name}: ${e.message}`);
  out.error = reasons.join(" <- ");
}
console.log(JSON.stringify(out));
await dispatcher.close();
