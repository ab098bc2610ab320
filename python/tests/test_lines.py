"""The protocol line the module writes, field by field (no ffd needed)."""

from __future__ import annotations

import json
import unittest

import support  # noqa: F401  (puts python/ on sys.path)

from ffd._client import _request

FIELDS = ["url", "method", "headers", "json", "body", "id", "dest", "path",
          "timeout_ms", "max_attempts", "ttl_ms", "delay_ms"]


def line(**kw):
    raw = _request(*[kw.get(f) for f in FIELDS])
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1, raw
    return json.loads(raw)


class Lines(unittest.TestCase):
    def test_every_field_as_the_json_encoder_would_write_it(self) -> None:
        kw = dict(
            url="http://h/ü?q=\"1\"", method="PUT", headers={"x-a": "1", "x-ü": "\n\t\u2028"},
            json={"a": [1, 2.5, None, True, "é"]}, id="id\\1", timeout_ms=5,
            max_attempts=3, ttl_ms=10, delay_ms=0,
        )
        self.assertEqual(line(**kw), kw)
        self.assertEqual(line(dest="logs", path="/p"), {"dest": "logs", "path": "/p"})

    def test_headers_as_pairs_keep_repeats_and_order(self) -> None:
        self.assertEqual(
            line(url="http://h/", headers=[("a", "1"), ("a", "2")])["headers"],
            [["a", "1"], ["a", "2"]],
        )

    def test_bodies(self) -> None:
        self.assertEqual(line(url="http://h/", body="tëxt")["body"], "tëxt")
        self.assertEqual(line(url="http://h/", body=b"bytes")["body"], "bytes")
        self.assertEqual(line(url="http://h/", body=bytearray(b"x"))["body"], "x")
        self.assertEqual(line(url="http://h/", body=b"\xff\x00")["body_base64"], "/wA=")

    def test_a_value_json_cannot_hold_is_refused_here(self) -> None:
        with self.assertRaises(TypeError):
            _request("http://h/", None, {"x": object()}, None, None, None, None, None, None, None, None, None)


if __name__ == "__main__":
    unittest.main()
