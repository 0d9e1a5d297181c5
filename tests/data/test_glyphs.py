"""hdml-tf data glyphs: CJK ideographs rendered in real typefaces.

Runs on the faces of four Debian packages (the README's test command installs them):
fonts-wqy-microhei and fonts-wqy-zenhei (each a .ttc holding a Hei face and its
monospace twin), fonts-arphic-gkai00mp and fonts-arphic-gbsn00lp (GB 2312 Kai and Song
faces). Four faces in four families: the default protocol holds two of them out.
"""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from hdml_tf import cli
from hdml_tf import data
from hdml_tf.data import glyphs

WQY = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
GKAI = "/usr/share/fonts/truetype/arphic-gkai00mp/gkai00mp.ttf"
GBSN = "/usr/share/fonts/truetype/arphic-gbsn00lp/gbsn00lp.ttf"
ZEN = "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"
FONTS = (WQY, GKAI, GBSN, ZEN)
PACKAGES = "fonts-wqy-microhei fonts-wqy-zenhei fonts-arphic-gkai00mp fonts-arphic-gbsn00lp"
TRAIN_FACES = ["gbsn00lp_0", "gkai00mp_0"]  # seed 3 holds out the two Hei families
TEST_FACES = ["wqy-microhei_0", "wqy-zenhei_0"]

pytestmark = pytest.mark.skipif(
    not all(map(os.path.isfile, FONTS)) or not shutil.which("fc-query"),
    reason=f"needs fontconfig and the fonts of: apt-get install {PACKAGES}")

CHARS = 24
ARGS = ["--size", "32", "--seed", "3", "--max-chars", str(CHARS), "--min-ideographs", "3000",
        *[a for f in FONTS for a in ("--fonts", f)]]


def _glyphs(out, *extra):
    return cli.run_command("data glyphs", ["--out", str(out), *ARGS, *extra])


def _snapshot(root):
    """Relative path -> bytes of every file under root."""
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("glyphs") / "out"
    assert _glyphs(out) == 0
    return str(out)


def test_layout_is_a_folder_dataset_with_the_characters_as_classes(folder):
    manifest = glyphs.read_manifest(folder)
    ids = sorted(f["id"] for f in manifest["faces"])
    assert ids == sorted(TRAIN_FACES + TEST_FACES)
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    assert "".join(classes) == manifest["characters"] and len(classes) == CHARS
    assert all(0x4E00 <= ord(c) <= 0x9FFF for c in classes)
    split = glyphs.folder.read_split_file(os.path.join(folder, glyphs.SPLIT_FILE))
    for c in classes:
        drawn_by = TRAIN_FACES if split[c] == "train" else TEST_FACES
        assert sorted(os.listdir(os.path.join(folder, c))) == [i + ".png" for i in drawn_by]
    image = Image.open(os.path.join(folder, classes[0], os.listdir(
        os.path.join(folder, classes[0]))[0]))
    pixels = np.asarray(image)
    assert image.mode == "L" and pixels.shape == (32, 32)
    assert pixels[0].min() == 255 and pixels[:, 0].min() == 255  # margin: white background
    assert pixels.min() < 64  # black ink


def test_loader_reads_the_split_file(folder):
    splits = {s: data.load_dataset("glyphs", s, root=folder) for s in ("train", "val", "test")}
    names = {s: set(d.class_names) for s, d in splits.items()}
    assert not (names["train"] & names["test"]) and not (names["train"] & names["val"])
    assert not (names["val"] & names["test"])
    assert sum(map(len, names.values())) == CHARS
    # 24 characters: test round(0.5 * 24) = 12, val round(0.05 * 24) = 1, train the rest
    assert [len(names[s]) for s in ("train", "val", "test")] == [11, 1, 12]
    assert splits["test"].name == "glyphs" and len(splits["test"]) == 12 * 2
    assert sorted(set(glyphs.image_faces(splits["test"]))) == TEST_FACES
    assert sorted(set(glyphs.image_faces(splits["train"]))) == TRAIN_FACES
    manifest = glyphs.read_manifest(folder)
    assert manifest["splits"] == {"train": 11, "val": 1, "test": 12}
    with pytest.raises(ValueError, match="val_fraction=0"):
        data.load_dataset("glyphs", "train", root=folder, val_fraction=0.2)


