"""cnr-oci: the CNR / appr app-registry API, stored in an OCI registry."""

__version__ = "0.1.0"
