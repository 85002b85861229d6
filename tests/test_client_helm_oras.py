"""helm 3.8.1 and 4.1.4 and oras-py against what cnr-oci stores, and the oracle of issue 9 item 3."""

from __future__ import annotations


def test_helm_config_writes_dependencies_as_helms_struct_marshals_them():
    """Regression (server): dependencies kept the pushed key order and unknown keys, so a chart whose
    Chart.yaml `helm package` had rewritten (keys sorted) got a config blob unlike helm push's. helm
    marshals chart.Dependency: name, version, repository (never omitted), condition, tags, enabled,
    import-values, alias; unknown keys are dropped."""
    from cnr_oci.archive import helm_config

    chart = {"name": "a", "version": "1.0.0", "dependencies": [
        {"version": "0.1.0", "tags": ["x<y"], "name": "sub", "condition": "sub.on", "alias": "s",
         "import-values": ["data"], "enabled": True, "repository": "", "unknown": 1},
        {"name": "other"}]}
    assert helm_config(chart) == (
        b'{"name":"a","version":"1.0.0","dependencies":['
        b'{"name":"sub","version":"0.1.0","repository":"","condition":"sub.on","tags":["x\\u003cy"],"enabled":true,'
        b'"import-values":["data"],"alias":"s"},{"name":"other","repository":""}]}')
