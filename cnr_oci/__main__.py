"""`python -m cnr_oci`: the cnr-oci command line."""

from cnr_oci.cli import main

raise SystemExit(main())
