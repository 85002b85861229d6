"""A package's releases as one identity last saw its tag list: parsed and sorted once per tag list, with
the releases each version query selected, so a pull's cost does not grow with the number of releases."""

from __future__ import annotations

import contextlib

from cachetools import LRUCache

from cnr_oci import mapping

# Version queries whose answers one tag list keeps (exact releases, ranges).
QUERIES = 16
# Releases held over every kept list (each list weighs its release count): bounds the memory.
MAX_RELEASES = 200_000


class ReleaseList:
    """The releases of one tag list, descending, and the answers to the last QUERIES queries."""

    def __init__(self, tags: list[str]) -> None:
        self.tags = tags
        self.ordered = mapping.sort_releases(r for t in tags if (r := mapping.tag_to_release(t)))
        self._present = frozenset(self.ordered)
        self._matches: LRUCache[str, list[str]] = LRUCache(QUERIES)

    def match(self, query: str | None) -> list[str]:
        """The releases a (checked) version query selects, best first; shared: not to be changed."""
        if not query or query == "default":
            return self.ordered
        if mapping.is_release(query):  # an exact release: a set lookup, whatever the release count
            return [query] if query in self._present else []
        found = self._matches.get(query)
        if found is None:
            found = mapping.match_releases(self.ordered, query, presorted=True)
            self._matches[query] = found
        return found


class ReleaseLists:
    """Per key (identity, repository), the ReleaseList of the tag list last seen; rebuilt only when the
    tag list changes (a list fetched again with the same tags keeps it)."""

    def __init__(self, max_releases: int = MAX_RELEASES) -> None:
        self._lists: LRUCache[tuple[str, str], ReleaseList] = LRUCache(
            max_releases, getsizeof=lambda r: len(r.ordered) + 1)

    def get(self, key: tuple[str, str], tags: list[str]) -> ReleaseList:
        found = self._lists.get(key)
        if found is None or (found.tags is not tags and found.tags != tags):
            found = ReleaseList(tags)
        if found.tags is not tags:
            found.tags = tags  # the same tags: compared by identity next time
        with contextlib.suppress(ValueError):  # larger than the whole bound: not kept
            self._lists[key] = found
        return found
