"""TolerantImageFolder on its own (one process): which image replaces a bad file, when the limit is passed, and the
sentence the run stops with (the stop across ranks: tests/test_bad_images_ranks.py)."""
import socket

import numpy as np
import pytest
from PIL import Image

from dimap.training import image_folder
from dimap.training.image_folder import TolerantImageFolder, TooManyBadImages, past_limit

COLOURS = {"a/1.png": (255, 0, 0), "a/2.png": (0, 255, 0), "b/3.png": (0, 0, 255)}
BAD = ["a/0.png", "b/4.png"]  # not images at all


@pytest.fixture
def root(tmp_path):
    for name, colour in COLOURS.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (4, 4), colour).save(tmp_path / name)
    for name in BAD:
        (tmp_path / name).write_text("not an image")
    return tmp_path


def colour(sample):
    return tuple(int(v) for v in np.asarray(sample)[0, 0])


def index(ds, name):
    return next(i for i, (p, _) in enumerate(ds.samples) if p.endswith(name))


def test_a_bad_file_is_replaced_by_the_next_readable_one_each_time_it_is_read(root, capfd):
    ds = TolerantImageFolder(root, transform=None, max_bad=5)
    for _ in range(2):  # the second epoch reads it again: the same replacement, counted and logged once
        sample, target = ds[index(ds, "a/0.png")]
        assert colour(sample) == COLOURS["a/1.png"] and target == 0
    sample, target = ds[index(ds, "b/4.png")]  # the last file: the next one wraps around to the first readable
    assert colour(sample) == COLOURS["a/1.png"] and target == 0
    assert ds.n_bad.value == 2
    out = capfd.readouterr().out
    assert out.count(f"skipping unreadable image {root / 'a/0.png'} (UnidentifiedImageError: ") == 1
    assert "; 1 so far (data.max_bad_images=5)" in out and "; 2 so far" in out


def test_at_the_limit_the_run_goes_on_past_it_the_sentence_names_count_limit_and_last_file(root, monkeypatch):
    ds = TolerantImageFolder(root, transform=None, max_bad=1)
    assert colour(ds[index(ds, "a/0.png")][0]) == COLOURS["a/1.png"]  # at the limit: still the next readable one
    assert past_limit(ds) is None and ds.sentence_past_limit() is None  # 1 bad file of 1 allowed
    sample, _ = ds[index(ds, "b/4.png")]  # the second: past the limit, a blank image, no search for the next one
    assert colour(sample) == (0, 0, 0)
    assert past_limit(ds) == (f"2 images under {root} could not be read, more than data.max_bad_images=1 (the last: "
                              f"{root / 'b/4.png'}): repair or remove them, or raise data.max_bad_images and rerun "
                              "to resume")
    assert ds.sentence_past_limit() == past_limit(ds)  # one process: no host and rank in the sentence
    monkeypatch.setattr(image_folder, "get_world_size", lambda: 2)
    monkeypatch.setattr(image_folder, "get_rank", lambda: 1)
    assert past_limit(ds).startswith(f"2 images under {root} on {socket.gethostname()} (rank 1) could not be read")


def test_past_the_limit_every_bad_file_is_a_blank_and_the_count_stays(root):
    ds = TolerantImageFolder(root, transform=None, max_bad=0)
    assert colour(ds[index(ds, "a/0.png")][0]) == (0, 0, 0)
    assert colour(ds[index(ds, "b/4.png")][0]) == (0, 0, 0)
    assert ds.n_bad.value == 1 and f"(the last: {root / 'a/0.png'})" in past_limit(ds)


def test_a_folder_without_a_readable_image_says_so(tmp_path):
    (tmp_path / "a").mkdir()
    for i in range(3):
        (tmp_path / "a" / f"{i}.png").write_text("not an image")
    ds = TolerantImageFolder(tmp_path, transform=None, max_bad=10)
    with pytest.raises(TooManyBadImages, match=f"^no image under {tmp_path} can be read: check the dataset copy$"):
        ds[0]


def test_the_sentence_is_kept_from_a_loader_workers_traceback():
    """torch re-raises a worker's exception with the worker's traceback as its message; only our sentence stays."""
    sentence = "no image under /data/x can be read: check the dataset copy"
    wrapped = ("Caught TooManyBadImages in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "image_folder.py", line 60, in __getitem__\n    raise TooManyBadImages(\n'
               f"dimap.training.image_folder.TooManyBadImages: {sentence}\n")
    assert str(TooManyBadImages(wrapped)) == sentence
    assert str(TooManyBadImages(sentence)) == sentence
