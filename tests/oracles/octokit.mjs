// Signs and verifies GitHub webhooks with @octokit/webhooks-methods, as an
// independent oracle for tests/verify_oracles.rs. Run from target/oracles
// (setup.sh installs the package there; the test copies this file in).
//   node octokit.mjs sign SECRET BODY_FILE          -> sha256=...
//   node octokit.mjs verify SECRET BODY_FILE SIG    -> "valid", or "invalid" (exit 1)
import { readFileSync } from "node:fs";
import { sign, verify } from "@octokit/webhooks-methods";

const [cmd, secret, bodyFile, sig] = process.argv.slice(2);
const body = readFileSync(bodyFile, "utf8");
if (cmd === "sign") {
  console.log(await sign(secret, body));
} else if (cmd === "verify") {
  const ok = await verify(secret, body, sig);
  console.log(ok ? "valid" : "invalid: @octokit/webhooks-methods verify returned false");
  process.exit(ok ? 0 : 1);
} else {
  console.error(`unknown command ${cmd}`);
  process.exit(2);
}