def test_manifest_names_packages_duplicates_and_the_command(folder):
    manifest = glyphs.read_manifest(folder)
    by_id = {f["id"]: f for f in manifest["faces"]}
    assert by_id["wqy-microhei_0"]["package"] == "fonts-wqy-microhei"
    assert by_id["gkai00mp_0"]["package"] == "fonts-arphic-gkai00mp"
    for face in manifest["faces"]:
        assert face["version"] and face["source"] and face["group"] == face["source"]
    twin = [d for d in manifest["dropped"] if d["family"] == "WenQuanYi Micro Hei Mono"]
    assert len(twin) == 1 and twin[0]["duplicate_of"] == "wqy-microhei_0"
    assert twin[0]["share_drawn_the_same"] >= 0.98 and twin[0]["index"] == 1
    assert manifest["held_out_groups"] == ["fonts-wqy-microhei", "fonts-wqy-zenhei"]
    assert {f["id"]: f["draws"] for f in manifest["faces"]} == {
        **{i: "train" for i in TRAIN_FACES}, **{i: "val+test" for i in TEST_FACES}}
    assert manifest["command"].startswith("hdml-tf data glyphs --out ")
    assert manifest["settings"]["size"] == 32 and manifest["settings"]["seed"] == 3
    assert manifest["images"] == 2 * CHARS  # each character in its side's two faces
    assert manifest["shared_in_charsets"] == 6763  # GB 2312's hanzi, in all four faces


def test_same_command_gives_the_same_bytes(folder, tmp_path):
    before = _snapshot(folder)
    assert _glyphs(folder) == 0  # the same command again, over its own output
    assert _snapshot(folder) == before
    other = tmp_path / "other"
    assert _glyphs(other) == 0  # only the command line in the manifest differs
    again = _snapshot(other)
    manifest = json.loads(again.pop("manifest.json"))
    first = json.loads(before["manifest.json"])
    assert {k: v for k, v in manifest.items() if k != "command"} == {
        k: v for k, v in first.items() if k != "command"}
    assert again == {k: v for k, v in before.items() if k != "manifest.json"}


def test_another_seed_draws_another_split(folder, tmp_path):
    assert _glyphs(tmp_path / "seed4", "--seed", "4") == 0
    split = {}
    for root in (folder, tmp_path / "seed4"):
        with open(os.path.join(root, glyphs.SPLIT_FILE), encoding="utf-8") as f:
            split[str(root)] = [l for l in f if not l.startswith("#")]
    assert split[str(folder)] != split[str(tmp_path / "seed4")]


def test_a_face_and_its_copy_collapse(tmp_path):
    copy = tmp_path / "copy-of-kai.ttf"
    shutil.copyfile(GKAI, copy)
    faces = glyphs.list_faces([GKAI, str(copy)])
    assert len(faces) == 2
    kept, _, dropped = glyphs.deduplicate(faces, glyphs.probe_characters(faces))
    assert len(kept) == 1 and dropped[0]["reason"] == "duplicate"
    assert dropped[0]["share"] == 1.0 and dropped[0]["duplicate_of"] is kept[0]


def test_different_designs_stay_apart():
    faces = glyphs.list_faces([GKAI, GBSN])
    kept, drawings, dropped = glyphs.deduplicate(faces, glyphs.probe_characters(faces))
    assert len(kept) == 2 and not dropped
    assert glyphs.same_share(*drawings.values()) < 0.05


def test_tofu_and_blank_renderings_are_not_glyphs():
    face = glyphs.list_faces([GKAI])[0]
    renderer = glyphs.FaceRenderer(face, 32, 2)
    assert 0x570B not in face.ideographs  # 國: traditional, not in GB 2312
    image, reason = renderer.ink("國")
    assert image is None and reason == ("notdef" if renderer.notdef else "blank")
    assert renderer.ink("\u3000") == (None, "blank")  # the ideographic space
    image, reason = renderer.ink("国")
    assert image is not None and reason is None


