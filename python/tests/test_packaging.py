"""`pip install ./python` from a checkout the user cannot write.

The copy of python/ is made read-only for real: as root (who writes
through file modes) by a read-only bind mount in a private mount
namespace (`unshare -m`), otherwise by its modes. The build backend
(flit_core, installed by .ci/test) must write nothing into it, and the
metadata must carry the SPDX license expression.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.dirname(HERE)


def listing(root: str) -> list:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


class PipInstallFromReadOnlyCopy(unittest.TestCase):
    def test_installs_and_writes_nothing_into_the_source(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "python")
            shutil.copytree(
                PYTHON_DIR, src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
            )
            before = listing(src)
            target = os.path.join(tmp, "site")
            pip = [
                sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                "--no-cache-dir", "--disable-pip-version-check", "--no-warn-script-location",
                "--target", target, src,
            ]
            env = dict(os.environ, PIP_ROOT_USER_ACTION="ignore")
            if os.geteuid() == 0:
                script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
                cmd = ["unshare", "-m", "sh", "-c", script, src] + pip
            else:
                for dirpath, dirnames, filenames in os.walk(src):
                    for name in filenames + [""]:
                        p = os.path.join(dirpath, name)
                        os.chmod(p, os.stat(p).st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
                self.addCleanup(lambda: subprocess.run(["chmod", "-R", "u+w", src], check=False))
                cmd = pip
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            out = r.stdout + r.stderr
            self.assertEqual(r.returncode, 0, out)
            self.assertNotIn("deprecat", out.lower(), out)
            self.assertEqual(listing(src), before, "the build wrote into the source tree")
            self.assertTrue(os.path.exists(os.path.join(target, "ffd", "__init__.py")), out)
            self.assertTrue(os.path.exists(os.path.join(target, "ffd", "py.typed")), out)
            dist = [d for d in os.listdir(target) if d.endswith(".dist-info")]
            self.assertEqual(len(dist), 1, os.listdir(target))
            with open(os.path.join(target, dist[0], "METADATA"), encoding="utf-8") as f:
                meta = f.read()
            self.assertIn("Name: ffd-client", meta)
            self.assertIn("License-Expression: MIT OR Apache-2.0", meta)


if __name__ == "__main__":
    unittest.main()
