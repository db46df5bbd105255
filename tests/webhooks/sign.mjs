// Signs a webhook request the way the vendor's own Node SDK does, for the tests.
// Usage: node sign.mjs SCHEME SECRET TIMESTAMP < body   ->  JSON object of headers
//   stripe: Stripe's `webhooks.generateTestHeaderString` (the stripe package)
//   github: `sign` from @octokit/webhooks-methods
import { readFileSync } from "node:fs";
import Stripe from "stripe";
import { sign } from "@octokit/webhooks-methods";

const [scheme, secret, timestamp] = process.argv.slice(2);
const body = readFileSync(0, "utf8");
let headers;
if (scheme === "stripe") {
  const stripe = new Stripe("sk_test_unused");
  headers = {
    "Stripe-Signature": stripe.webhooks.generateTestHeaderString({
      payload: body,
      secret,
      timestamp: Number(timestamp),
    }),
  };
} else if (scheme === "github") {
  headers = { "X-Hub-Signature-256": await sign(secret, body) };
} else {
  console.error(`unknown scheme ${scheme}`);
  process.exit(2);
}
process.stdout.write(JSON.stringify(headers));
