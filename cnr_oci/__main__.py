from cnr_oci.cli import main

raise SystemExit(main())
