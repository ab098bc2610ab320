"""Event streams: ffd's Python module beside the analytics SDKs people use
(segment-analytics-python, posthog), each pointed at the bench's loopback
receiver, which emulates their batch endpoints.

Usage: streams.py BASE_URL N SETTLE_S   (FFD_SOCKET names ffd)
For each client, prints one JSON line on stdout:
  {"name": ..., "rate": {...}, "exit": {...}, "fork": {...}}  or  {"name": ..., "skipped": why}

The receiver counts events per key (the path segment after /k/) and answers
GET /count/KEY. ffd's destinations are named by the same keys
(ffdsend_rate, ffdpipe_exit, ...); the bench writes them in ffd's config.
Each scenario runs in its own process (`--child MODE TAG KEY`), bounded in time.
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD_LIMIT_S = 120


def count(base, key):
    with urllib.request.urlopen(f"{base}/count/{key}", timeout=5) as r:
        return int(r.read())


def wait_count(base, key, target, limit_s):
    """Polls the receiver until `key` holds `target` events or `limit_s` passed."""
    deadline = time.monotonic() + limit_s
    n = count(base, key)
    while n < target and time.monotonic() < deadline:
        time.sleep(0.005)
        n = count(base, key)
    return n


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, round((len(values) - 1) * p))]


EVENTS = ["Order Completed", "Product Viewed", "Signed Up", "Checkout Started", "Page Viewed"]


def properties(i):
    return {
        "order_id": f"ord_{i:08}",
        "revenue": round((i * 7919 % 30000) / 100, 2),
        "currency": "EUR",
        "plan": ["free", "pro", "team"][i % 3],
        "items": 1 + i % 7,
    }


def user(i):
    return f"user_{i * 2654435761 % 50000:06}"


def ffd_event(i):
    """What an ffd caller sends: the whole event, ids and context included
    (the SDKs add theirs: messageId/uuid, timestamp, library)."""
    return {
        "type": "track",
        "event": EVENTS[i % 5],
        "userId": user(i),
        "messageId": f"{os.getpid():x}-{i:08x}-{time.time_ns() & 0xFFFFFFFF:08x}",
        "timestamp": time.time(),
        "properties": properties(i),
        "context": {"library": {"name": "ffd-bench", "version": "0.1.0"}, "ip": "203.0.113.7", "locale": "de-DE"},
    }


def _ffd():
    sys.path.insert(0, os.path.join(HERE, "..", "python"))
    import ffd

    return ffd


class FfdSend:
    """ffd's Python module: ffd.send(dest=..., json=...) waits for the ACK."""

    name = "ffd, Python module, ffd.send(dest=…, json=…)"
    tag = "ffdsend"

    @staticmethod
    def missing():
        return None

    def __init__(self, base, key):
        self.ffd, self.key = _ffd(), key

    def track(self, i):
        self.ffd.send(dest=self.key, json=ffd_event(i))

    def flush(self):
        pass


class FfdPipeline:
    """ffd's Python module, pipelined: Client.pipeline() writes, answers at exit."""

    name = "ffd, Python module, Client.pipeline() send"
    tag = "ffdpipe"

    @staticmethod
    def missing():
        return None

    def __init__(self, base, key):
        self.key = key
        self.client = _ffd().Client()
        self.p = None

    def track(self, i):
        if self.p is None:
            # A child after fork gets its own connection here.
            self.p = self.client.pipeline()
            self.p.__enter__()
        self.p.send(dest=self.key, json=ffd_event(i))

    def flush(self):
        # The end of the with-block: every answer read.
        if self.p is not None:
            p, self.p = self.p, None
            p.__exit__(None, None, None)


class Segment:
    """segment-analytics-python, default settings (100 events or 0.5 s a batch)."""

    name = "segment-analytics-python, track()"
    tag = "segment"

    @staticmethod
    def missing():
        try:
            import segment.analytics  # noqa: F401
        except ImportError:
            return "not installed (pip install segment-analytics-python)"
        return None

    def __init__(self, base, key):
        from segment.analytics import Client

        self.c = Client(write_key="bench-write-key", host=f"{base}/k/{key}")

    def track(self, i):
        self.c.track(user_id=user(i), event=EVENTS[i % 5], properties=properties(i))

    def flush(self):
        self.c.flush()


