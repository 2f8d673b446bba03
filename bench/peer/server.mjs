// @octokit/webhooks' own Node middleware, verifying and handling each
// delivery in memory (no durable queue): the peer in bench/ingest.
import http from "node:http";
import { Webhooks, createNodeMiddleware } from "@octokit/webhooks";

const webhooks = new Webhooks({ secret: process.env.SECRET });
let handled = 0;
webhooks.onAny(() => {
  handled += 1;
});
const server = http.createServer(createNodeMiddleware(webhooks, { path: "/hooks/bench/hook" }));
server.keepAliveTimeout = 60_000;
server.listen(Number(process.env.PORT), "127.0.0.1", () => console.log(`peer listening on ${process.env.PORT}`));
process.on("SIGTERM", () => {
  console.log(`handled ${handled}`);
  server.close(() => process.exit(0));
});
