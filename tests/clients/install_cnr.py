"""cnr 0.4.1 (the 2017 `cnr` CLI, Python 2.7 code, /cnr prefix): the smallest Python 3 edits that let
its verbs run. None changes a request it sends."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.clients.common import Edit, install

# cnr 0.4.1 grew out of cnrclient 0.3.5 and keeps its package name: these edits are the same in both.
SHARED = [
    Edit("cnrclient/formats/helm/manifest_chart.py", "self.update(yaml.load(yamlstr))",
         "self.update(yaml.safe_load(yamlstr))", "PyYAML 6 yaml.load needs a Loader (reads Chart.yaml on push)"),
    Edit("cnrclient/auth.py", "self._tokens = yaml.load(tokenfile.read())",
         "self._tokens = yaml.safe_load(tokenfile.read())",
         "PyYAML 6 yaml.load needs a Loader (reads ~/.cnr/auths.yaml once logged in)"),
    Edit("cnrclient/config.py", "self._config = yaml.load(configfile.read())",
         "self._config = yaml.safe_load(configfile.read())",
         "PyYAML 6 yaml.load needs a Loader (reads ~/.cnr/config.yaml, the registry aliases)"),
    Edit("cnrclient/commands/command_base.py", "raise parser.error(exc.message)",
         "raise parser.error(str(exc))", "exceptions have no .message on Python 3 (a malformed package name)"),
    Edit("cnrclient/commands/cli.py", "parser.error(exc.message)", "parser.error(str(exc))",
         "exceptions have no .message on Python 3 (the CLI's usage-error path)"),
    Edit("cnrclient/pack.py", "self.files[tf.name] = tf.read()", "self.files[m.name] = tf.read()",
         "a Python 3 extracted file object has no member name (.name is the archive's); py2's was the member's"),
]

NAME = "cnr"
PACKAGES = ["cnr==0.4.1"]
EDITS = [
    *SHARED,
    Edit("cnrclient/commands/push.py", '"blob": base64.b64encode(kubefile.read())',
         '"blob": base64.b64encode(kubefile.read()).decode()',
         "b64encode returns bytes on Python 3, which json.dumps refuses; py2 str was text"),
    Edit("cnrclient/commands/command_base.py", 'payload = {"message": exc.message}',
         'payload = {"message": str(exc)}', "exceptions have no .message on Python 3 (every HTTP error path)"),
    Edit("cnrclient/plugins/helm.py", "deps['dependencies'] = dict_deps.values()",
         "deps['dependencies'] = list(dict_deps.values())",
         "dict.values() is a view on Python 3, which yaml.safe_dump refuses (cnr helm dep)"),
]


def main() -> Path:
    return install(NAME, PACKAGES, EDITS)


if __name__ == "__main__":
    main()
