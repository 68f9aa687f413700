"""Which files an `--input` glob names, the folder it reads from, and an image file's id there.

Matching is Beam's (`FileSystems.match`), so a glob means the same on local disk, GCS or S3:
`*`, `?` and `[...]` stay inside one folder and `**` crosses folders (Beam lists a local folder
with all its subfolders, as a GCS listing of a prefix holds every object under it), so
`photos/**` is every file under photos/ at any depth. `match` adds one thing a shell's globstar
and Python's glob do and Beam's translation of `**` does not: `**/` also matches no folder at
all, so `photos/**/*.jpg` includes photos/a.jpg, not only the .jpg files of its subfolders.
"""
from __future__ import annotations

import posixpath
import re

from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.filesystems import FileSystems

# Stands for a "**/" while Beam translates the rest of a glob; no glob holds it.
_ANY_FOLDERS = "\0"


def match(pattern: str) -> list[FileMetadata]:
    """The files `pattern` names, sorted by path.

    A folder placeholder of an object store (a zero-byte object named `photos/cats/`, as the
    GCS console makes) is not a file: `**` would otherwise match it.
    """
    if "**/" not in pattern:
        found = FileSystems.match([pattern])[0].metadata_list
    else:
        # One listing, of the glob with each "**/" widened to "**" (a superset of what it
        # names: a listing of millions of objects is slow), kept to what the glob names.
        names = _regex(pattern)
        widened = FileSystems.match([pattern.replace("**/", "**")])[0].metadata_list
        found = [m for m in widened if names.match(m.path)]
    return sorted((m for m in found if not m.path.endswith("/")), key=lambda m: m.path)


def _regex(pattern: str) -> re.Pattern:
    """Beam's regex for `pattern`, with each "**/" matching any number of folders, none too."""
    translated = FileSystems.get_filesystem(pattern).translate_pattern(
        pattern.replace("**/", _ANY_FOLDERS))
    return re.compile(translated.replace(re.escape(_ANY_FOLDERS), "(?:.*/)?"))


def glob_root(pattern: str) -> str:
    """The folder a glob reads from: its path up to the first wildcard's folder."""
    cuts = [pattern.find(c) for c in "*?[" if c in pattern]
    return posixpath.dirname(pattern[:min(cuts)] if cuts else pattern)


def image_id(path: str, root: str) -> bytes:
    """An image file's id: its path under `root`, the glob's folder (`glob_root`).

    `--input='/data/photos/**'` names /data/photos/cats/1.jpg `cats/1.jpg`, as does
    `--input='photos/**'` run from /data: ids, and the shards keyed by them, do not depend on
    where the folder is or where the job was started. (`posixpath.relpath` serves URLs too: it
    makes both sides absolute the same way.)
    """
    return posixpath.relpath(path, root or posixpath.curdir).encode()
