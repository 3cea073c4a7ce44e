"""Image ids (data/ids.py) and what a source folder holds (data/sources.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modnet_batch.data.ids import (
    MAX_NAME,
    UNSAFE_REASON,
    file_id,
    is_safe_name,
    path_id,
    path_stem,
    row_id,
    safe_id,
    stem_id,
)
from modnet_batch.data.sources import Item, Skip, list_images, pair_source
from modnet_batch.errors import ModnetBatchError


def test_what_an_id_is() -> None:
    assert is_safe_name("p001") and is_safe_name("a.b_c-1")
    for bad in ("", ".hidden", "..", "a b", "a/b", "é", "x" * (MAX_NAME + 1), None, 3):
        assert not is_safe_name(bad), bad


def test_escaping_is_deterministic_safe_and_keeps_safe_names() -> None:
    assert safe_id("ok-1") == "ok-1"
    escaped = safe_id("my photo")
    assert escaped.startswith("my_photo-") and len(escaped) == len("my_photo-") + 10
    assert escaped == safe_id("my photo") and escaped != safe_id("my_photo")
    assert is_safe_name(safe_id(".hidden")) and is_safe_name(safe_id("x" * 400))
    assert safe_id("").startswith("image-")


def test_each_rule_of_a_file_name_to_an_id() -> None:
    # ingest: the stem as it is, or nothing (the file is skipped with the reason)
    assert stem_id("p001.jpg") == "p001" and stem_id("a b.png") is None
    assert "rename the file" in UNSAFE_REASON
    # matte: the relative path, escaped when unsafe; a folder makes it escaped
    assert path_id("cat.png") == "cat" and path_id("noext") == "noext"
    nested = path_id("trip/day 1/IMG 001.jpg")
    assert nested.startswith("trip__day_1__IMG_001-") and is_safe_name(nested)
    assert path_id("a/b.png").startswith("a__b-")  # never the id of a file named a__b.png
    assert path_id("a/b.png") != path_id("a__b.png") == "a__b"
    assert path_id("a/b.png") != path_id("a/b.jpg")  # the hash is of the whole path
    # parquet read in place
    assert file_id("sub/part-0.parquet") == "sub__part-0"
    assert row_id("part.parquet", 7, 120) == "part-007"
    assert path_stem("C:\\photos\\x.jpg") == "x" and path_stem("") is None
    assert path_stem(None) is None


def _touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_pair_source_pairs_ppm_images_with_mattes_from_the_listing(tmp_path: Path) -> None:
    for name in ("image/b.jpg", "image/a.PNG", "image/c.jpg", "image/notes.txt"):
        _touch(tmp_path / name)
    for name in ("matte/a.png", "matte/c.png", "matte/C.jpg", "matte/z.png"):
        _touch(tmp_path / name)
    pairs = pair_source(tmp_path)
    assert pairs.layout == "ppm" and pairs.ignored == ["image/notes.txt"]
    assert pairs.items == [Item("a", "image/a.PNG", "matte/a.png"), Item("b", "image/b.jpg", None)]
    skipped = {s.name: s.reason for s in pairs.skipped}
    assert skipped["image/c.jpg"] == "its matte is ambiguous (see matte/)"
    assert skipped["matte/z.png"] == "no image with id 'z' in image/"
    assert skipped["matte/c.png"].startswith("duplicate image id")
    before = pairs.listing
    _touch(tmp_path / "image" / "b.jpg", b"changed")
    assert pair_source(tmp_path).listing != before  # the listing is the source's identity


def test_pair_source_of_a_flat_folder_and_its_refusals(tmp_path: Path) -> None:
    _touch(tmp_path / "flat" / "x.jpg")
    _touch(tmp_path / "flat" / "y z.jpg")
    pairs = pair_source(tmp_path / "flat")
    assert pairs.layout == "flat" and pairs.items == [Item("x", "x.jpg", None)]
    assert pairs.skipped == [Skip("y z.jpg", UNSAFE_REASON)]
    _touch(tmp_path / "bad" / "a b.jpg")
    with pytest.raises(ModnetBatchError, match=r"no image in .* can be ingested: a b.jpg"):
        pair_source(tmp_path / "bad")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModnetBatchError, match=r"no images in .*expected files with extensions"):
        pair_source(tmp_path / "empty")


def test_list_images_of_a_folder_and_of_a_list_file(tmp_path: Path) -> None:
    for name in ("in/a.jpg", "in/sub/b.PNG", "in/readme.md", "in/out/.modnet-batch/run/x.png"):
        _touch(tmp_path / name)
    root, images, ignored, skipped = list_images(tmp_path / "in")
    assert root == tmp_path / "in" and images == ["a.jpg", "sub/b.PNG"]
    assert ignored == ["readme.md"] and skipped == []
    listing = tmp_path / "in" / "list.txt"
    listing.write_text("# photos\na.jpg\nsub/b.PNG\na.jpg\n../outside.jpg\nmissing.jpg\n")
    root, images, ignored, skipped = list_images(listing)
    assert root == (tmp_path / "in").resolve() and images == ["a.jpg", "sub/b.PNG"]
    assert [s[0] for s in skipped] == ["../outside.jpg", "missing.jpg"]
    with pytest.raises(ModnetBatchError, match="does not exist"):
        list_images(tmp_path / "nothing")