def test_two_characters_drawn_alike_are_both_rejected(monkeypatch):
    face = glyphs.list_faces([GKAI])[0]
    results = glyphs._FaceResults(face, 32, 2)
    real = results.renderer.ink
    monkeypatch.setattr(results.renderer, "ink", lambda c: real("国" if c == "困" else c))
    results.draw([ord("国"), ord("困"), ord("口")])
    assert results.results[ord("国")] == "drawn as 困"
    assert results.results[ord("困")] == "drawn as 国"
    assert isinstance(results.results[ord("口")], bytes)


def test_golden_charset_and_split():
    assert glyphs.parse_charset("20-7e 4dff-4e02 4e05 9ffe-a000") == {
        0x4E00, 0x4E01, 0x4E02, 0x4E05, 0x9FFE, 0x9FFF}
    split = glyphs.split_characters(range(10), (0.5, 0.2, 0.3), seed=0)
    assert sorted(split.values()).count("test") == 3
    assert sorted(split.values()).count("val") == 2
    assert split == glyphs.split_characters(range(10), (0.5, 0.2, 0.3), seed=0)
    order = glyphs.seeded_order(range(100), seed=5)
    assert sorted(order) == list(range(100)) and order != list(range(100))
    assert glyphs.seeded_order([c for c in range(100) if c != order[10]], 5) == [
        c for c in order if c != order[10]]  # one character lost moves no other
    with pytest.raises(ValueError, match="summing to 1"):
        glyphs.split_characters(range(10), (0.5, 0.2, 0.2), seed=0)


