"""layout.py and helm.py: the OCI documents cnr-oci writes and how it reads others', without a network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnr_oci import archive, errors, helm, layout, schemas
from cnr_oci.layout import Manifest
from cnr_oci.mapping import Package
from tests.test_archive import chart_tgz

PKG = Package("ns", "app")
BLOB = b"\x1f\x8b blob bytes"
CREATED = "2026-01-02T03:04:05Z"


def manifest(doc: dict) -> Manifest:
    raw = layout.compact(doc)
    return Manifest(layout.sha256(raw), layout.OCI_MANIFEST, raw, doc)


def chart(text: str = "apiVersion: v2\nname: demo\nversion: 1.0.0\n") -> dict:
    found = archive.inspect_tarball(chart_tgz("demo", text), "helm")
    assert found is not None
    return found


# -- what cnr-oci writes ----------------------------------------------------------------------------------


def test_an_artifact_is_an_oci_manifest_with_a_canonical_config_and_the_blob_as_its_one_layer():
    config, doc = layout.artifact_documents(PKG, "1.0.0", "kpm", layout.sha256(BLOB), len(BLOB), {"a": 1}, CREATED)
    assert json.loads(config) == {"package": "ns/app", "release": "1.0.0", "media_type": "kpm",
                                  "metadata": {"a": 1}, "created_at": CREATED}
    assert config == layout.canonical(json.loads(config))
    assert doc["mediaType"] == layout.OCI_MANIFEST and doc["artifactType"] == "application/vnd.cnr.package.kpm.v1"
    assert doc["config"] == {"mediaType": layout.CNR_CONFIG, "digest": layout.sha256(config), "size": len(config)}
    assert doc["layers"] == [{"mediaType": "application/vnd.cnr.package.kpm.v1.tar+gzip", "digest": layout.sha256(BLOB),
                              "size": len(BLOB), "annotations": {layout.ANN_TITLE: "ns_app_1.0.0.tar.gz"}}]
    assert doc["annotations"] == {layout.ANN_VERSION: "1.0.0", layout.ANN_CREATED: CREATED}
    assert schemas.first_error(schemas.CNR_MANIFEST, doc) is None
    assert layout.classify(doc) == "kpm" and layout.package_type(manifest(doc)) == "kpm"


def test_a_chart_is_laid_out_as_helm_push_writes_it_with_metadata_in_an_annotation():
    c = chart("apiVersion: v2\nname: demo\nversion: 1.0.0\ndescription: d\n")
    config, doc = helm.documents(c, "1.0.0", layout.sha256(BLOB), len(BLOB), CREATED, {"b": 2, "a": 1})
    assert config == helm.helm_config(c)
    assert "mediaType" not in doc  # helm push writes none; the Content-Type says it
    assert list(doc) == ["schemaVersion", "config", "layers", "annotations"]
    assert doc["config"] == {"mediaType": layout.HELM_CONFIG, "digest": layout.sha256(config), "size": len(config)}
    assert doc["layers"][0]["mediaType"] == layout.HELM_LAYER
    assert doc["layers"][0]["annotations"] == {layout.ANN_TITLE: "demo-1.0.0.tgz"}
    assert doc["annotations"][layout.ANN_METADATA] == '{"a": 1, "b": 2}'
    assert doc["annotations"][layout.ANN_VERSION] == "1.0.0" and doc["annotations"][layout.ANN_CREATED] == CREATED
    assert layout.classify(doc) == "helm"


def test_a_chart_cannot_set_cnr_oci_own_annotations_and_non_ascii_is_escaped_as_helm_does():
    c = chart("apiVersion: v2\nname: demo\nversion: 1.0.0\ndescription: caf\u00e9 \U0001f600\n"
              "annotations:\n  vnd.cnr.package.metadata: fake\n  org.opencontainers.image.version: 9.9.9\n")
    ann = helm.helm_annotations(c, "1.0.0", CREATED)
    assert layout.ANN_METADATA not in ann and ann[layout.ANN_VERSION] == "1.0.0"
    assert ann["org.opencontainers.image.description"] == "caf\\u00e9 \\ud83d\\ude00"


def test_documents_over_the_registry_limit_are_refused_before_anything_is_uploaded():
    layout.check_size(b"x" * 100, b"y" * 100, 100)
    with pytest.raises(errors.PayloadTooLarge) as info:
        layout.check_size(b"x" * 101, b"y", 100)
    assert info.value.details == {"field": "metadata", "limit": 100}
    with pytest.raises(errors.PayloadTooLarge):
        layout.check_size(b"x", b"y" * 101, 100)


def test_a_package_index_entry_has_an_unknown_platform_and_the_media_type_annotation_in_skopeo_order():
    m = manifest({"schemaVersion": 2})
    desc = layout.package_descriptor("helm", m)
    assert list(desc) == ["mediaType", "digest", "size", "annotations", "platform"]
    assert desc["platform"] == layout.UNKNOWN_PLATFORM and desc["annotations"] == {layout.ANN_MEDIA_TYPE: "helm"}
    assert layout.may_hold_package(desc)
    assert not layout.may_hold_package({"digest": m.digest, "platform": {"architecture": "amd64", "os": "linux"}})


def test_a_release_index_keeps_the_annotations_of_the_index_it_replaces_only():
    children = [{"digest": "sha256:" + "1" * 64}]
    old_index = manifest({"schemaVersion": 2, "manifests": [], "annotations": {"k": "v"}})
    old_manifest = manifest({"schemaVersion": 2, "layers": [], "annotations": {"k": "v"}})
    assert json.loads(layout.release_index(children, old_index))["annotations"] == {"k": "v"}
    assert "annotations" not in json.loads(layout.release_index(children, old_manifest))
    assert json.loads(layout.release_index(children, None)) == {
        "schemaVersion": 2, "mediaType": layout.OCI_INDEX, "manifests": children}


def test_a_channel_is_its_own_manifest_whose_subject_is_the_current_release():
    doc = {"name": "stable", "current": "1.0.0", "releases": ["1.0.0"]}
    current = manifest({"schemaVersion": 2})
    config, raw = layout.channel_documents(doc, CREATED, current)
    m = json.loads(raw)
    assert json.loads(config) == doc and m["artifactType"] == layout.CHANNEL_ARTIFACT
    assert m["subject"] == {"mediaType": layout.OCI_MANIFEST, "digest": current.digest, "size": len(current.raw)}
    assert m["layers"] == [{"mediaType": layout.EMPTY_MEDIA_TYPE, "digest": layout.sha256(b"{}"), "size": 2}]
    assert layout.is_channel(Manifest(layout.sha256(raw), layout.OCI_MANIFEST, raw, m))
    assert "subject" not in json.loads(layout.channel_documents(doc, CREATED, None)[1])
    with pytest.raises(errors.InternalError):  # never stored when it fails its own schema
        layout.channel_documents({"name": "stable"}, CREATED, None)


# -- what others wrote ---------------------------------------------------------------------------------


def test_content_is_found_in_helms_legacy_layer_too_and_a_config_alone_is_no_package():
    legacy = {"config": {"mediaType": layout.HELM_CONFIG}, "layers": [{"mediaType": layout.HELM_LEGACY_LAYER}]}
    assert layout.content_layer(legacy) == {"mediaType": layout.HELM_LEGACY_LAYER}
    assert layout.package_type(manifest(legacy)) == "helm"
    assert layout.package_type(manifest({"config": {"mediaType": layout.HELM_CONFIG}, "layers": []})) is None


@pytest.mark.parametrize("config, platform", [
    (b'{"architecture": "arm64", "os": "linux", "variant": "v8"}',
     {"architecture": "arm64", "os": "linux", "variant": "v8"}),
    (b'{"architecture": "amd64"}', None), (b"not json", None), (b"[1]", None),
    (b'{"os": 1, "architecture": "x"}', None),
])
def test_an_image_platform_is_read_from_its_config_or_left_out(config, platform):
    assert layout.image_platform(config) == platform


@pytest.mark.parametrize("value, kept", [
    ("2026-01-02T03:04:05Z", True), ("2026-01-02T03:04:05.123456789+02:00", True), ("2026-01-02", False),
    ("", False), (None, False), (5, False), ("2026-01-02T03:04:05Z\n", False),
])
def test_created_dates_are_rfc3339_or_null(value, kept):
    assert layout.created_date(value) == (value if kept else None)


def test_scalars_in_string_fields_are_kept_as_helm_keeps_them():
    text = ("apiVersion: v2\nname: demo\nversion: 1.0.0\ndescription: 5\nappVersion: 1.10\n"
            "keywords: [1, true]\nannotations: {a: 1, b: false}\ndeprecated: true\ncreated: 2020-01-01\n")
    chart = archive.inspect_tarball(chart_tgz("demo", text), "helm")
    config = json.loads(helm.helm_config(chart))
    assert config["description"] == "5" and config["appVersion"] == "1.1"
    assert config["keywords"] == ["1", "true"]
    assert config["annotations"] == {"a": "1", "b": "false"}
    assert config["deprecated"] is True
    assert chart["created"] == "2020-01-01"  # no timestamp resolution: a string, as helm reads it


def test_ordinary_chart_fields_give_the_same_helm_config_bytes():
    text = (
        "apiVersion: v2\nname: demo\nversion: 1.0.0\ndescription: Demo <chart> & co\n"
        "home: https://example.com/home\nsources:\n  - https://example.com/src\n"
        "keywords: [a, b]\nmaintainers:\n  - name: Ann\n    email: ann@example.com\n  - name: Bob\n"
        "kubeVersion: \">=1.19.0-0\"\nappVersion: \"2.1\"\ntype: application\n"
        "annotations:\n  example.com/team: platform\n"
        "dependencies:\n  - name: db\n    version: 1.x\n    repository: https://charts.example.com\n"
        "    condition: db.enabled\n    tags: [back]\n    import-values: [data, {child: a, parent: b}]\n"
    )
    chart = archive.inspect_tarball(chart_tgz("demo", text), "helm")
    assert helm.helm_config(chart) == (
        b'{"name":"demo","home":"https://example.com/home","sources":["https://example.com/src"],'
        b'"version":"1.0.0","description":"Demo \\u003cchart\\u003e \\u0026 co","keywords":["a","b"],'
        b'"maintainers":[{"name":"Ann","email":"ann@example.com"},{"name":"Bob"}],"apiVersion":"v2",'
        b'"appVersion":"2.1","annotations":{"example.com/team":"platform"},"kubeVersion":"\\u003e=1.19.0-0",'
        b'"dependencies":[{"name":"db","version":"1.x","repository":"https://charts.example.com",'
        b'"condition":"db.enabled","tags":["back"],"import-values":["data",{"child":"a","parent":"b"}]}],'
        b'"type":"application"}'
    )




def test_the_chart_schema_follows_helms_metadata_fields():
    schema = json.loads((Path(__file__).parent.parent / "schemas" / "chart.schema.json").read_text())
    assert list(schema["properties"]) == helm._HELM_FIELDS


def test_classify_by_artifact_type_then_config_then_layer():
    d = {"digest": "sha256:" + "0" * 64, "size": 1}
    assert layout.classify({"artifactType": "application/vnd.cnr.package.kpm.v1"}) == "kpm"
    assert layout.classify({"config": {"mediaType": layout.HELM_CONFIG, **d}, "layers": []}) == "helm"
    assert layout.classify({"config": {"mediaType": "x"}, "layers": [{"mediaType": layout.HELM_LAYER}]}) == "helm"
    assert layout.classify({"config": {"mediaType": layout.CNR_CONFIG},
                             "layers": [{"mediaType": layout.layer_media_type("dab")}]}) == "dab"
    image = {"config": {"mediaType": "application/vnd.oci.image.config.v1+json"},
             "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}]}
    assert layout.classify(image) is None
