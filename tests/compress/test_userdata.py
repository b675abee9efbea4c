"""Data intake: .npz files and class folders are split as the built-in sets are, and every bad
input is one error naming the file, the field and the limit."""

import numpy as np
import pytest
import torch

from slimnfu.compress.userdata import load_data


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _good(n=140, c=3, side=8, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return rng.integers(0, 256, (n, c, side, side)).astype(np.uint8), y


def test_npz_is_split_11_1_2_after_one_seeded_shuffle(tmp_path):
    x, y = _good()
    ds = load_data(_npz(tmp_path / "d.npz", x=x, y=y))
    assert ds.input_shape == (3, 8, 8) and ds.classes == 4
    assert [len(s[1]) for s in (ds.train, ds.calib, ds.test)] == [110, 10, 20]
    assert ds.train[0].dtype == torch.float32 and float(ds.train[0].max()) <= 1.0
    # the splits are a permutation of the images: every image once, each with its label
    both = torch.cat([ds.train[0], ds.calib[0], ds.test[0]])
    labels = torch.cat([ds.train[1], ds.calib[1], ds.test[1]])
    key = torch.from_numpy(x.astype(np.float32) / 255.0).flatten(1)
    index = [int((key == row).all(1).nonzero()[0]) for row in both.flatten(1)]
    assert sorted(index) == list(range(140))
    assert labels.tolist() == [int(y[i]) for i in index]
    assert load_data(tmp_path / "d.npz").train[1].tolist() == ds.train[1].tolist()


def test_npz_with_a_test_set_and_float_images(tmp_path):
    x, y = _good()
    xf = x.astype(np.float32) / 7.0
    ds = load_data(_npz(tmp_path / "d.npz", x=xf, y=y, x_test=xf[:5], y_test=y[:5]))
    assert [len(s[1]) for s in (ds.train, ds.calib, ds.test)] == [128, 12, 5]
    assert float(ds.test[0].max()) == pytest.approx(float(xf[:5].max()))


@pytest.mark.parametrize("arrays, message", [
    ({"x": "GOOD"}, r"no array 'y' \(it has x; x must be the images"),
    ({"x": np.zeros((140, 8, 8), np.uint8), "y": "GOOD"},
     r"field x has shape \(140, 8, 8\); it must be 4-D \(N, C, H, W\) \(add the channel"),
    ({"x": np.zeros((140, 96, 96, 3), np.uint8), "y": "GOOD"},
     r"field x has shape \(140, 96, 96, 3\): C must be in 1..64 and H, W in 1..512 "
     r"\(is it \(N, H, W, C\)\?"),
    ({"x": np.zeros((140, 1, 8, 8), np.int32), "y": "GOOD"},
     r"field x is int32; images must be uint8 \(0..255\) or floating point"),
    ({"x": np.full((140, 1, 8, 8), np.nan, np.float32), "y": "GOOD"},
     r"field x has non-finite values"),
    ({"x": "GOOD", "y": np.zeros(139, np.int64)},
     r"field y has shape \(139,\); it must be \(140,\), one label per image"),
    ({"x": "GOOD", "y": np.full(140, 0.5)}, r"field y is float64; labels must be integers"),
    ({"x": "GOOD", "y": np.full(140, -1)}, r"field y has label -1; labels must be >= 0"),
    ({"x": "GOOD", "y": np.arange(140) % 4 * 2},
     r"field y has no image of class 1 \(labels run 0..6; every class needs"),
    ({"x": "GOOD", "y": "GOOD", "x_test": np.zeros((3, 3, 8, 8), np.uint8),
      "y_test": np.array([0, 1, 4])}, r"field y_test has label 4, out of the classes 0..3"),
    ({"x": "GOOD", "y": "GOOD", "x_test": np.zeros((3, 3, 9, 8), np.uint8),
      "y_test": np.zeros(3, np.int64)}, r"field x_test has images of shape \(3, 9, 8\)"),
    ({"x": "GOOD", "y": "GOOD", "x_test": np.zeros((3, 3, 8, 8), np.uint8)},
     r"x_test and y_test go together \(it has only x_test\)"),
])
def test_bad_npz_is_one_error_naming_the_field(tmp_path, arrays, message):
    x, y = _good()
    arrays = {k: {"x": x, "y": y}[k] if isinstance(v, str) else v for k, v in arrays.items()}
    path = _npz(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError, match=f"^{path}: " + message):
        load_data(path)


def test_too_few_images_and_bad_paths(tmp_path):
    x, y = _good(n=20)
    path = _npz(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(ValueError, match=r"20 images give the calib split 1; each split needs "
                                         r"at least 2 \(give 28 images or more\)"):
        load_data(path)
    with pytest.raises(FileNotFoundError, match=r"--data .*nothing.npz: no such file"):
        load_data(tmp_path / "nothing.npz")
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"a data file must be an .npz with arrays x and y, "
                                         r"not a .csv file"):
        load_data(tmp_path / "d.csv")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad.npz: not a readable .npz file"):
        load_data(tmp_path / "bad.npz")


def _folder(root, classes=("cat", "dog"), per=14, size=(6, 5), mode="L"):
    from PIL import Image

    rng = np.random.default_rng(1)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8), mode).save(
                root / name / f"{i}.png")
    return root


def test_class_folders_grey_and_colour(tmp_path):
    ds = load_data(_folder(tmp_path / "grey"))
    assert ds.input_shape == (1, 5, 6) and ds.classes == 2 and ds.class_names == ["cat", "dog"]
    assert sum(len(s[1]) for s in (ds.train, ds.calib, ds.test)) == 28
    ds = load_data(_folder(tmp_path / "rgb", mode="RGB"))
    assert ds.input_shape == (3, 5, 6)


def test_bad_class_folders(tmp_path):
    from PIL import Image

    root = _folder(tmp_path / "a")
    (root / "emu").mkdir()
    with pytest.raises(ValueError, match=r"a/emu: class 'emu' has no image \(.png"):
        load_data(root)
    root = _folder(tmp_path / "b")
    Image.new("L", (7, 5)).save(root / "dog" / "odd.png")
    with pytest.raises(ValueError, match=r"odd.png: image is 7x5 \(width x height\), but .*"
                                         r"cat/0.png is 6x5; every image must have one size"):
        load_data(root)
    root = _folder(tmp_path / "c")
    (root / "cat" / "broken.png").write_bytes(b"no png")
    with pytest.raises(ValueError, match=r"broken.png: not a readable image"):
        load_data(root)
    root = _folder(tmp_path / "d", classes=("only",))
    with pytest.raises(ValueError, match=r"needs one folder of images per class, at least 2; "
                                         r"it has 1"):
        load_data(root)
