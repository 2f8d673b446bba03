// An agent that verifies hookwarden's calls with the published Standard
// Webhooks implementation (the `standardwebhooks` npm package), independent
// of hookwarden's own code. Used by tests/receiver_kube.rs.
//
//   node standard-webhooks-agent.js     prints the port it listens on
//   PUT  /_keys        body: JSON list of whsec_ keys this agent accepts
//   POST /{agent}      verified → 200 and recorded; otherwise 401
//   GET  /_received    {"verified": {agent: [webhook-id...]}, "refused": n, "errors": [...]}
"use strict";
const http = require("http");
const { Webhook } = require("standardwebhooks");

let keys = [];
const verified = {};
let refused = 0;
const errors = [];

function read(req) {
  return new Promise((resolve) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks)));
  });
}

http
  .createServer(async (req, res) => {
    const body = await read(req);
    if (req.method === "PUT" && req.url === "/_keys") {
      keys = JSON.parse(body.toString());
      res.writeHead(204).end();
    } else if (req.method === "GET" && req.url === "/_received") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ verified, refused, errors }));
    } else if (req.method === "POST") {
      const agent = req.url.slice(1);
      // The package verifies the string payload it is given, byte for byte.
      const ok = keys.some((key) => {
        try {
          new Webhook(key).verify(body.toString("utf8"), req.headers);
          return true;
        } catch (e) {
          if (errors.length < 50) errors.push(String(e.message || e));
          return false;
        }
      });
      if (ok) {
        (verified[agent] = verified[agent] || []).push(req.headers["webhook-id"]);
        res.writeHead(200).end();
      } else {
        refused += 1;
        res.writeHead(401).end();
      }
    } else {
      res.writeHead(404).end();
    }
  })
  .listen(0, "127.0.0.1", function () {
    console.log(this.address().port);
  });
