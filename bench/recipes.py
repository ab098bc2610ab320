"""The in-process recipes ffd replaces, measured the same way: how long each
request keeps the caller, and how long until all N were delivered.

Usage: recipes.py BASE_URL N   (FFD_SOCKET names ffd for the ffd rows)
Prints one JSON object per recipe on stdout.
"""
import asyncio
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

BASE, N = sys.argv[1], int(sys.argv[2])
BODY = b"b" * 120


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, round((len(values) - 1) * p))]


def report(name, blocked_s, total_s):
    us = [b * 1e6 for b in blocked_s]
    print(json.dumps({"name": name, "p50_us": pct(us, 0.5), "p99_us": pct(us, 0.99), "total_s": total_s}), flush=True)


def urllib_post(url):
    req = urllib.request.Request(url, data=BODY, method="POST", headers={"x-bench": "1"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


def thread_per_request():
    url = BASE + "/py-thread"
    blocked, threads = [], []
    t0 = time.perf_counter()
    for _ in range(N):
        s = time.perf_counter()
        t = threading.Thread(target=urllib_post, args=(url,))
        t.start()
        blocked.append(time.perf_counter() - s)
        threads.append(t)
    for t in threads:
        t.join()
    report("python: urllib, a thread per request", blocked, time.perf_counter() - t0)


def requests_shared_pool():
    import requests

    url = BASE + "/py-pool"
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=32)
    session.mount("http://", adapter)
    blocked = []
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as ex:
        futures = []
        for _ in range(N):
            s = time.perf_counter()
            futures.append(ex.submit(session.post, url, data=BODY, headers={"x-bench": "1"}))
            blocked.append(time.perf_counter() - s)
        for f in futures:
            f.result()
    report("python: requests, shared ThreadPoolExecutor(32)", blocked, time.perf_counter() - t0)


def requests_pool_per_call():
    import requests

    url = BASE + "/py-pool-per-call"
    blocked = []
    t0 = time.perf_counter()
    for _ in range(N):
        s = time.perf_counter()
        # The form that looks asynchronous but blocks: the with-block waits.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as ex:
            ex.submit(requests.post, url, data=BODY, headers={"x-bench": "1"})
        blocked.append(time.perf_counter() - s)
    report("python: requests, ThreadPoolExecutor per call (blocks)", blocked, time.perf_counter() - t0)


def aiohttp_tasks():
    import aiohttp

    url = BASE + "/py-aiohttp"

    async def main():
        blocked = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

            async def post():
                async with session.post(url, data=BODY, headers={"x-bench": "1"}) as r:
                    await r.read()

            t0 = time.perf_counter()
            tasks = []
            for _ in range(N):
                s = time.perf_counter()
                tasks.append(asyncio.create_task(post()))
                blocked.append(time.perf_counter() - s)
            await asyncio.gather(*tasks)
            return blocked, time.perf_counter() - t0

    blocked, total = asyncio.run(main())
    report("python: aiohttp tasks on one session", blocked, total)


def bash_curl():
    url = BASE + "/bash-curl"
    script = f"""
for ((i=0; i<{N}; i++)); do
  s=$EPOCHREALTIME
  curl -s -o /dev/null -X POST --data-binary {BODY.decode()} {url} &
  e=$EPOCHREALTIME
  echo "$s $e"
done
wait
"""
    t0 = time.perf_counter()
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    total = time.perf_counter() - t0
    blocked = [float(e) - float(s) for s, e in (l.split() for l in out.splitlines())]
    report("bash: curl &", blocked, total)


def ffd_stats(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(b'{"op":"stats"}\n')
        return json.loads(s.makefile().readline())["stats"]


def ffd_readme_snippet():
    """The README's Python snippet: one connection per request."""
    path = os.environ["FFD_SOCKET"]
    url = BASE + "/py-ffd"
    before = ffd_stats(path)["delivered"]

    def ffd_send(request):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\n")
            answer = json.loads(s.makefile().readline())
        if not answer["ok"]:
            raise RuntimeError(answer)
        return answer["id"]

    blocked = []
    t0 = time.perf_counter()
    for _ in range(N):
        s = time.perf_counter()
        ffd_send({"url": url, "headers": {"x-bench": "1"}, "body": BODY.decode()})
        blocked.append(time.perf_counter() - s)
    while ffd_stats(path)["delivered"] < before + N:
        time.sleep(0.001)
    report("ffd, Python stdlib snippet (connection per request)", blocked, time.perf_counter() - t0)


def _ffd_module():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import ffd

    return ffd


def _wait_delivered(ffd, before):
    c = ffd.Client()
    deadline = time.monotonic() + 120
    while c.stats()["delivered"] < before + N and time.monotonic() < deadline:
        time.sleep(0.001)
    c.close()


def _delivered(ffd):
    with ffd.Client() as c:
        return c.stats()["delivered"]


def ffd_module_send():
    """The Python module: ffd.send waits for the ACK (one round trip)."""
    ffd = _ffd_module()
    url = BASE + "/py-ffd-module"
    before = _delivered(ffd)
    body = BODY.decode()
    blocked = []
    t0 = time.perf_counter()
    for _ in range(N):
        s = time.perf_counter()
        ffd.send(url, headers={"x-bench": "1"}, body=body)
        blocked.append(time.perf_counter() - s)
    _wait_delivered(ffd, before)
    report("ffd, Python module, ffd.send (waits for ACK)", blocked, time.perf_counter() - t0)


def ffd_module_pipeline():
    """The Python module, pipelined: each send only writes (answers at exit)."""
    ffd = _ffd_module()
    url = BASE + "/py-ffd-pipeline"
    before = _delivered(ffd)
    body = BODY.decode()
    blocked = []
    t0 = time.perf_counter()
    with ffd.Client() as c, c.pipeline() as p:
        for _ in range(N):
            s = time.perf_counter()
            p.send(url, headers={"x-bench": "1"}, body=body)
            blocked.append(time.perf_counter() - s)
    _wait_delivered(ffd, before)
    report("ffd, Python module, Client.pipeline()", blocked, time.perf_counter() - t0)


def ffd_module_aio():
    """The Python module for asyncio: await ffd.aio.send (loop free meanwhile),
    and the same in create_task, beside aiohttp's create_task."""
    ffd = _ffd_module()
    url = BASE + "/py-ffd-aio"
    body = BODY.decode()

    async def awaited():
        blocked = []
        for _ in range(N):
            s = time.perf_counter()
            await ffd.aio.send(url, headers={"x-bench": "1"}, body=body)
            blocked.append(time.perf_counter() - s)
        return blocked

    async def tasks():
        await ffd.aio.send(url, headers={"x-bench": "1"}, body=body)  # connect first
        blocked, pending = [], []
        for _ in range(N):
            s = time.perf_counter()
            pending.append(asyncio.create_task(ffd.aio.send(url, headers={"x-bench": "1"}, body=body)))
            blocked.append(time.perf_counter() - s)
        await asyncio.gather(*pending)
        return blocked

    for name, main, extra in (
        ("ffd, Python module, await ffd.aio.send (waits for ACK, loop runs)", awaited, 0),
        ("ffd, Python module, create_task(ffd.aio.send(...))", tasks, 1),
    ):
        before = _delivered(ffd)
        t0 = time.perf_counter()
        blocked = asyncio.run(main())
        _wait_delivered(ffd, before + extra)
        report(name, blocked, time.perf_counter() - t0)


for recipe in (thread_per_request, requests_shared_pool, requests_pool_per_call, aiohttp_tasks, bash_curl, ffd_readme_snippet,
               ffd_module_send, ffd_module_pipeline, ffd_module_aio):
    try:
        recipe()
    except Exception as e:  # a missing peer must not hide the others
        print(f"recipe {recipe.__name__} failed: {e!r}", file=sys.stderr)
