"""appr 0.7.4 (the CLI of the 2017 app-registry, Python 2.7 code): the smallest Python 3 edits that let
its CNR verbs run. None changes a request it sends."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.clients.common import Edit, install

NAME = "appr"
# appr pins urllib3<1.22, which a current requests refuses: 1.26 after it (appr-on-python3.md).
PACKAGES = ["appr==0.7.4", "urllib3==1.26.20"]
EDITS = [
    Edit("appr/api/gevent_app.py", "from gevent.wsgi import WSGIServer", "from gevent.pywsgi import WSGIServer",
         "gevent.wsgi is gone (gevent >= 1.3); the CLI imports it at start even for client verbs"),
    Edit("appr/commands/push.py", '"blob": base64.b64encode(kubefile.read())}',
         '"blob": base64.b64encode(kubefile.read()).decode()}',
         "b64encode returns bytes on Python 3, which json.dumps refuses; py2 str was text"),
    Edit("appr/formats/helm/manifest_chart.py", "self.update(yaml.load(yamlstr))",
         "self.update(yaml.safe_load(yamlstr))", "PyYAML 6 yaml.load needs a Loader (reads Chart.yaml on push)"),
    Edit("appr/auth.py", "self._tokens = yaml.load(tokenfile.read())",
         "self._tokens = yaml.safe_load(tokenfile.read())",
         "PyYAML 6 yaml.load needs a Loader (reads ~/.appr/auths.yaml once logged in)"),
    Edit("appr/auth.py", "if isinstance(token, basestring):", "if isinstance(token, str):",
         "basestring is Python 2 only (checked on every run once a token is stored)"),
    Edit("appr/commands/cli.py", "parser.error(exc.message)", "parser.error(str(exc))",
         "exceptions have no .message on Python 3 (the CLI's usage-error path)"),
    Edit("appr/pack.py", "self.files[tfile.name] = tfile.read()", "self.files[member.name] = tfile.read()",
         "on Python 3 an extracted member's .name is the archive's, not the member's (appr inspect)"),
    Edit("appr/plugins/helm.py", "deps['dependencies'] = dict_deps.values()",
         "deps['dependencies'] = list(dict_deps.values())",
         "dict.values() is a view on Python 3, which yaml.safe_dump refuses (appr helm dep)"),
]


def main() -> Path:
    return install(NAME, PACKAGES, EDITS)


if __name__ == "__main__":
    main()
