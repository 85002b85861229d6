"""appr 0.7.4 SERVER (`appr run-server`, filesystem storage; the 2017 app-registry reference, Python 2.7
code): the smallest Python 3 edits that let it serve the CNR endpoints the migration reads (issue 11) and
the ones that fill it. Each edit restores the Python 2.7 behaviour; none changes a status, an error code
or the shape of an answer."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.clients.common import Edit, install

NAME = "appr-server"
# appr pins urllib3<1.22, which a current requests refuses: 1.26 after it (appr-on-python3.md). Flask, Werkzeug,
# gevent, semantic_version come unpinned with appr and work as they are. Werkzeug is not pinned back to < 2.3
# (for Headers.to_list): Flask 3.1 needs Werkzeug >= 3.1, so a one-word edit is smaller than pinning both.
PACKAGES = ["appr==0.7.4", "urllib3==1.26.20"]
EDITS = [
    Edit("appr/api/gevent_app.py", "from gevent.wsgi import WSGIServer", "from gevent.pywsgi import WSGIServer",
         "gevent.wsgi is gone (gevent >= 1.3); run-server imports it"),
    Edit("appr/api/registry.py", "dict(request.headers.to_list())", "dict(request.headers.to_wsgi_list())",
         "Werkzeug 2.3 removed Headers.to_list, its old alias of to_wsgi_list; without it every request is a 500"),
    Edit("appr/api/info.py", "dict(request.headers.to_list())", "dict(request.headers.to_wsgi_list())",
         "the same, for the /cnr/ and /cnr/version blueprint"),
    Edit("appr/models/kv/filesystem/__init__.py", "with open(path, 'wb') as f:", "with open(path, 'w') as f:",
         "the store writes text (JSON, base64, lock expiry), as a py2 str was; binary mode refuses str"),
    Edit("appr/models/kv/filesystem/__init__.py", "with open(path, 'rb') as f:\n            return f.read()",
         "with open(path, 'r') as f:\n            return f.read()",
         "and reads it back as text, as py2 did (json.loads and b64decode take str)"),
    Edit("appr/models/kv/models_index_base.py", ".iteritems()", ".items()",
         "dict.iteritems is py2 only: releases by media type, channel releases, the listing of every namespace, "
         "search", count=6),
    Edit("appr/models/kv/package_kv_base.py", "return index.release_manifests(release).keys()",
         "return list(index.release_manifests(release).keys())",
         "a py2 list: the listing JSON-encodes it (E5 'manifests') and pull with media type '-' indexes it"),
    Edit("appr/models/package_base.py", "raise InvalidRelease(e.message,", "raise InvalidRelease(str(e),",
         "exceptions have no .message on py3: a malformed release query must stay a 422 invalid-release"),
]


def main() -> Path:
    return install(NAME, PACKAGES, EDITS)


if __name__ == "__main__":
    main()
