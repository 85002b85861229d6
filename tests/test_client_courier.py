"""operator-courier 2.1.11, the real CLI from PyPI, pushing operator bundles to cnr-oci as it pushed
them to Quay; OLM then reads them back through the CNR API. The one edit: its push URL (install_courier)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import helpers
from tests.clients import common, install_courier
from tests.conftest import LiveServer

API = "/cnr/api/v1/packages"

PACKAGE = """\
packageName: {name}
channels:
- name: alpha
  currentCSV: {name}.v{version}
defaultChannel: alpha
"""

CSV = """\
apiVersion: operators.coreos.com/v1alpha1
kind: ClusterServiceVersion
metadata:
  name: {name}.v{version}
  namespace: placeholder
  annotations:
    alm-examples: '[{{"apiVersion":"example.com/v1","kind":"Widget","metadata":{{"name":"w"}},"spec":{{}}}}]'
    categories: Database
    description: A test operator (<&> ünïcode).
    containerImage: quay.io/example/{name}:v{version}
    createdAt: 2019-01-01T00:00:00Z
    capabilities: Basic Install
    support: Example
    certified: "false"
    repository: https://example.com/{name}
spec:
  displayName: Test Operator
  description: A test operator for cnr-oci.
  version: {version}
  maturity: alpha
  provider:
    name: Example
  links:
  - name: Docs
    url: https://example.com
  maintainers:
  - name: Example
    email: ex@example.com
  keywords: [test]
  icon:
  - base64data: iVBORw0KGgo=
    mediatype: image/png
  installModes:
  - type: OwnNamespace
    supported: true
  - type: SingleNamespace
    supported: true
  - type: MultiNamespace
    supported: false
  - type: AllNamespaces
    supported: true
  install:
    strategy: deployment
    spec:
      permissions: []
      clusterPermissions: []
      deployments:
      - name: {name}
        spec:
          replicas: 1
          selector:
            matchLabels: {{app: {name}}}
          template:
            metadata:
              labels: {{app: {name}}}
            spec:
              containers:
              - name: {name}
                image: quay.io/example/{name}:v{version}
  customresourcedefinitions:
    owned:
    - name: widgets.example.com
      version: v1
      kind: Widget
      displayName: Widget
      description: A widget.
"""

CRD = """\
apiVersion: apiextensions.k8s.io/v1beta1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  version: v1
  versions:
  - name: v1
    served: true
    storage: true
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    listKind: WidgetList
"""


@pytest.fixture(scope="module")
def courier() -> Path:
    """The courier venv (installed here if `make clients` has not run: never a skip)."""
    return install_courier.main()


def bundle_dir(root: Path, name: str, version: str = "0.1.0") -> Path:
    """A flat operator manifest directory (package, CSV, CRD) that `operator-courier verify` accepts."""
    d = root / name
    d.mkdir()
    (d / f"{name}.package.yaml").write_text(PACKAGE.format(name=name, version=version))
    (d / f"{name}.v{version}.clusterserviceversion.yaml").write_text(CSV.format(name=name, version=version))
    (d / "widgets.crd.yaml").write_text(CRD)
    return d


class Recorder:
    """A loopback pass-through in front of cnr-oci that keeps every request body courier sends."""

    def __init__(self, upstream: str) -> None:
        self.bodies: list[tuple[str, dict[str, str], bytes]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                recorder.bodies.append((self.path, dict(self.headers), data))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
                req = urllib.request.Request(upstream + self.path, data=data, method="POST", headers=headers)
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        status, out, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
                except urllib.error.HTTPError as e:
                    status, out, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def recorder(live_server: LiveServer) -> Iterator[Recorder]:
    rec = Recorder(live_server.url)
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


def quay_token(user: str, password: str) -> str:
    """What operator-courier users pass (Quay's form, lowercase scheme)."""
    return "basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def get(url: str, token: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": token})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def push(courier: Path, tmp_path: Path, url: str, src: Path, ns: str, repo: str, release: str,
         token: str) -> Any:
    env = common.client_env(tmp_path, OPERATOR_COURIER_PUSH_URL=url + API)
    return common.run(courier, "operator-courier", "--verbose", "push", str(src), ns, repo, release, token,
                      home=tmp_path, env=env)