class PostHog:
    """posthog, default settings (100 events or 5 s a batch)."""

    name = "posthog, capture()"
    tag = "posthog"

    @staticmethod
    def missing():
        try:
            import posthog  # noqa: F401
        except ImportError:
            return "not installed (pip install posthog)"
        return None

    def __init__(self, base, key):
        from posthog import Posthog

        self.c = Posthog("phc_bench", host=f"{base}/k/{key}")

    def track(self, i):
        self.c.capture(EVENTS[i % 5], distinct_id=user(i), properties=properties(i))

    def flush(self):
        self.c.flush()


PEERS = {p.tag: p for p in (FfdSend, FfdPipeline, Segment, PostHog)}


def child(mode, tag, key, base, n, settle):
    """One scenario, in its own process; prints one JSON object."""
    peer = PEERS[tag]
    if mode == "rate":
        a = peer(base, key)
        a.track(0)  # connect, start the SDK's thread: not timed
        a.flush()
        before = wait_count(base, key, 1, 10)
        blocked = []
        t0 = time.perf_counter()
        for i in range(1, n + 1):
            s = time.perf_counter()
            a.track(i)
            blocked.append(time.perf_counter() - s)
        a.flush()
        got = wait_count(base, key, before + n, CHILD_LIMIT_S - 20) - before
        total = time.perf_counter() - t0
        us = [b * 1e6 for b in blocked]
        print(json.dumps({"p50_us": pct(us, 0.5), "p99_us": pct(us, 0.99), "delivered": got, "total_s": total}))
    elif mode == "exit-sender":
        # Sends n events and returns: the interpreter exits at once.
        a = peer(base, key)
        for i in range(n):
            a.track(i)
        if tag == "ffdpipe":
            a.flush()  # the with-block a caller writes ends here
    elif mode == "exit":
        p = subprocess.Popen([sys.executable, __file__, base, str(n), str(settle), "--child", "exit-sender", tag, key])
        try:
            p.wait(timeout=CHILD_LIMIT_S - 20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        got = wait_count(base, key, n, settle)
        print(json.dumps({"sent": n, "lost": n - got}))
    elif mode == "fork":
        a = peer(base, key)
        a.track(0)  # the parent uses its client once before forking
        a.flush()
        wait_count(base, key, 1, 10)
        pid = os.fork()
        if pid == 0:
            for i in range(1, n + 1):
                a.track(i)
            if tag == "ffdpipe":
                a.flush()
            return  # the child's interpreter exits as usual (atexit runs)
        deadline = time.monotonic() + CHILD_LIMIT_S - 30
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        got = wait_count(base, key, 1 + n, settle) - 1
        print(json.dumps({"sent": n, "lost": n - got}), flush=True)


def main():
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        mode, tag, key = sys.argv[i + 1 : i + 4]
        child(mode, tag, key, sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
        return
    base, n, settle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    for tag, peer in PEERS.items():
        why = peer.missing()
        if why:
            print(json.dumps({"name": peer.name, "skipped": why}), flush=True)
            continue
        out = {"name": peer.name}
        for mode in ("rate", "exit", "fork"):
            args = [sys.executable, __file__, base, str(n), str(settle), "--child", mode, tag, f"{tag}_{mode}"]
            try:
                r = subprocess.run(args, capture_output=True, text=True, timeout=CHILD_LIMIT_S)
                lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
                out[mode] = json.loads(lines[-1]) if lines else {"error": f"no result (exit {r.returncode})"}
                if r.returncode != 0:
                    sys.stderr.write(r.stderr[-2000:])
            except subprocess.TimeoutExpired:
                out[mode] = {"error": f"timed out after {CHILD_LIMIT_S} s"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
