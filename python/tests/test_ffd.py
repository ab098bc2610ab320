"""The ffd module against a real ffd and a real HTTP server (no mocks).

Run: python3 -m unittest discover -s python/tests   (FFD_BIN names the ffd
binary; default target/debug/ffd).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import threading
import time
import unittest

import support  # noqa: F401  (puts python/ on sys.path)
from support import FAST, Daemon, Sink, wait_until

import ffd
import ffd._client


class WithDaemon(unittest.TestCase):
    """One ffd and one sink per test; $FFD_SOCKET points at the ffd."""

    def setUp(self) -> None:
        self.sink = Sink(lambda path: 503 if path.startswith("/fail") else 501 if path == "/501" else 200)
        self.addCleanup(self.sink.close)
        self.d = Daemon()
        self.addCleanup(self.d.close)
        old = os.environ.get("FFD_SOCKET")
        os.environ["FFD_SOCKET"] = self.d.socket
        self.addCleanup(lambda: os.environ.pop("FFD_SOCKET") if old is None else os.environ.update(FFD_SOCKET=old))
        # The module-level connection of this thread belongs to an earlier test's ffd.
        ffd._client._local.__dict__.clear()


class SendTest(WithDaemon):
    def test_send_delivers_method_path_headers_and_json_with_the_returned_id(self) -> None:
        id = ffd.send(self.sink.url("/hook?src=py"), headers={"x-event": "signup"}, json={"user": 42})
        self.assertEqual(len(id), 26)
        [r] = self.sink.wait_for(1)
        self.assertEqual(r.method, "POST")
        self.assertEqual(r.path, "/hook?src=py")
        self.assertEqual(r.header("x-event"), "signup")
        self.assertEqual(r.header("content-type"), "application/json")
        self.assertEqual(json.loads(r.body), {"user": 42})
        self.assertEqual(r.header("ffd-id"), id)

    def test_every_field_reaches_the_wire(self) -> None:
        c = ffd.Client(self.d.socket)
        self.addCleanup(c.close)
        a = c.send(self.sink.url("/text"), method="PUT", body="héllo", id="my-id-1",
                   headers=[("x-a", "1"), ("x-a", "2")], timeout_ms=4000, max_attempts=3,
                   ttl_ms=60_000)
        self.assertEqual(a, "my-id-1")
        c.send(self.sink.url("/binary"), body=b"\xff\x00\xfe")
        c.send(self.sink.url("/false"), json=False)
        c.send(self.sink.url("/get"))
        t0 = time.monotonic()
        c.send(self.sink.url("/delayed"), json=[1, 2], delay_ms=300)
        reqs = self.sink.wait_for(5)
        by = {r.path: r for r in reqs}
        self.assertEqual(by["/text"].method, "PUT")
        self.assertEqual(by["/text"].body, "héllo".encode())
        self.assertEqual(by["/text"].headers_named("x-a"), ["1", "2"])
        self.assertEqual(by["/text"].header("ffd-id"), "my-id-1")
        self.assertEqual(by["/binary"].body, b"\xff\x00\xfe")
        self.assertEqual(by["/false"].body, b"false")
        self.assertEqual(by["/get"].method, "GET")
        self.assertEqual(by["/get"].body, b"")
        self.assertEqual(by["/delayed"].body, b"[1,2]")
        self.assertGreaterEqual(time.monotonic() - t0, 0.29)

    def test_none_fields_are_left_out_of_the_line(self) -> None:
        line = ffd._client._request("http://h/", None, None, None, None, None, None, None, None, None, None, None)
        self.assertEqual(line, b'{"url":"http://h/"}\n')
        line = ffd._client._request(None, None, None, 0, b"\xff", None, "hooks", "/a", None, None, None, 5)
        self.assertEqual(json.loads(line), {"dest": "hooks", "path": "/a", "json": 0,
                                            "body_base64": base64.b64encode(b"\xff").decode(), "delay_ms": 5})

    def test_rejected_has_code_and_message_and_the_connection_stays_usable(self) -> None:
        c = ffd.Client()
        self.addCleanup(c.close)
        with self.assertRaises(ffd.Rejected) as cm:
            c.send("ftp://example.com/")
        self.assertEqual(cm.exception.code, "bad_request")
        self.assertIn("ftp", cm.exception.message)
        with self.assertRaises(ffd.Rejected) as cm:
            ffd.send(self.sink.url("/x"), json={}, body="both")
        self.assertEqual(cm.exception.code, "bad_request")
        with self.assertRaises(ffd.Rejected) as cm:
            c.send(dest="nowhere", path="/x")
        self.assertEqual(cm.exception.code, "unknown_dest")
        self.assertEqual(len(c.send(self.sink.url("/after"))), 26)

    def test_status_follows_a_request_to_delivered_and_stats_counts_it(self) -> None:
        c = ffd.Client()
        self.addCleanup(c.close)
        id = c.send(self.sink.url("/s"), json={"n": 1})
        st = wait_until("delivered", lambda: (lambda s: s if s["state"] == "delivered" else None)(c.status(id)))
        self.assertEqual(st["last_status"], 200)
        self.assertEqual(st["attempts"], 1)
        self.assertGreaterEqual(c.stats()["delivered"], 1)
        self.assertIn("version", c.ping())
        with self.assertRaises(ffd.Rejected) as cm:
            c.status("no-such-id")
        self.assertEqual(cm.exception.code, "not_found")

    def test_a_retried_request_shows_its_last_status(self) -> None:
        c = ffd.Client()
        self.addCleanup(c.close)
        id = c.send(self.sink.url("/501"), body="x", max_attempts=2)
        st = wait_until("dead", lambda: (lambda s: s if s["state"] == "dead" else None)(c.status(id)))
        self.assertEqual(st["last_status"], 501)
        self.assertEqual(st["attempts"], 2)


class UnreachableTest(unittest.TestCase):
    def test_message_names_the_path_how_it_was_chosen_and_that_ffd_is_not_running(self) -> None:
        with self.assertRaises(ffd.Unreachable) as cm:
            ffd.Client("/nonexistent/dir/ffd.sock")
        msg = str(cm.exception)
        self.assertIn("/nonexistent/dir/ffd.sock", msg)
        self.assertIn("given to ffd.Client", msg)
        self.assertIn("not to be running", msg)
        self.assertEqual(cm.exception.path, "/nonexistent/dir/ffd.sock")

        old = os.environ.get("FFD_SOCKET")
        os.environ["FFD_SOCKET"] = "/nonexistent/env.sock"
        try:
            ffd._client._local.__dict__.clear()
            with self.assertRaises(ffd.Unreachable) as cm:
                ffd.send("http://127.0.0.1:1/")
            self.assertIn("/nonexistent/env.sock (from $FFD_SOCKET)", str(cm.exception))
        finally:
            if old is None:
                del os.environ["FFD_SOCKET"]
            else:
                os.environ["FFD_SOCKET"] = old

    def test_default_socket_follows_ffclients_rule(self) -> None:
        env = dict(os.environ)
        try:
            os.environ["FFD_SOCKET"] = "/x/y.sock"
            self.assertEqual(ffd.default_socket()[0], "/x/y.sock")
            del os.environ["FFD_SOCKET"]
            if os.geteuid() == 0:
                self.assertEqual(ffd.default_socket()[0], "/run/ffd/ffd.sock")
        finally:
            os.environ.clear()
            os.environ.update(env)


class PipelineTest(WithDaemon):
    def test_pipeline_reports_every_rejection_with_its_index_and_keeps_the_ids(self) -> None:
        c = ffd.Client()
        self.addCleanup(c.close)
        # Large bodies: the writes outrun ffd, so the pipeline must read
        # answers while it writes (a naive one deadlocks here).
        big = "b" * 20_000
        with self.assertRaises(ffd.PipelineRejected) as cm:
            with c.pipeline() as p:
                for i in range(1500):
                    if i % 500 == 7:
                        p.send("gopher://x/")
                    else:
                        p.send(self.sink.url("/pipe"), body=big)
        err = cm.exception
        self.assertEqual([r.index for r in err.rejected], [7, 507, 1007])
        self.assertEqual({r.code for r in err.rejected}, {"bad_request"})
        self.assertEqual(len(err.ids), 1497)
        self.assertEqual(len(set(err.ids)), 1497)
        self.assertIn("3 of 1500", str(err))
        self.sink.wait_for(1497, lambda r: r.path == "/pipe", timeout=60)
        # The client goes on after the pipeline.
        self.assertEqual(len(c.send(self.sink.url("/after"))), 26)

    def test_a_clean_pipeline_raises_nothing_and_exposes_ids_in_order(self) -> None:
        c = ffd.Client()
        self.addCleanup(c.close)
        with c.pipeline() as p:
            for i in range(200):
                p.send(self.sink.url(f"/n{i}"), id=f"id-{i}")
        self.assertEqual(p.ids, [f"id-{i}" for i in range(200)])
        self.assertEqual(p.rejected, [])
        self.sink.wait_for(200)

    def test_send_inside_a_pipeline_is_refused(self) -> None:
        c = ffd.Client()
        self.addCleanup(c.close)
        with c.pipeline() as p:
            p.send(self.sink.url("/p"))
            with self.assertRaises(ffd.FfdError):
                c.send(self.sink.url("/q"))
        self.assertEqual(len(p.ids), 1)


class ModuleSendTest(WithDaemon):
    def test_one_connection_per_thread_and_all_delivered(self) -> None:
        ids, clients, errors = [], set(), []
        lock = threading.Lock()

        def worker(n: int) -> None:
            try:
                for i in range(50):
                    id = ffd.send(self.sink.url("/t"), json={"w": n, "i": i})
                    with lock:
                        ids.append(id)
                with lock:
                    clients.add(id_of(ffd._client._local.client))
            except Exception as e:  # reported below
                errors.append(e)

        def id_of(c: object) -> int:
            return id(c)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(len(clients), 8)
        self.assertEqual(len(set(ids)), 400)
        got = self.sink.wait_for(400, lambda r: r.path == "/t")
        self.assertEqual({r.header("ffd-id") for r in got}, set(ids))

    @unittest.skipUnless(hasattr(os, "fork"), "needs fork")
    def test_a_child_after_fork_opens_its_own_connection(self) -> None:
        parent_id = ffd.send(self.sink.url("/parent"))
        parent_client = ffd._client._local.client
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its id (or error) through the pipe
            code = 1
            try:
                child_id = ffd.send(self.sink.url("/child"))
                mine = ffd._client._local.client
                ok = mine is not parent_client and mine._pid == os.getpid()
                os.write(w, f"{child_id} {ok}".encode())
                code = 0
            except BaseException as e:
                os.write(w, f"error {e!r}".encode())
            finally:
                os._exit(code)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        out = os.read(r, 1000).decode()
        os.close(r)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, out)
        child_id, ok = out.split()
        self.assertEqual(ok, "True")
        # The parent's connection is untouched: its next answer is its own.
        again = ffd.send(self.sink.url("/parent"), id="parent-again")
        self.assertEqual(again, "parent-again")
        got = self.sink.wait_for(3)
        self.assertEqual({r.header("ffd-id") for r in got}, {parent_id, child_id, "parent-again"})

    def test_send_reconnects_once_after_ffd_restarted(self) -> None:
        ffd.send(self.sink.url("/before"))
        c = ffd.Client()
        self.addCleanup(c.close)
        c.send(self.sink.url("/before"))
        self.d.restart()
        ffd.send(self.sink.url("/after"), id="after-module")
        c.send(self.sink.url("/after"), id="after-client")
        got = self.sink.wait_for(2, lambda r: r.path == "/after")
        self.assertEqual({r.header("ffd-id") for r in got}, {"after-module", "after-client"})


class AioTest(WithDaemon):
    def test_many_tasks_send_at_once_on_one_connection(self) -> None:
        async def main() -> list:
            return await asyncio.gather(*(ffd.aio.send(self.sink.url("/aio"), json={"n": n}) for n in range(300)))

        ids = asyncio.run(main())
        self.assertEqual(len(set(ids)), 300)
        got = self.sink.wait_for(300, lambda r: r.path == "/aio")
        self.assertEqual({r.header("ffd-id") for r in got}, set(ids))

    def test_the_event_loop_runs_while_ffd_is_slow_to_answer(self) -> None:
        # ffd stopped (SIGSTOP): the send waits, the loop's other tasks run.
        assert self.d.proc is not None
        pid = self.d.proc.pid

        async def main() -> tuple:
            await ffd.aio.send(self.sink.url("/warm"))  # the connection is open
            os.kill(pid, signal.SIGSTOP)
            # kill() returns before every thread has stopped: wait until they have.
            def state(t: str) -> str:
                with open(f"/proc/{pid}/task/{t}/stat") as f:  # closed: no ResourceWarning
                    return f.read().rsplit(")", 1)[1].split()[0]

            wait_until("ffd stopped", lambda: all(state(t) == "T" for t in os.listdir(f"/proc/{pid}/task")))
            try:
                task = asyncio.create_task(ffd.aio.send(self.sink.url("/slow"), id="slow-1"))
                ticks = 0
                deadline = time.monotonic() + 10
                while ticks < 20 and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                    ticks += 1
                pending = not task.done()
                if not pending and task.exception() is not None:
                    raise task.exception()
            finally:
                os.kill(pid, signal.SIGCONT)
            return ticks, pending, await asyncio.wait_for(task, 20)

        ticks, pending, id = asyncio.run(main())
        self.assertEqual(ticks, 20)
        self.assertTrue(pending, id)
        self.assertEqual(id, "slow-1")

    def test_aio_rejection_and_reconnect_after_restart(self) -> None:
        async def main() -> str:
            with self.assertRaises(ffd.Rejected) as cm:
                await ffd.aio.send("ftp://x/")
            self.assertEqual(cm.exception.code, "bad_request")
            await ffd.aio.send(self.sink.url("/a"))
            self.d.restart()
            return await ffd.aio.send(self.sink.url("/b"), id="aio-after")

        self.assertEqual(asyncio.run(main()), "aio-after")
        self.sink.wait_for(1, lambda r: r.path == "/b")


class LogHandlerTest(WithDaemon):
    def test_records_arrive_as_json_with_message_level_and_traceback(self) -> None:
        log = logging.getLogger("ffd-test")
        log.propagate = False
        h = ffd.LogHandler(self.sink.url("/logs"), headers={"x-src": "app"})
        log.addHandler(h)
        self.addCleanup(h.close)
        self.addCleanup(log.removeHandler, h)
        log.warning("user %s signed up", 42)
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("boom")
        got = self.sink.wait_for(2, lambda r: r.path == "/logs")
        bodies = sorted((json.loads(r.body) for r in got), key=lambda b: b["time"])
        self.assertEqual(bodies[0]["message"], "user 42 signed up")
        self.assertEqual(bodies[0]["level"], "WARNING")
        self.assertEqual(bodies[0]["logger"], "ffd-test")
        self.assertIn("ZeroDivisionError", bodies[1]["exc"])
        self.assertEqual(got[0].header("x-src"), "app")
        self.assertEqual(got[0].method, "POST")

    def test_an_unreachable_ffd_goes_to_handle_error_not_to_the_program(self) -> None:
        errors = []

        class Recording(ffd.LogHandler):
            def handleError(self, record: logging.LogRecord) -> None:
                import sys

                errors.append(sys.exc_info()[1])

        h = Recording(self.sink.url("/logs"), socket="/nonexistent/ffd.sock")
        log = logging.getLogger("ffd-test-down")
        log.propagate = False
        log.addHandler(h)
        self.addCleanup(log.removeHandler, h)
        log.error("lost?")
        self.assertEqual(len(errors), 1)
        self.assertIsInstance(errors[0], ffd.Unreachable)

    def test_records_to_a_batching_destination_arrive_as_events_of_one_batch(self) -> None:
        d = Daemon(
            FAST
            + f'[destinations.logs]\nurl = "{self.sink.url("/loki")}"\n'
            + "[destinations.logs.batch]\nmax_events = 3\nmax_wait_ms = 60000\n"
        )
        self.addCleanup(d.close)
        h = ffd.LogHandler(dest="logs", socket=d.socket)
        log = logging.getLogger("ffd-test-batch")
        log.propagate = False
        log.addHandler(h)
        self.addCleanup(h.close)
        self.addCleanup(log.removeHandler, h)
        for i in range(3):
            log.warning("event %d", i)
        got = self.sink.wait_for(1, lambda r: r.path == "/loki")
        self.assertEqual(got[0].header("content-type"), "application/x-ndjson")
        self.assertEqual(got[0].header("ffd-batch-size"), "3")
        lines = got[0].body.decode().splitlines()
        self.assertEqual([json.loads(x)["message"] for x in lines], ["event 0", "event 1", "event 2"])

    def test_needs_url_or_dest(self) -> None:
        with self.assertRaises(ValueError):
            ffd.LogHandler()


if __name__ == "__main__":
    unittest.main()
