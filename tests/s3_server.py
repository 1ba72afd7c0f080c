"""A real S3 server for tests: SeaweedFS `weed mini` on 127.0.0.1, credentials enforced."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

ACCESS_KEY = "qvqtestaccess"
SECRET_KEY = "qvqtestsecret-0123456789"


def _free_port_pair() -> int:
    """A free port whose +10000 gRPC twin is free too (weed derives gRPC ports that way)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


@dataclass
class WeedServer:
    data_dir: pathlib.Path
    buckets: tuple[str, ...]
    proc: subprocess.Popen | None = None
    ports: dict[str, int] | None = None

    @property
    def endpoint(self) -> str:
        assert self.ports
        return f"http://127.0.0.1:{self.ports['s3']}"

    def start(self, timeout_s: float = 60) -> WeedServer:
        if self.ports is None:
            # weed reserves port + 10000 of each service for gRPC: no port may be another's twin
            taken: set[int] = set()
            self.ports = {}
            for name in ("s3", "master", "volume", "filer", "admin", "webdav"):
                port = _free_port_pair()
                while {port, port + 10000} & taken:
                    port = _free_port_pair()
                taken |= {port, port + 10000}
                self.ports[name] = port
        weed = shutil.which("weed", path=os.path.dirname(sys.executable)) or "weed"
        p = self.ports
        argv = [weed, "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={p['s3']}", f"-master.port={p['master']}",
                f"-volume.port={p['volume']}", f"-filer.port={p['filer']}",
                f"-admin.port={p['admin']}", f"-webdav.port={p['webdav']}", "-admin.ui=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-bucket={','.join(self.buckets)}"]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
               "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir.parent / f"weed-{p['s3']}.log").open("ab")
        self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                              aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                              config=Config(s3={"addressing_style": "path"},
                                            retries={"max_attempts": 1}, connect_timeout=1,
                                            read_timeout=5))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError("weed mini exited during startup")
            try:
                for bucket in self.buckets:
                    client.head_bucket(Bucket=bucket)
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.3)
        raise RuntimeError("weed mini did not become ready")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None

    def s3_config(self, bucket: str | None = None, **overrides) -> dict:
        return {"endpoint_url": self.endpoint, "bucket": bucket or self.buckets[0],
                "path_style": True, "region": "us-east-1", "connect_timeout_s": 1.0,
                "read_timeout_s": 10.0, "max_attempts": 1, **overrides}
