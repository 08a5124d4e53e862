"""Calibration data: sources, deterministic sampling, bad images, preprocessing checks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from coco import coco_file
from PIL import Image

from calib.data import (
    CalibrationSet,
    DataSource,
    LabelledSource,
    ModelInput,
    batches,
    draw,
    resolve_preprocess,
    resolve_source,
)
from convert.errors import ConvertError
from convert.preprocess import preprocess

PP = {"size": [32, 32], "resize": "letterbox", "pad_value": 114}


def write_image(path, size=(40, 30), mode="RGB", seed=0, fmt=None):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def test_folder_is_recursive_sorted_and_skips_non_images(tmp_path):
    write_image(tmp_path / "b.png")
    write_image(tmp_path / "sub" / "a.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    src = resolve_source(tmp_path)
    assert src.kind == "folder"
    assert [c.name for c in src.candidates] == ["b.png", "sub/a.jpg"]


def test_list_file_resolves_relative_paths_and_ignores_comments(tmp_path):
    write_image(tmp_path / "imgs" / "x.png")
    write_image(tmp_path / "imgs" / "y.png")
    lst = tmp_path / "calib.txt"
    lst.write_text("# calibration images\nimgs/x.png\n\n  imgs/y.png  # second\n")
    src = resolve_source(lst)
    assert src.kind == "list"
    assert [c.path for c in src.candidates] == [tmp_path / "imgs/x.png", tmp_path / "imgs/y.png"]


def test_yolo_directory_uses_the_split_folder_when_present(tmp_path):
    write_image(tmp_path / "images" / "train" / "t.jpg")
    write_image(tmp_path / "images" / "val" / "v.jpg")
    (tmp_path / "labels" / "train").mkdir(parents=True)
    assert [c.name for c in resolve_source(tmp_path, split="val").candidates] == ["images/val/v.jpg"]
    # Without a folder of that name, every image under images/ is a candidate (coco128 layout).
    assert len(resolve_source(tmp_path, split="train2017").candidates) == 2


def test_yolo_yaml_with_path_and_list_entries(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "images" / "a.jpg")
    write_image(root / "more" / "b.jpg")
    (root / "val.txt").write_text("more/b.jpg\n")
    yml = tmp_path / "data.yaml"
    yml.write_text("path: ds\ntrain: [images, val.txt]\nval: val.txt\nnames: {0: person}\n")
    assert sorted(c.path.name for c in resolve_source(yml).candidates) == ["a.jpg", "b.jpg"]
    assert [c.path.name for c in resolve_source(yml, split="val").candidates] == ["b.jpg"]
    with pytest.raises(ConvertError, match="no 'test' split"):
        resolve_source(yml, split="test")


def test_coco_annotation_finds_images_next_to_it(tmp_path):
    write_image(tmp_path / "val2017" / "1.jpg")
    write_image(tmp_path / "val2017" / "2.jpg")
    ann = tmp_path / "annotations" / "instances_val2017.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}]}))
    src = resolve_source(ann)
    assert src.kind == "coco" and len(src.candidates) == 2
    ann2 = tmp_path / "elsewhere.json"
    ann2.write_text(json.dumps({"images": [{"id": 1, "file_name": "1.jpg"}]}))
    with pytest.raises(ConvertError, match="cannot find its images"):
        resolve_source(ann2)
    assert len(resolve_source(ann2, images=tmp_path / "val2017").candidates) == 1


@pytest.mark.parametrize("setup, message", [
    (lambda p: p.mkdir(), "holds no image"),
    (lambda p: (p.mkdir(), (p / "readme.md").write_text("x")), "holds no image"),
    (lambda p: p.with_suffix(".txt").write_text("\n# nothing\n"), "holds no image"),
    (lambda p: None, "not found"),
])
def test_empty_or_missing_sources_are_clear_errors(tmp_path, setup, message):
    target = tmp_path / "data"
    setup(target)
    path = target.with_suffix(".txt") if target.with_suffix(".txt").exists() else target
    with pytest.raises(ConvertError, match=message):
        resolve_source(path)


@pytest.mark.parametrize("kind", ["list", "yolo", "coco"])
def test_a_device_or_fifo_as_data_description_is_refused_without_reading(tmp_path, kind):
    import os

    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)  # reading it would hang
    for path in (Path("/dev/zero"), fifo):  # /dev/zero would be read without end
        with pytest.raises(ConvertError, match="is not a regular file"):
            resolve_source(path, kind=kind)


def test_sampling_is_deterministic_and_seeded(tmp_path):
    for i in range(12):
        write_image(tmp_path / f"{i:02d}.png", seed=i)
    src = resolve_source(tmp_path)
    names = lambda seed: [s.name for s in CalibrationSet(src, 5, seed).samples()]
    assert names(0) == names(0)
    assert names(0) != names(1)
    assert len(set(names(0))) == 5
    # Asking for more than there is uses everything once.
    assert sorted(s.name for s in CalibrationSet(src, 50).samples()) == [c.name for c in src.candidates]


def test_bad_images_are_skipped_counted_and_replaced(tmp_path):
    for i in range(4):
        write_image(tmp_path / f"good{i}.png", seed=i)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    cset = CalibrationSet(resolve_source(tmp_path), num=4, seed=0)
    got = [s.name for s in cset.samples()]
    assert len(got) == 4 and all(n.startswith("good") for n in got)
    rec = cset.record()
    assert rec["num_samples"] == 4
    assert {s["name"] for s in rec["skipped"]} <= {"broken.jpg", "empty.png"}
    assert all(s["reason"] for s in rec["skipped"])


def test_bad_image_is_an_error_when_configured(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"garbage")
    write_image(tmp_path / "ok.png")
    cset = CalibrationSet(resolve_source(tmp_path), num=2, seed=0, on_bad_image="error")
    with pytest.raises(ConvertError, match="broken.jpg.*cannot be read"):
        list(cset.samples())


def test_no_readable_image_is_an_error_even_when_skipping(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"garbage")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(ConvertError, match="none of the 2 candidate images could be read"):
        list(CalibrationSet(resolve_source(tmp_path), num=2).samples())


def test_list_entry_of_a_missing_file_is_a_bad_image(tmp_path):
    write_image(tmp_path / "ok.png")
    lst = tmp_path / "l.txt"
    lst.write_text("ok.png\nmissing.png\n")
    cset = CalibrationSet(resolve_source(lst), num=2)
    assert [s.name for s in cset.samples()] == ["ok.png"]
    assert [s["name"] for s in cset.record()["skipped"]] == ["missing.png"]


def test_odd_image_modes_load_as_rgb_and_exif_rotation_is_applied(tmp_path):
    write_image(tmp_path / "gray.png", mode="L")
    write_image(tmp_path / "cmyk.jpg", mode="CMYK")
    write_image(tmp_path / "rgba.png", mode="RGBA")
    write_image(tmp_path / "palette.png", mode="P")
    arr16 = (np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50)
    Image.fromarray(arr16).save(tmp_path / "deep16.png")
    # A 40x30 image stored sideways with EXIF orientation 6 (rotate 90° clockwise to display).
    img = Image.fromarray(np.zeros((40, 30, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "rotated.jpg", exif=exif)
    cset = CalibrationSet(resolve_source(tmp_path), num=10, on_bad_image="error")
    samples = {s.name: s.image for s in cset.samples()}
    assert len(samples) == 6 and not cset.skipped
    for name, im in samples.items():
        assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3, name
    assert samples["rotated.jpg"].shape[:2] == (30, 40)
    assert samples["deep16.png"].max() > 200  # scaled from 16 bits, not clipped to 255 raw counts


def test_digest_follows_content_not_location(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_image(a / "x.png", seed=1)
    write_image(b / "renamed.png", seed=1)

    def digest(folder):
        cset = CalibrationSet(resolve_source(folder), num=1)
        list(cset.samples())
        return cset.digest()

    assert digest(a) == digest(b)
    write_image(b / "renamed.png", seed=2)
    assert digest(a) != digest(b)


def test_builtin_set_loads_offline():
    pytest.importorskip("skimage")
    src = resolve_source(None)
    assert src.kind == "builtin" and len(src.candidates) >= 8
    cset = CalibrationSet(src, num=3)
    imgs = [s.image for s in cset.samples()]
    assert len(imgs) == 3 and all(i.ndim == 3 and i.shape[2] == 3 for i in imgs)
    with pytest.raises(ConvertError, match="takes no data path"):
        resolve_source(".", kind="builtin")


def test_batches_match_inference_preprocessing_and_split_on_shape(tmp_path):
    for i, size in enumerate([(40, 30), (30, 40), (64, 64)]):
        write_image(tmp_path / f"{i}.png", size=size, seed=i)
    cset = CalibrationSet(resolve_source(tmp_path), num=3, seed=0)
    out = list(batches(cset.samples(), PP, batch_size=2))
    assert [b.shape for b in out] == [(2, 3, 32, 32), (1, 3, 32, 32)]
    again = CalibrationSet(resolve_source(tmp_path), num=3, seed=0)
    first = next(again.samples())
    np.testing.assert_array_equal(out[0][0], preprocess(first.image, PP)[0][0])
    # minimal_pad letterboxing gives differently shaped inputs: batches are cut where the shape changes.
    mp = {**PP, "minimal_pad": True, "stride": 8}
    shapes = [b.shape for b in batches(CalibrationSet(resolve_source(tmp_path), 3).samples(), mp, 3)]
    assert sum(s[0] for s in shapes) == 3 and len({s[2:] for s in shapes}) == len(shapes)


def test_preprocess_checks_against_the_model_input():
    inp = ModelInput("images", (None, 3, 32, 32))
    assert resolve_preprocess(None, None, inp)["size"] == [32, 32]  # taken from a static input
    with pytest.raises(ConvertError, match="has 1 channels"):
        resolve_preprocess(PP, None, ModelInput("x", (1, 1, 32, 32)))
    with pytest.raises(ConvertError, match="is 32x32 but the preprocessing makes 64x64"):
        resolve_preprocess({**PP, "size": [64, 64]}, None, inp)
    with pytest.raises(ConvertError, match="fixed batch of 1"):
        resolve_preprocess(PP, None, ModelInput("x", (1, 3, 32, 32)), batch_size=4)
    nhwc = resolve_preprocess({**PP, "layout": "NHWC"}, None, ModelInput("x", (None, 32, 32, 3)))
    assert nhwc["layout"] == "NHWC"
    assert resolve_preprocess(PP, {"channel_order": "BGR"}, inp)["channel_order"] == "BGR"


def test_truncated_jpeg_is_a_bad_image(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    write_image(tmp_path / "ok.png")
    cset = CalibrationSet(resolve_source(tmp_path), num=2)
    assert [s.name for s in cset.samples()] == ["ok.png"]
    assert cset.skipped[0][0] == "cut.jpg"


def test_list_entries_naming_a_fifo_or_a_device_are_refused_without_reading_them(tmp_path):
    import os

    write_image(tmp_path / "ok.png")
    os.mkfifo(tmp_path / "pipe.jpg")  # reading it would block forever
    lst = tmp_path / "l.txt"
    lst.write_text(f"ok.png\npipe.jpg\n{os.devnull}\n/dev/zero\n")  # /dev/zero would never end
    cset = CalibrationSet(resolve_source(lst), num=4, on_bad_image="skip")
    assert [s.name for s in cset.samples()] == ["ok.png"]
    reasons = {s["name"]: s["reason"] for s in cset.record()["skipped"]}
    assert len(reasons) == 3 and all("not a regular file" in r for r in reasons.values()), reasons


def test_a_folder_is_listed_afresh_and_draws_are_seeded(tmp_path):
    for i in range(5):
        write_image(tmp_path / "imgs" / f"{i}.jpg", seed=i)
    src = DataSource(data=tmp_path / "imgs", num=3, seed=1)
    drawn = [c.name for c in src.drawn()]
    assert len(drawn) == 3 and drawn == sorted(drawn) and drawn == [c.name for c in src.drawn()]
    assert sorted(c.name for c in draw(src.resolve().candidates, 3, 1)) == drawn
    assert src.named_files(src.drawn()) == []  # a folder is keyed whole as a config path
    write_image(tmp_path / "imgs" / "sub" / "5.jpg")
    assert len(src.resolve().candidates) == 6


def test_images_belongs_to_a_coco_source_only(tmp_path):
    write_image(tmp_path / "imgs" / "a.jpg")
    with pytest.raises(ConvertError, match="image folder of a COCO annotation file.*data is null"):
        DataSource(images=tmp_path / "imgs").resolve()
    with pytest.raises(ConvertError, match="is a folder source"):
        DataSource(data=tmp_path / "imgs", images=tmp_path / "imgs").resolve()


def test_labelled_source_reads_yolo_labels_by_convention_or_from_a_labels_folder(tmp_path):
    write_image(tmp_path / "ds" / "images" / "a.jpg")
    write_image(tmp_path / "ds" / "images" / "b.jpg", seed=1)
    (tmp_path / "ds" / "labels").mkdir()
    (tmp_path / "ds" / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    conv = LabelledSource(data=tmp_path / "ds")
    paths = [c.path for c in conv.drawn()]
    assert conv.label_files(paths) == [tmp_path / "ds" / "labels" / "a.txt", tmp_path / "ds" / "labels" / "b.txt"]
    assert len(conv.dataset(paths, ["square"], 0).gt["annotations"]) == 1
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.2 0.2 0.1 0.1\n")
    given = LabelledSource(data=tmp_path / "ds" / "images", labels=tmp_path / "elsewhere")
    assert given.label_files(paths) == []  # the labels folder is itself a keyed config path
    assert len(given.dataset([c.path for c in given.drawn()], ["square"], 0).gt["annotations"]) == 2
    # unset labels stay out of the dump: keys of stages written before `labels` existed are unchanged
    assert "labels" not in conv.model_dump() and given.model_dump()["labels"] == tmp_path / "elsewhere"


def test_labelled_coco_source_keeps_the_files_order_and_checks_keypoints(tmp_path):
    ann = coco_file(tmp_path, n=4)
    src = LabelledSource(data=ann, images=tmp_path / "imgs")
    paths = [tmp_path / "imgs" / "3.jpg", tmp_path / "imgs" / "1.jpg"]
    ds = src.dataset(paths, ["square"], 0)
    assert [im.path for im in ds.images] == paths and len(ds.gt["annotations"]) == 2
    with pytest.raises(ConvertError, match="predicts 17 keypoints"):
        src.dataset(paths, ["square"], 17)


def test_prefetch_yields_in_order_raises_where_the_source_fails_and_stops_when_dropped():
    import threading
    import time

    from calib.data import prefetch

    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise ConvertError("image 3: unreadable")

    got = []
    with pytest.raises(ConvertError, match="unreadable"):
        for x in prefetch(failing()):
            got.append(x)
    assert got == [1, 2]  # everything before the failure arrives first

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = prefetch(endless(), depth=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # a consumer that stops early (islice, a break)
    time.sleep(0.3)
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n <= 3 + 2 + 1  # at most depth ahead, then the thread is gone
    assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())