def test_command_errors_are_one_line(tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert _glyphs(busy) == 1
    assert "refusing to write" in capsys.readouterr().err
    assert cli.run_command("data glyphs", ["--out", str(tmp_path / "x"), "--fonts",
                                           str(tmp_path / "none.ttf")]) == 1
    assert "no font file" in capsys.readouterr().err


def test_smoke_compare_of_the_glyphs_preset(folder, tmp_path, capsys):
    """``hdml-tf compare --config glyphs_npair --smoke`` on a tiny glyph folder: both
    arms of two seeds train on its characters and score the unseen test characters."""
    workdir = tmp_path / "cmp"
    argv = ["--config", "glyphs_npair", "--seeds", "2", "--workdir", str(workdir),
            "--smoke", "--set", f"data.root={folder}", "--set", "data.batch_size=8"]
    assert cli.main(["compare", *argv]) == 0
    capsys.readouterr()
    markdown = (workdir / "compare.md").read_text()
    assert "map@r" in markdown.lower() and "Seeds: 0, 1" in markdown
    for seed in (0, 1):
        for arm in ("hdml", "baseline"):
            run = workdir / f"seed{seed}" / arm
            test = json.loads((run / "metrics.json").read_text())["test"]
            assert 0.0 <= test["map@r"] <= 1.0 and 0.0 <= test["r_precision"] <= 1.0
            config = json.loads((run / "config.json").read_text())
            assert config["config"]["data"]["name"] == "glyphs"
            assert config["config"]["model"]["hdml"] == (arm == "hdml")
            names = config["class_names"]
            assert len(names["train"]) == 11 and len(names["test"]) == 12
            assert not set(names["train"]) & set(names["test"])


def test_held_out_families_are_whole_and_never_one_big_design():
    # 41 faces as Debian 12's: one design with 14 weights, the rest in small families.
    sizes = {"noto": 14, "cwtex": 5, "klee": 4, "horai": 3, "cns": 2, "ipa": 2, "yoz": 2,
             **{f"one{i}": 1 for i in range(9)}}
    groups = {(g, i): g for g, n in sizes.items() for i in range(n)}
    for seed in range(20):
        held = glyphs.held_out_groups(groups, 1 / 3, seed)
        faces = sum(sizes[g] for g in held)
        assert "noto" not in held and 41 / 3 <= faces < 41 / 3 + 5
        assert held == sorted(held) == glyphs.held_out_groups(groups, 1 / 3, seed)
    assert glyphs.held_out_groups(groups, 0, 0) == []
    assert len({tuple(glyphs.held_out_groups(groups, 1 / 3, s)) for s in range(20)}) > 5
    with pytest.raises(ValueError, match="each side needs two"):
        glyphs.held_out_groups({("a", 0): "a", ("b", 0): "b", ("c", 0): "c"}, 1 / 3, 0)
    with pytest.raises(ValueError, match="held_out must be in"):
        glyphs.held_out_groups(groups, 1.0, 0)


def test_every_face_draws_every_character_without_the_held_out_protocol(tmp_path):
    out = tmp_path / "all"
    assert _glyphs(out, "--held-out", "0") == 0
    manifest = glyphs.read_manifest(str(out))
    assert manifest["held_out_groups"] == [] and manifest["images"] == 4 * CHARS
    assert {f["draws"] for f in manifest["faces"]} == {"all"}


def test_counts_keep_the_other_characters_for_pretraining(tmp_path, capsys):
    """``--counts TRAIN,VAL,TEST``: that many characters per split, the rest a
    "pretrain" split drawn by the chosen training faces only (here every one)."""
    out = tmp_path / "ft"
    assert _glyphs(out, "--counts", "4,2,6", "--pretrain-faces", "1") == 0
    manifest = glyphs.read_manifest(str(out))
    assert manifest["splits"] == {"pretrain": 12, "train": 4, "val": 2, "test": 6}
    assert manifest["settings"]["counts"] == [4, 2, 6]
    assert manifest["pretrain_groups"] == sorted(
        f["group"] for f in manifest["faces"] if f["id"] in TRAIN_FACES)
    assert {f["id"]: f["draws"] for f in manifest["faces"]} == {
        **{i: "pretrain+train" for i in TRAIN_FACES}, **{i: "val+test" for i in TEST_FACES}}
    splits = {s: data.load_dataset("glyphs", s, root=str(out))
              for s in ("pretrain", "train", "val", "test")}
    names = [set(d.class_names) for d in splits.values()]
    assert sum(map(len, names)) == CHARS and len(set().union(*names)) == CHARS
    assert sorted(set(glyphs.image_faces(splits["pretrain"]))) == TRAIN_FACES
    assert sorted(set(glyphs.image_faces(splits["test"]))) == TEST_FACES
    assert len(data.load_dataset("glyphs", "all", root=str(out)).class_names) == CHARS
    # The same seed cuts the same test characters whatever the counts of the others.
    assert set(glyphs.split_characters(range(100), (), 0, (10, 5, 20)).items()) >= {
        (c, "test") for c, s in glyphs.split_characters(range(100), (), 0, (30, 10, 20))
        .items() if s == "test"}
    capsys.readouterr()
    assert _glyphs(tmp_path / "bad", "--counts", "10,10,10") == 1
    assert "leaving characters to pretrain on" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # a usage error, as argparse exits
        _glyphs(tmp_path / "bad2", "--counts", "4,x,6")
    assert usage.value.code == 2 and "whole numbers" in capsys.readouterr().err


def test_pretrain_families_are_drawn_from_the_training_faces_only():
    sizes = {"noto": 14, "cwtex": 5, "klee": 4, "one1": 1, "one2": 1, "one3": 1}
    groups = {(g, i): g for g, n in sizes.items() for i in range(n)}
    chosen = glyphs.held_out_groups(groups, 0.5, 0, "pretrain_faces", min_rest=0)
    assert "noto" not in chosen and sum(sizes[g] for g in chosen) >= 2
    with pytest.raises(ValueError, match="pretrain_faces must be in"):
        glyphs.held_out_groups(groups, 1.5, 0, "pretrain_faces", min_rest=0)
