"""A real S3 HTTP API on 127.0.0.1 for the tests: moto's standalone server (`moto[server]`, in the
dev extra), in its own process on a free port, torn down by the fixture that started it.

Its own process, not moto's ThreadedMotoServer in the test's: the test process is also the job's
driver, and a server sharing its GIL would slow both. pyarrow finds it through the usual AWS
environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...), which `env` holds and Ray workers
inherit.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

# distinctive, so that a test can look for them in every file and output
ACCESS_KEY = "AKIAMODNETTESTKEY0001"
SECRET_KEY = "modnet-test-secret-Zq81xV0wLm"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """One moto server process; `env` is what clients need to reach it."""

    def __init__(self, log: Path, *, auth: bool = False) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        if auth:  # every request checked against (absent) IAM users: all credentials refused
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not start (log: {log})") from None
                time.sleep(0.2)
        self.env = {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def make_bucket(self, name: str) -> str:
        """Create bucket `name`; returns `s3://name`."""
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region=REGION,
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            allow_bucket_creation=True,
        )
        fs.create_dir(name)
        return f"s3://{name}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@contextlib.contextmanager
def s3_environment(server: S3Server) -> Iterator[dict[str, str]]:
    """os.environ with the server's variables for the duration (restored after)."""
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield server.env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
