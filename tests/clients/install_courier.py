"""operator-courier 2.1.11 (Python 3 already): one edit, its push URL, which is hard-coded to quay.io."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.clients.common import Edit, install

NAME = "courier"
PACKAGES = ["operator-courier==2.1.11"]
EDITS = [
    Edit("operatorcourier/push.py",
         "push_uri = 'https://quay.io/cnr/api/v1/packages/%s/%s' % (namespace, repository)",
         "push_uri = os.environ.get('OPERATOR_COURIER_PUSH_URL', 'https://quay.io/cnr/api/v1/packages')"
         " + '/%s/%s' % (namespace, repository)",
         "the push URL is hard-coded to quay.io; OPERATOR_COURIER_PUSH_URL points it at another CNR server"),
]


def main() -> Path:
    return install(NAME, PACKAGES, EDITS)


if __name__ == "__main__":
    main()