def test_courier_push_is_pulled_back_byte_identical_as_olm_reads_it(courier, live_server, recorder, tmp_path):
    ns, repo = helpers.unique("oc")
    src = bundle_dir(tmp_path, repo)
    verify = common.run(courier, "operator-courier", "verify", "--ui_validate_io", str(src), home=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    token = quay_token("alice", live_server.users["alice"])
    proc = push(courier, tmp_path, recorder.url, src, ns, repo, "0.1.0", token)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # Exactly what courier sent: one POST with Quay's body (helm media type, base64 .tar.gz).
    [(path, headers, raw)] = recorder.bodies
    assert path == f"{API}/{ns}/{repo}"
    assert headers["Authorization"] == token
    sent = json.loads(raw)
    assert (sent["release"], sent["media_type"]) == ("0.1.0", "helm")
    tgz = base64.b64decode(sent["blob"])

    # OLM's walk: list the namespace, show the release, pull it (E12), and the blob by digest (E13).
    status, data = get(f"{live_server.url}{API}?namespace={ns}", token)
    assert status == 200 and [p["name"] for p in json.loads(data)] == [f"{ns}/{repo}"]
    status, data = get(f"{live_server.url}{API}/{ns}/{repo}/0.1.0/helm", token)
    assert status == 200, data
    shown = json.loads(data)
    assert shown["release"] == "0.1.0" and shown["content"]["digest"] == hashlib.sha256(tgz).hexdigest()
    status, pulled = get(f"{live_server.url}{API}/{ns}/{repo}/0.1.0/helm/pull", token)
    assert status == 200 and pulled == tgz
    status, by_digest = get(f"{live_server.url}{API}/{ns}/{repo}/blobs/sha256/{shown['content']['digest']}", token)
    assert status == 200 and by_digest == tgz

    # And it is the operator bundle courier built: <repo>-*/bundle.yaml with the three documents.
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(pulled))) as tar:
        [member] = [m for m in tar.getmembers() if m.isfile()]
        assert member.name.startswith(f"{repo}-") and member.name.endswith("/bundle.yaml")
        extracted = tar.extractfile(member)
        assert extracted is not None
        bundle = yaml.safe_load(extracted.read())["data"]
    [package] = yaml.safe_load(bundle["packages"])
    assert package["packageName"] == repo
    [csv] = yaml.safe_load(bundle["clusterServiceVersions"])
    assert csv["metadata"]["name"] == f"{repo}.v0.1.0"
    assert csv["metadata"]["annotations"]["description"] == "A test operator (<&> ünïcode)."
    [crd] = yaml.safe_load(bundle["customResourceDefinitions"])
    assert crd["metadata"]["name"] == "widgets.example.com"

    # A second push of the same release is refused as Quay refused it, and courier says so.
    proc = push(courier, tmp_path, live_server.url, src, ns, repo, "0.1.0", token)
    assert proc.returncode != 0 and "409" in proc.stdout + proc.stderr


def test_courier_push_with_a_bad_token_gets_401_before_the_body(courier, live_server, recorder, tmp_path):
    ns, repo = helpers.unique("oc")
    src = bundle_dir(tmp_path, repo)
    bad = quay_token("alice", "wrong-password")
    proc = push(courier, tmp_path, live_server.url, src, ns, repo, "0.1.0", bad)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "401" in out, out
    status, _ = get(f"{live_server.url}{API}/{ns}/{repo}", quay_token("alice", live_server.users["alice"]))
    assert status == 404  # nothing was written
    # The same bad token with a body that is not even JSON: still 401 (auth is decided first).
    req = urllib.request.Request(f"{live_server.url}{API}/{ns}/{repo}", data=b"{not json", method="POST",
                                 headers={"Authorization": bad, "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=30)
    assert exc.value.code == 401
    err = json.loads(exc.value.read())
    assert err["error"]["code"] == "unauthorized-access"  # the nested object courier reads
    log = live_server.log_path.read_text()
    assert "wrong-password" not in log and bad.split()[1] not in log  # the token is never logged
