"""ns_data.globs: which files an --input glob names, and the ids of image files under it."""
from __future__ import annotations

import os
import re

import pytest
from apache_beam.io.filesystem import FileMetadata, MatchResult
from apache_beam.io.filesystems import FileSystems

from ns_data import globs

FILES = ["top.png", "a/x.png", "a/b/y.png", "a/b/z.jpg", "c/notes.txt"]


@pytest.fixture
def tree(tmp_path):
    for name in FILES:
        path = tmp_path / "photos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())
    return tmp_path


@pytest.mark.parametrize("glob, names", [
    ("photos/**", ["a/b/y.png", "a/b/z.jpg", "a/x.png", "c/notes.txt", "top.png"]),
    ("photos/**/*.png", ["a/b/y.png", "a/x.png", "top.png"]),  # top.png: "**/" may be no folder
    ("photos/**.png", ["a/b/y.png", "a/x.png", "top.png"]),
    ("photos/**/b/*", ["a/b/y.png", "a/b/z.jpg"]),
    ("photos/*", ["top.png"]),  # "*" stays in its folder
    ("photos/*/*.png", ["a/x.png"]),
    ("photos/a/b/y.png", ["a/b/y.png"]),
])
def test_double_star_crosses_folders_and_single_star_does_not(tree, monkeypatch, glob, names):
    want = [f"{tree}/photos/{name}" for name in names]
    assert [m.path for m in globs.match(f"{tree}/{glob}")] == want
    assert [m.size_in_bytes for m in globs.match(f"{tree}/{glob}")] == [
        len(name) for name in names]
    monkeypatch.chdir(tree)
    assert [m.path for m in globs.match(glob)] == [f"photos/{name}" for name in names]


def test_the_glob_root_is_the_folder_before_the_first_wildcard():
    assert globs.glob_root("/data/photos/**") == "/data/photos"
    assert globs.glob_root("/data/photos/**/*.jpg") == "/data/photos"
    assert globs.glob_root("/data/ph*/cats/*.jpg") == "/data"
    assert globs.glob_root("photos/*.jpg") == "photos"
    assert globs.glob_root("*.jpg") == ""
    assert globs.glob_root("/data/photos/a.jpg") == "/data/photos"
    assert globs.glob_root("gs://bucket/photos/**") == "gs://bucket/photos"


def test_an_image_id_is_its_path_under_the_glob_root(tree, monkeypatch):
    root = globs.glob_root(f"{tree}/photos/**")
    assert globs.image_id(f"{tree}/photos/a/b/y.png", root) == b"a/b/y.png"
    assert globs.image_id("gs://bucket/photos/cats/1.jpg", "gs://bucket/photos") == b"cats/1.jpg"
    for cwd in (tree, tree / "photos" / "a"):
        monkeypatch.chdir(cwd)
        relative = os.path.relpath(tree / "photos", cwd)
        assert globs.image_id(f"{relative}/a/b/y.png", relative) == b"a/b/y.png"
        assert globs.image_id(f"{tree}/photos/a/b/y.png", root) == b"a/b/y.png"
    monkeypatch.chdir(tree / "photos")
    assert globs.image_id("top.png", globs.glob_root("*.png")) == b"top.png"


def test_object_store_folder_placeholders_are_not_files(monkeypatch):
    listed = [FileMetadata(path, size) for path, size in (
        ("gs://b/photos/", 0), ("gs://b/photos/cats/", 0), ("gs://b/photos/cats/1.jpg", 9),
        ("gs://b/photos/2.jpg", 7))]
    seen = []

    def fake_match(patterns):
        seen.extend(patterns)
        regex = FileSystems.get_filesystem(patterns[0]).translate_pattern(patterns[0])
        return [MatchResult(patterns[0], [m for m in listed if re.match(regex, m.path)])]

    monkeypatch.setattr(FileSystems, "match", fake_match)
    assert [m.path for m in globs.match("gs://b/photos/**")] == [
        "gs://b/photos/2.jpg", "gs://b/photos/cats/1.jpg"]
    assert [m.path for m in globs.match("gs://b/photos/**/*.jpg")] == [
        "gs://b/photos/2.jpg", "gs://b/photos/cats/1.jpg"]
    assert seen == ["gs://b/photos/**", "gs://b/photos/***.jpg"]  # one listing per glob
