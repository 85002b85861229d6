"""The pure CNR → OCI mapping, without a network."""

import pytest

from cnr_oci import errors, mapping


@pytest.mark.parametrize("ns,name", [("a", "b"), ("my-org", "my.app"), ("a_b", "c__d"), ("x9", "a--b")])
def test_valid_names_map_to_the_repository_unchanged(ns, name):
    assert mapping.parse_package(ns, name).repository() == f"{ns}/{name}"
    assert mapping.parse_package(ns, name).repository("apps") == f"apps/{ns}/{name}"


@pytest.mark.parametrize(
    "ns,name",
    [("Abc", "x"), ("", "x"), ("a", ""), ("-a", "x"), ("a.", "x"), ("a", "_x"), ("..", "x"),
     ("a/b", "c"), ("a", "b/c"), ("é", "x"), ("a", "x" * 300), ("a", "b c")],
)
def test_invalid_names_are_refused_not_rewritten(ns, name):
    with pytest.raises(errors.InvalidUsage):
        mapping.parse_package(ns, name)


@pytest.mark.parametrize("r", ["1.0.0", "0.0.1", "1.0.0-beta.1", "1.0.0+build.5", "2.0.0-rc.1+x"])
def test_strict_semver_releases_are_accepted(r):
    assert mapping.check_release(r) == r


@pytest.mark.parametrize("r", ["1.0", "v1.0.0", "01.0.0", "1.01.0", "1.0.0-01", "abc", "", "1" * 300, 1])
def test_non_semver_releases_are_refused(r):
    with pytest.raises(errors.InvalidRelease):
        mapping.check_release(r)


def test_plus_becomes_underscore_in_tags_and_back():
    assert mapping.release_to_tag("1.0.0+build.1") == "1.0.0_build.1"
    assert mapping.tag_to_release("1.0.0_build.1") == "1.0.0+build.1"


@pytest.mark.parametrize("tag", ["latest", "channel-stable", "sha256-" + "a" * 64, "v1.0.0", "1.0"])
def test_tags_that_are_not_releases_are_ignored(tag):
    assert mapping.tag_to_release(tag) is None


@pytest.mark.parametrize(
    "given,short",
    [("helm", "helm"), ("kpm", "kpm"), ("docker-compose", "docker-compose"),
     ("application/vnd.cnr.package-manifest.helm.v1.json", "helm"),
     ("application/vnd.cnr.package.kpm.v1.tar+gzip", "kpm"),
     ("vnd.appr.package-manifest.helm.v0.json", "helm")],
)
def test_long_media_types_are_shortened(given, short):
    assert mapping.normalize_media_type(given) == short


@pytest.mark.parametrize("bad", ["../x", "", "x" * 200, "Helm", "a/b", 5])
def test_bad_media_types_are_refused(bad):
    with pytest.raises(errors.InvalidUsage):
        mapping.normalize_media_type(bad)


def test_dash_media_type_is_allowed_only_where_asked():
    assert mapping.normalize_media_type("-", allow_any=True) == "-"
    with pytest.raises(errors.InvalidUsage):
        mapping.normalize_media_type("-")


RELEASES = ["1.0.0", "1.1.0", "2.0.0-beta", "1.5.0-rc.1", "0.9.0"]


@pytest.mark.parametrize(
    "query,expected",
    [
        (None, ["2.0.0-beta", "1.5.0-rc.1", "1.1.0", "1.0.0", "0.9.0"]),
        ("default", ["2.0.0-beta", "1.5.0-rc.1", "1.1.0", "1.0.0", "0.9.0"]),
        (">=1.0,<2", ["1.1.0", "1.0.0"]),
        ("~1.0", ["1.0.0"]),
        ("^1.0.0", ["1.1.0", "1.0.0"]),
        ("*", ["1.1.0", "1.0.0", "0.9.0"]),
        ("1.5.0-rc.1", ["1.5.0-rc.1"]),
        (">=1.5.0-rc.0", ["2.0.0-beta", "1.5.0-rc.1"]),
        ("3.0.0", []),
    ],
)
def test_version_queries(query, expected):
    assert mapping.match_releases(RELEASES, query) == expected


def test_unparseable_query_is_invalid_release():
    with pytest.raises(errors.InvalidRelease):
        mapping.match_releases(RELEASES, "abc")


def test_releases_sort_semver_descending():
    assert mapping.sort_releases(["1.10.0", "1.9.0", "1.10.0-rc.1"]) == ["1.10.0", "1.10.0-rc.1", "1.9.0"]


def test_digest_check():
    assert mapping.check_digest("a" * 64) == "a" * 64
    for bad in ["a" * 63, "g" * 64, "A" * 64, ""]:
        with pytest.raises(errors.InvalidUsage):
            mapping.check_digest(bad)


@pytest.mark.parametrize("check, value", [
    (mapping.check_release, "1.0.0\n"), (mapping.check_channel, "stable\n"),
    (lambda v: mapping.parse_package(v, "app"), "ns\n"), (mapping.normalize_media_type, "kpm\n"),
])
def test_a_trailing_newline_is_not_a_valid_name(check, value):
    with pytest.raises(errors.CnrError):
        check(value)


def test_schema_patterns_end_at_the_end_of_the_string():
    from cnr_oci import schemas

    doc = {"name": "stable", "current": "1.0.0", "releases": ["1.0.0"]}
    assert schemas.first_error(schemas.CHANNEL, doc) is None
    assert schemas.first_error(schemas.CHANNEL, {**doc, "name": "stable\n"})[0] == "name"
