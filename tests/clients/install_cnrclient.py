"""cnrclient 0.3.5 (the early `cnr` CLI, Python 2.7 code, bare /api/v1): the smallest Python 3 edits that
let its verbs run. None changes a request it sends."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.clients.common import Edit, install
from tests.clients.install_cnr import SHARED

NAME = "cnrclient"
# cnrclient 0.3.5 imports yaml without declaring it (appr-on-python3.md).
PACKAGES = ["cnrclient==0.3.5 pyyaml"]
EDITS = [
    *SHARED,
    Edit("cnrclient/commands/push.py", '"blob": base64.b64encode(kubefile.read())}',
         '"blob": base64.b64encode(kubefile.read()).decode()}',
         "b64encode returns bytes on Python 3, which json.dumps refuses; py2 str was text"),
    Edit("cnrclient/commands/command_base.py", "raise argparse.ArgumentTypeError(exc.message)",
         "raise argparse.ArgumentTypeError(str(exc))",
         "exceptions have no .message on Python 3 (every HTTP error path)"),
    Edit("cnrclient/pack.py", "files = self.files.keys()", "files = list(self.files.keys())",
         "dict.keys() is a view with no .sort() on Python 3 (cnr inspect --tree)"),
]


def main() -> Path:
    return install(NAME, PACKAGES, EDITS)


if __name__ == "__main__":
    main()
