"""Writes, as Redis protocol on stdout, what bench/enqueue sends: the fill of
a policy's de-duplication state as a window at a steady rate leaves it, then
N calls of the enqueue script with the keys and arguments the receiver gives
it (a distinct GUID and body each, a 6.7 KB payload), for one layout:

  load.py fill sets|strings MEMBERS          MEMBERS records per shard and bucket
  load.py calls sets|sets-only|strings N SHA [BATCH]
                                             the script calls (sets-only: once
                                             the strings are no longer read),
                                             BATCH deliveries per call (1)

Only the shards the calls use are filled (64 per bucket and kind): what a
lookup costs depends on the size of the shards it reads, not on how many
there are."""
import base64, os, random, sys

P = "bench:{bench/default}"
SHARDS = 64


def resp(*args):
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
    return b"".join(out)


def i64():
    return str(int.from_bytes(os.urandom(8), "big", signed=True))


w = sys.stdout.buffer
mode, layout = sys.argv[1], sys.argv[2]
if mode == "fill":
    members = int(sys.argv[3])
    for kind in ("guid", "body"):
        for bucket in range(4):
            for shard in range(SHARDS):
                if layout.startswith("sets"):
                    for i in range(0, members, 500):
                        batch = [i64() for _ in range(min(500, members - i))]
                        w.write(resp("SADD", f"{P}:{kind}set:{bucket}:{shard:04x}", *batch))
                elif members:
                    name = "guids" if kind == "guid" else "bodies"
                    w.write(resp("SET", f"{P}:{name}:{bucket}:{shard:03x}", os.urandom(12 * members)))
    sys.exit()
n, sha = int(sys.argv[3]), sys.argv[4]
batch = int(sys.argv[5]) if len(sys.argv) > 5 else 1
payload = base64.b64encode(os.urandom(5000)).decode()
P_KEYS = [f"{P}:{k}" for k in ("events", "activity", "tap", "tap:on", "retry", "dead")]


def delivery():
    """One delivery's keys and arguments (the policy's six keys apart)."""
    g, b = random.randrange(SHARDS), random.randrange(SHARDS)
    fields = ["guid", os.urandom(16).hex(), "event", "push", "hook", "bench/hook", "received", "1",
              "attempt", "0", "payload_lz4", payload, "repository", "acme/x", "action", "opened"]
    if layout in ("sets", "sets-only"):
        keys = [f"{P}:guidset:{k}:{g:04x}" for k in range(4)] + [f"{P}:bodyset:{k}:{b:04x}" for k in range(4)]
        args = [i64(), 9_999_999_999, i64(), 9_999_999_999, "", ""]
        if layout == "sets":  # the strings of the layout before still read
            keys += [f"{P}:guids:{k}:{g:03x}" for k in range(4, 8)] + [f"{P}:bodies:{k}:{b:03x}" for k in range(4, 8)]
            args[4:6] = [os.urandom(12), os.urandom(12)]
        return keys, [10_000_000, len(keys), *args, len(fields), *fields]
    keys = [f"{P}:guids:{k}:{g:03x}" for k in range(4)] + [f"{P}:bodies:{k}:{b:03x}" for k in range(4)]
    return keys, [10_000_000, 10_000, 1_000, os.urandom(12), 9_999_999_999, os.urandom(12), 9_999_999_999, *fields]


if layout == "strings":  # the script of 92609db: one delivery a call
    for _ in range(n):
        keys, args = delivery()
        w.write(resp("EVALSHA", sha, 6 + len(keys), *P_KEYS, *keys, *args))
    sys.exit()
for _ in range(n // batch):
    keys, args = list(P_KEYS), [10_000, 1_000]
    for _ in range(batch):
        k, a = delivery()
        keys += k
        args += a
    w.write(resp("EVALSHA", sha, len(keys), *keys, *args))
