"""A docker-registry (distribution 2.8.2) with its S3 storage driver, on a local S3 server (moto in server
mode), both on 127.0.0.1: a registry that answers blob GETs with a 307 to a presigned storage URL, as
registries backed by object storage do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cnr_oci.embedded import free_port, stop_process

BUCKET = "registry"
CONFIG = """version: 0.1
log:
  level: warn
storage:
  s3:
    accesskey: test-access-key
    secretkey: test-secret-key
    region: us-east-1
    regionendpoint: {s3}
    bucket: {bucket}
    forcepathstyle: true
    secure: false
    v4auth: true
  delete:
    enabled: true
  redirect:
    disable: false
http:
  addr: 127.0.0.1:{port}
"""


@dataclass
class S3Registry:
    url: str
    host: str
    s3_url: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc, 5)


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer in {timeout} s: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)


def start_s3_registry(root: Path) -> S3Registry:
    """moto's S3 server and a bucket, then docker-registry on it. AWS_CA_BUNDLE is removed from the
    registry's environment: with it set, the S3 driver panics at start (LoadCustomCABundleError)."""
    import boto3

    s3_port, port = free_port(), free_port()
    s3_url = f"http://127.0.0.1:{s3_port}"
    moto_exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    moto_log = root / "moto.log"
    reg = S3Registry(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", s3_url)
    with open(moto_log, "ab") as out:
        reg.procs.append(subprocess.Popen([moto_exe, "-H", "127.0.0.1", "-p", str(s3_port)], stdout=out,
                                          stderr=out))
    try:
        _wait(s3_url, reg.procs[0], moto_log)
        boto3.client("s3", endpoint_url=s3_url, aws_access_key_id="test-access-key",
                     aws_secret_access_key="test-secret-key", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        config = root / "registry-s3.yml"
        config.write_text(CONFIG.format(s3=s3_url, bucket=BUCKET, port=port))
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        reg_log = root / "registry.log"
        with open(reg_log, "ab") as out:
            reg.procs.append(subprocess.Popen(["docker-registry", "serve", str(config)], stdout=out, stderr=out,
                                              env=env))
        _wait(reg.url + "/v2/", reg.procs[1], reg_log)
    except BaseException:
        reg.stop()
        raise
    return reg
