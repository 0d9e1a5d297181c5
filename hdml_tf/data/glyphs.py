"""CJK ideographs drawn in the installed typefaces: a many-class, zero-shot image folder.

Class = character, instance = typeface: a character's images are its drawings by the
kept faces, one per face (look-alike characters differ by one stroke), and the test
characters are never seen in training. Nothing is downloaded: the faces are the
system's (Debian's font packages).

`build` (``hdml-tf data glyphs``) writes the folder in five steps:

1. the installed faces with enough ideographs (`select_faces`);
2. near-duplicate faces dropped, compared on fixed probe characters (`deduplicate`);
3. the characters every kept face really draws (`draw_shared`);
4. each drawn as a grayscale PNG, black ink on white, at one scale per face
   (`FaceRenderer`);
5. ``<out>/<character>/<face id>.png`` (the layout `hdml_tf.data.folder` reads),
   ``<out>/splits.txt`` and ``<out>/manifest.json`` (the settings, the software
   versions, the faces with their Debian packages, the dropped ones and why, the
   command). Nothing holds a time and every list is sorted: the same command on the
   same packages writes byte-identical files.

By default (``held_out``) whole typeface families (`held_out_groups`) draw only the val
and test characters and the other faces only the train ones: a test query is an unseen
character in an unseen typeface. Loading: ``data.load_dataset("glyphs", split, root)``
(`load`; the split file is found in the root). The packages to install, the folder they
give and what was measured on it: docs/results.md, "Glyphs".
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
from typing import Iterable, Sequence

import numpy as np

from hdml_tf.data import base, folder

NAME = "glyphs"
SPLIT_FILE = "splits.txt"
SPLITS = ("pretrain", "train", "val", "test")
MANIFEST = "manifest.json"
FORMAT = 1  # bump when the files written change meaning

IDEOGRAPHS = (0x4E00, 0x9FFF)  # CJK Unified Ideographs (the URO), inclusive
UNASSIGNED = 0x0378  # unassigned in Unicode: a face draws its .notdef for it
OVERSAMPLE = 4  # glyphs are rasterised at 4x the output size, then reduced
MIN_INK_PIXELS = 16  # at the oversampled size; 丶 has ~200
DEDUP_SIZE = 32
SAME_DRAWING = 0.02
# Shares of the probe drawn the same, over all pairs of Debian 12's CJK faces with
# >= 7,000 ideographs: renamed copies and proportional/monospace twins 1.00, derived
# designs 0.48-0.75, regional variants (Noto CJK SC/TC/JP/KR/HK) 0.29-0.59, Klee One
# SemiBold and LXGW WenKai 0.254; no pair between 0.14 and 0.25, the weights of one
# design mostly ~0.01. A quarter drops copies, derived designs and regional variants and
# keeps the weights of a design as separate faces.
DUPLICATE_SHARE = 0.25
# Two source packages whose faces draw this share of the probe the same are one family
# (`family_groups`: Noto CJK's Sans and Serif, IPA's Gothic and Mincho), held out whole.
RELATED_SHARE = 0.10
MAX_REJECTED = 0.01
# 64 characters every CJK face of Debian 12 with >= 3,600 ideographs draws (sampled from
# their intersection): the sample a face's scale is measured on.
EXTENT_CHARS = ("三丑中乞五亭仕任候偏儡剪吏吟娘嫉宏尿屑恰患惰意成拐斐昔更服柚桑梓椒槌洋港滋滑"
                "烙爵牲狸玲界疋盛睡石竣筐耕肢育臼芍苗若莞表跳郡酉雹魂")
EXTENT_PERCENTILE = 90
# 256 further characters of that intersection (seed 1): the near-duplicate probe. Fixed,
# so that whether two faces are duplicates does not depend on what else is installed.
DEDUP_CHARS = ("丘丙予亥亦介仔仰伏伺余使例侯俎俯俺倡倬倭偃催傲凋凝刃分切刻加劾勇北匿午卒南卦反口"
               "向吠呈呼唾善器囚回因埋基塑外夜夫失夷奈妓妙姑姓委姜姻媚嫁嫌嫡存守家寮寸履岬岸崇左"
               "帽幕幻序店庵彬役往徒忌忠忽急恕恭悉悼憎憬才打扮抗抱押拒挺捌掠控措揆提握撒支改斗料"
               "斤新旗昌昏映晃晦曙望杜格桃梅梯棉棹樵次止此毒民汀求沌沫泡浙浮渚渡湖溜溢灌灰然煎爽"
               "牒牝牟特狼猜玉玖玩琢番疏疲痛痰癌盆督矢知砧碑碧示祠票秘租稗稚立竹竺竿笑管箭糊紫缶"
               "群翼者耐耗聊肌肺腑臣自舛舟色芯苛苦英茄茶草菰萄萱董葵蔽薪螺行裂裸解象赤走距踵辱迦"
               "逐途逗速遭遮那郁酒醍醒隆雪魅魔黛")
FONT_EXTENSIONS = (".ttf", ".ttc", ".otf", ".otc")
_FC_FORMAT = "%{file}\t%{index}\t%{family[0]}\t%{style[0]}\t%{charset}\n"


@dataclasses.dataclass(frozen=True)
class Face:
    """One face of a font file, as fontconfig describes it.

    Attributes:
        file: real path of the font file (symbolic links resolved).
        index: face index inside the file (a .ttc collection holds several).
        family, style: fontconfig's first family and style names.
        ideographs: code points of `IDEOGRAPHS` in the face's fontconfig charset.
    """

    file: str
    index: int
    family: str
    style: str
    ideographs: frozenset = dataclasses.field(repr=False, compare=False)

    @property
    def key(self) -> tuple:
        return (self.file, self.index)

    @property
    def label(self) -> str:
        return f"{self.family} {self.style} ({os.path.basename(self.file)}#{self.index})"


def parse_charset(text: str, low: int = IDEOGRAPHS[0], high: int = IDEOGRAPHS[1]):
    """The code points in [low, high] of a fontconfig charset string ("20-7e a0 ...")."""
    points = set()
    for item in text.split():
        first, _, last = item.partition("-")
        start, stop = max(int(first, 16), low), min(int(last or first, 16), high)
        if start <= stop:
            points.update(range(start, stop + 1))
    return frozenset(points)


def _font_files(paths: Iterable[str]) -> list:
    """Font files named by ``paths`` (files, or directories searched recursively)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                files += [os.path.join(dirpath, f) for f in sorted(filenames)
                          if f.lower().endswith(FONT_EXTENSIONS)]
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise base.DatasetNotFoundError(f"glyphs: no font file or directory {path!r}")
    return files


def list_faces(paths: Sequence[str] | None = None) -> list:
    """Faces fontconfig knows: all installed ones (``fc-list``), or those of ``paths``
    (``fc-query``; font files or directories). Sorted by (file, index), one per real
    (file, index); variable-font named instances skipped."""
    if paths is None:
        commands = [["fc-list", "--format", _FC_FORMAT]]
    else:
        commands = [["fc-query", "--format", _FC_FORMAT, f] for f in _font_files(paths)]
    faces = {}
    for command in commands:
        try:
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        except FileNotFoundError:
            raise base.DatasetNotFoundError(
                "glyphs: fontconfig's fc-list/fc-query not found (apt-get install "
                "fontconfig)") from None
        for line in out.splitlines():
            file, index, family, style, charset = (line.split("\t") + [""] * 5)[:5]
            if not index.isdigit() or int(index) >> 16:  # named instance of a variable font
                continue
            # The file itself: Debian's alternatives are links to other packages' files
            # (dpkg names the owner of the real path; two links are one face).
            face = Face(os.path.realpath(file), int(index), family, style,
                        parse_charset(charset))
            faces.setdefault(face.key, face)
    return [faces[k] for k in sorted(faces)]


def debian_packages(files: Iterable[str]) -> dict:
    """File -> {"package", "version", "source"} from dpkg (files no package owns, or no
    dpkg, are left out)."""
    files = sorted(set(files))
    try:
        owners = subprocess.run(["dpkg", "-S", *files], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return {}
    package_of = {}
    for line in owners.splitlines():
        package, sep, path = line.partition(": ")
        if sep and path in files and "," not in package:
            package_of[path] = package.split(":")[0]  # drop an architecture suffix
    if not package_of:
        return {}
    query = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${source:Package}\n",
         *sorted(set(package_of.values()))], capture_output=True, text=True).stdout
    info = {}
    for line in query.splitlines():
        package, version, source = line.split("\t")
        info[package] = {"package": package, "version": version, "source": source}
    return {f: info[p] for f, p in package_of.items() if p in info}


# ------------------------------------------------------------------ rendering


class FaceRenderer:
    """Draws characters of one face: ``ink`` at the oversampled size, ``glyph`` at the
    output size.

    Glyphs are rasterised by FreeType (Pillow's basic layout: no shaping library) at
    `OVERSAMPLE` times the output size. The face is scaled once: the `EXTENT_PERCENTILE`
    percentile of the ink-box side over `EXTENT_CHARS` fills ``size - 2 * margin``, so
    its small and large characters keep their relative size (口 and 囗); a glyph larger
    than that box is shrunk to fit, and every glyph's ink box is centred.

    Args:
        face: the face.
        size: output side in pixels.
        margin: white pixels kept on each side of the scaled face box.
    """

    def __init__(self, face: Face, size: int, margin: int):
        from PIL import ImageFont

        if size - 2 * margin < 4:
            raise ValueError(f"glyphs: size {size} leaves no room inside margin {margin}")
        self.face, self.size, self.margin = face, size, margin
        self.font = ImageFont.truetype(face.file, size * OVERSAMPLE, index=face.index,
                                       layout_engine=ImageFont.Layout.BASIC)
        self.notdef = self._raw_ink(chr(UNASSIGNED))
        sides = [max(i.size) for i in map(self._raw_ink, EXTENT_CHARS) if i is not None]
        self.extent = (float(np.percentile(sides, EXTENT_PERCENTILE)) if sides
                       else float(size * OVERSAMPLE))

    def _raw_ink(self, char):
        """The drawing cropped to its ink ('L', 255 = ink), None if blank or unreadable."""
        from PIL import Image, ImageDraw

        try:
            left, top, right, bottom = self.font.getbbox(char)
            if right <= left or bottom <= top:
                return None
            pad = 2  # antialiasing may reach past the outline's box
            canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
            ImageDraw.Draw(canvas).text((pad - left, pad - top), char, font=self.font,
                                        fill=255)
        except OSError:  # FreeType errors, e.g. broken hinting bytecode
            return None
        box = canvas.getbbox()
        return canvas.crop(box) if box else None

    def ink(self, char: str):
        """(ink image, reason): the oversampled drawing, or None and why it is not a
        glyph ("blank", "notdef")."""
        image = self._raw_ink(char)
        if image is None or int(np.count_nonzero(np.asarray(image) > 127)) < MIN_INK_PIXELS:
            return None, "blank"
        if self.notdef is not None and same_image(image, self.notdef):
            return None, "notdef"
        return image, None

    def glyph(self, image, fit: bool = False) -> np.ndarray:
        """uint8 (size, size), white background, of an ``ink`` image: at the face's
        scale (``fit``: scaled so the ink box itself fills the box), ink box centred."""
        from PIL import Image

        w, h = image.size
        room = self.size - 2 * self.margin
        scale = room / max(w, h) if fit else min(room / self.extent, room / max(w, h))
        side = self.size / scale  # oversampled pixels the output covers
        frame = int(np.ceil(max(side, w, h))) + 2
        canvas = Image.new("L", (frame, frame), 0)
        x0, y0 = (frame - w) // 2, (frame - h) // 2
        canvas.paste(image, (x0, y0))
        cx, cy, half = x0 + w / 2, y0 + h / 2, side / 2
        # A box filter (each output pixel the mean of its area): ink never bleeds into
        # the margin, as Lanczos' ringing would.
        out = canvas.resize((self.size, self.size), Image.Resampling.BOX,
                            box=(cx - half, cy - half, cx + half, cy + half))
        return 255 - np.asarray(out)  # black ink on white, as printed and read


def same_image(a, b) -> bool:
    """Two PIL images with the same size and pixels."""
    return a.size == b.size and a.tobytes() == b.tobytes()


def png_bytes(pixels: np.ndarray) -> bytes:
    """A grayscale PNG of uint8 (h, w) pixels, without time or text chunks."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


# ---------------------------------------------------------------- deduplication


def probe_characters(faces: Sequence[Face]) -> list:
    """The `DEDUP_CHARS` in every face's charset, as sorted code points."""
    shared = frozenset.intersection(*[f.ideographs for f in faces])
    return sorted(ord(c) for c in DEDUP_CHARS if ord(c) in shared)


def probe_drawings(face: Face, probe: Sequence[int]):
    """uint8 (len(probe), 32*32) bitmaps of the probe characters, each fitted to its ink
    box (identical outlines give identical bitmaps whatever the face's metrics), and a
    bool mask of those the face really draws."""
    renderer = FaceRenderer(face, DEDUP_SIZE, 1)
    bitmaps = np.full((len(probe), DEDUP_SIZE * DEDUP_SIZE), 255, np.uint8)
    drawn = np.zeros(len(probe), bool)
    for i, code in enumerate(probe):
        image, _ = renderer.ink(chr(code))
        if image is not None:
            bitmaps[i] = renderer.glyph(image, fit=True).ravel()
            drawn[i] = True
    return bitmaps, drawn


def same_share(a, b) -> float:
    """Share of the probe characters two faces both draw that they draw the same
    (mean absolute difference below `SAME_DRAWING`); ``a``, ``b``: `probe_drawings`."""
    both = a[1] & b[1]
    if not both.any():
        return 0.0
    diff = np.abs(a[0][both].astype(np.int16) - b[0][both]).mean(axis=1) / 255.0
    return float(np.mean(diff < SAME_DRAWING))


def preference_order(faces: Sequence[Face]) -> list:
    """The order faces are kept in: most ideographs first, then by name and file."""
    return sorted(faces, key=lambda f: (-len(f.ideographs), f.family, f.style, f.file,
                                        f.index))


def deduplicate(faces: Sequence[Face], probe: Sequence[int]):
    """Greedy near-duplicate removal: faces in `preference_order`, each dropped when it
    draws fewer than half of the ``probe`` characters, or when it draws at least
    `DUPLICATE_SHARE` of them the same as a face already kept (`same_share`), which the
    manifest names as the one it duplicates.

    Returns:
        (kept faces in `preference_order`, their probe drawings by face key, dropped:
        list of dicts with "face", "reason" and, for duplicates, "duplicate_of" (the
        kept Face) and "share").
    """
    kept, drawings, dropped = [], {}, []
    for face in preference_order(faces):
        drawing = probe_drawings(face, probe)
        if drawing[1].mean() < 0.5:
            dropped.append({"face": face, "reason": f"draws only {int(drawing[1].sum())} "
                            f"of {len(probe)} probe characters its charset lists"})
            continue
        shares = [(same_share(drawing, drawings[k.key]), k) for k in kept]
        twin = next(((s, k) for s, k in shares if s >= DUPLICATE_SHARE), None)
        if twin:
            dropped.append({"face": face, "reason": "duplicate", "duplicate_of": twin[1],
                            "share": twin[0]})
            continue
        kept.append(face)
        drawings[face.key] = drawing
    return kept, drawings, dropped


def family_groups(faces: Sequence[Face], drawings: dict, packages: dict,
                  duplicates: Sequence[dict] = ()) -> dict:
    """Face key -> group name: the Debian source package (else the family name) of each
    kept face, groups merged when two of their faces draw `RELATED_SHARE` of the probe
    the same, or when a face of one was dropped as a duplicate of a face of the other
    (``duplicates``: `deduplicate`'s dropped entries; only sources with kept faces, so a
    package of copies does not bridge two designs). Named by the merged sources, joined
    with "+"."""
    parent = {}

    def root(name):
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    def union(a, b):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    def source(face):
        return packages.get(face.file, {}).get("source") or face.family

    for i, a in enumerate(faces):
        for b in faces[i + 1:]:
            if same_share(drawings[a.key], drawings[b.key]) >= RELATED_SHARE:
                union(source(a), source(b))
    kept_sources = {source(f) for f in faces}
    for item in duplicates:
        if "duplicate_of" in item and source(item["face"]) in kept_sources:
            union(source(item["face"]), source(item["duplicate_of"]))
    members = {}
    for name in kept_sources:
        members.setdefault(root(name), []).append(name)
    return {f.key: "+".join(sorted(members[root(source(f))])) for f in faces}


def face_ids(faces: Sequence[Face]) -> dict:
    """Face key -> a file-name-safe id, ``<file stem>_<index>`` (the parent directory
    prefixed when two files share a stem)."""
    def stem(face, parents):
        parts = face.file.split(os.sep)[-1 - parents:]
        parts[-1] = os.path.splitext(parts[-1])[0]
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts)) + f"_{face.index}"

    ids = {f.key: stem(f, 0) for f in faces}
    clashes = {i for i in ids.values() if list(ids.values()).count(i) > 1}
    for f in faces:
        if ids[f.key] in clashes:
            ids[f.key] = stem(f, 1)
    if len(set(ids.values())) != len(ids):
        raise ValueError("glyphs: two faces would get the same file name")
    return ids


# ------------------------------------------------------------ shared characters


class _FaceResults:
    """Every character drawn so far by one face: code -> PNG bytes, or the reason it is
    not a glyph of this face."""

    def __init__(self, face, size, margin):
        self.renderer = FaceRenderer(face, size, margin)
        self.results, self._by_drawing = {}, {}

    def draw(self, codes):
        for code in codes:
            if code in self.results:
                continue
            image, reason = self.renderer.ink(chr(code))
            if image is None:
                self.results[code] = reason
                continue
            drawing = (image.size, image.tobytes())
            other = self._by_drawing.setdefault(drawing, code)
            if other != code:  # a placeholder, or two characters drawn alike
                self.results[code] = f"drawn as {chr(other)}"
                self.results[other] = f"drawn as {chr(code)}"
                continue
            self.results[code] = png_bytes(self.renderer.glyph(image))

    def rejected_share(self):
        bad = sum(not isinstance(r, bytes) for r in self.results.values())
        return bad / max(len(self.results), 1)

    def rejection_counts(self) -> str:
        kinds = [r.split()[0] for r in self.results.values() if not isinstance(r, bytes)]
        return ", ".join(f"{k} {kinds.count(k)}" for k in sorted(set(kinds)))


def draw_shared(faces: Sequence[Face], size: int, margin: int, seed: int = 0,
                max_chars: int | None = None, log=print):
    """The characters every face draws, rendered as it goes.

    The candidates are the ideographs in every face's charset, verified in their
    `seeded_order` until ``max_chars`` pass in every face (all of them when None). A
    face rejects a character it draws blank (no ink, or a FreeType error), as its
    ``.notdef`` (its drawing of `UNASSIGNED`) or exactly as another character (a
    placeholder). A face rejecting more than `MAX_REJECTED` of them is dropped (its
    charset is not what it draws) and the shared set recomputed.

    Returns:
        (faces kept, sorted list of the shared code points, {face key: _FaceResults},
        dropped: list of {"face", "reason"} for faces rejecting too much).
    """
    faces, dropped = list(faces), []
    results = {f.key: _FaceResults(f, size, margin) for f in faces}
    while True:
        shared = seeded_order(frozenset.intersection(*[f.ideographs for f in faces]), seed)
        done, chosen = 0, []
        while done < len(shared) and (max_chars is None or len(chosen) < max_chars):
            step = len(shared) if max_chars is None else max(64, 2 * (max_chars - len(chosen)))
            block = shared[done:done + step]
            for face in faces:
                results[face.key].draw(block)
            done += len(block)
            chosen = [c for c in shared[:done]
                      if all(isinstance(results[f.key].results[c], bytes) for f in faces)]
        bad = [f for f in faces if results[f.key].rejected_share() > MAX_REJECTED]
        if not bad:
            break
        for face in bad:
            share = results[face.key].rejected_share()
            log(f"glyphs: dropping {face.label}: no glyph for {share:.1%} of the "
                f"characters its charset lists")
            dropped.append({"face": face, "reason": f"no glyph for {share:.1%} of the "
                            f"shared characters its charset lists "
                            f"({results[face.key].rejection_counts()})"})
        faces = [f for f in faces if f not in bad]
    chosen = sorted(chosen[:max_chars] if max_chars else chosen)
    return faces, chosen, {f.key: results[f.key] for f in faces}, dropped


def seeded_order(codes: Iterable, seed: int) -> list:
    """The code points (or names) sorted by SHA-256 of ``"<seed> <value>"``: a seeded
    shuffle in which each value's place depends on itself only (adding or removing one
    leaves the others' relative order unchanged)."""
    return sorted(codes, key=lambda c: hashlib.sha256(f"{seed} {c}".encode()).digest())


def split_characters(codes: Sequence[int], fractions: Sequence[float], seed: int,
                     counts: Sequence[int] | None = None) -> dict:
    """Code point -> "train" | "val" | "test" (| "pretrain"): the `seeded_order` of the
    codes cut at the (train, val, test) ``fractions`` (rounded; train takes the rest),
    or, with ``counts``, into that many (train, val, test) characters with every other
    character "pretrain" (`build`'s fine-tuning protocol)."""
    order = seeded_order(codes, seed)
    if counts is not None:
        if len(counts) != 3 or min(counts) < 1 or sum(counts) >= len(order):
            raise ValueError(f"glyphs: counts must be three positive numbers (train, val, "
                             f"test) leaving characters to pretrain on, got "
                             f"{tuple(counts)} for {len(order)} characters")
        n_train, n_val, n_test = (int(c) for c in counts)
        names = (["test"] * n_test + ["val"] * n_val + ["train"] * n_train
                 + ["pretrain"] * (len(order) - n_test - n_val - n_train))
        return dict(zip(order, names))
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"glyphs: fractions must be three shares (train, val, test) "
                         f"summing to 1, got {tuple(fractions)}")
    n_test = int(round(fractions[2] * len(order)))
    n_val = int(round(fractions[1] * len(order)))
    n_train = len(order) - n_test - n_val
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return dict(zip(order, names))


# ------------------------------------------------------------------- the folder


def _software() -> dict:
    """Versions that decide the pixels (the same packages and these: the same bytes)."""
    import PIL
    from PIL import features

    fc = subprocess.run(["fc-list", "--version"], capture_output=True, text=True)
    return {"fontconfig": (fc.stdout + fc.stderr).strip().split()[-1],
            "freetype": features.version("freetype2"), "pillow": PIL.__version__}


def _face_entry(face, ids, packages, groups=None, held=frozenset(), pretrain=frozenset()):
    entry = {"family": face.family, "style": face.style, "file": face.file,
             "index": face.index, "ideographs_in_charset": len(face.ideographs),
             **{k: packages.get(face.file, {}).get(k) for k in ("package", "version",
                                                                "source")}}
    if groups is not None:
        splits = [s for s in SPLITS if draws(s, face.key, held, pretrain)]
        entry.update(id=ids[face.key], group=groups[face.key],
                     draws="all" if splits == ["train", "val", "test"] else "+".join(splits))
    return entry


def _dropped_entries(dropped, ids, packages):
    out = []
    for item in dropped:
        entry = _face_entry(item["face"], ids, packages)
        entry["reason"] = item["reason"]
        if "duplicate_of" in item:
            entry["duplicate_of"] = ids[item["duplicate_of"].key]
            entry["share_drawn_the_same"] = round(item["share"], 4)
        out.append(entry)
    return sorted(out, key=lambda e: (e["file"], e["index"]))


def _rejections(faces, results, ids):
    """Character -> {face id: reason} for the charset-shared characters some kept
    face does not really draw."""
    out = {}
    for face in faces:
        for code, result in results[face.key].results.items():
            if not isinstance(result, bytes):
                out.setdefault(chr(code), {})[ids[face.key]] = result
    return {c: dict(sorted(r.items())) for c, r in sorted(out.items())}


def _prepare_out(out):
    """An empty ``out``; a previous glyph folder there (it has a manifest) is replaced."""
    if os.path.isdir(out) and os.listdir(out):
        if not os.path.isfile(os.path.join(out, MANIFEST)):
            raise ValueError(f"glyphs: {out!r} is not empty and holds no {MANIFEST}; "
                             "refusing to write into it")
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)


def held_out_groups(groups: dict, share: float, seed: int, what: str = "held_out",
                    min_rest: int = 2) -> list:
    """The typeface families whose faces draw only the val and test characters (or,
    called by `build` with ``what="pretrain_faces"`` on the training faces, those that
    draw the pretraining characters).

    Families are taken in the `seeded_order` of their names until they hold ``share`` of
    the faces; a family with more than half that many faces is passed over, so that one
    design's weights (Noto CJK's 14) never make up the test set on their own.

    Args:
        groups: face key -> family name (`family_groups`).
        share: the share of faces to hold out; 0 holds none (every face draws every
            character).
        seed: the seed of the order.
        what: the setting's name in error messages.
        min_rest: the fewest faces the families not chosen may hold.

    Returns:
        The sorted held-out family names.

    Raises:
        ValueError: when the chosen faces would be fewer than two or those left fewer
            than ``min_rest`` (N-pair training and leave-one-out retrieval need two
            images per class).
    """
    if not share:
        return []
    if not 0 < share < 1:
        raise ValueError(f"glyphs: {what} must be in [0, 1), got {share}")
    sizes = collections.Counter(groups.values())
    target, limit = share * len(groups), max(1.0, share * len(groups) / 2)
    chosen = []
    for name in seeded_order(sizes, seed):
        if sum(sizes[g] for g in chosen) >= target:
            break
        if sizes[name] <= limit:
            chosen.append(name)
    held = sum(sizes[g] for g in chosen)
    if held < 2 or len(groups) - held < min_rest:
        raise ValueError(f"glyphs: {what}={share} leaves {held} and {len(groups) - held} "
                         f"faces on the two sides ({len(groups)} faces in {len(sizes)} "
                         "families); each side needs two")
    return sorted(chosen)


def draws(split: str, face_key, held_out=frozenset(), pretrain=frozenset()) -> bool:
    """Whether a face draws the characters of ``split``: with ``held_out`` (face keys)
    the held-out faces draw the val and test characters and the others the train ones;
    the pretrain characters are drawn by the ``pretrain`` faces only."""
    if split == "pretrain":
        return face_key in pretrain
    return not held_out or (face_key in held_out) != (split == "train")


def write_folder(out, faces, codes, results, ids, split, held_out=frozenset(),
                 pretrain=frozenset()) -> int:
    """``<out>/<character>/<face id>.png`` and ``<out>/splits.txt``; returns the image
    count. Each character is drawn by the faces `draws` names for its split."""
    images = 0
    for code in codes:
        directory = os.path.join(out, chr(code))
        os.makedirs(directory)
        for face in faces:
            if not draws(split[code], face.key, held_out, pretrain):
                continue
            images += 1
            with open(os.path.join(directory, ids[face.key] + ".png"), "wb") as f:
                f.write(results[face.key].results[code])
    with open(os.path.join(out, SPLIT_FILE), "w", encoding="utf-8") as f:
        f.write("# hdml-tf data glyphs: <split> <character>, see manifest.json\n")
        f.writelines(f"{split[c]} {chr(c)}\n" for c in codes)
    return images


def select_faces(fonts: Sequence[str] | None, min_ideographs: int):
    """(candidate faces, dropped entries for the faces with too few ideographs): the
    faces of ``fonts`` (default: installed) with at least ``min_ideographs`` of
    `IDEOGRAPHS` in their charset."""
    # The shared characters are an intersection: one GB 2312 (6,763 hanzi) or JIS X 0208
    # (6,355 kanji) face among the others would cut them to about 3,450.
    faces = list_faces(fonts)
    few = [f for f in faces if 0 < len(f.ideographs) < min_ideographs]
    candidates = [f for f in faces if len(f.ideographs) >= min_ideographs]
    dropped = [{"face": f, "reason": f"{len(f.ideographs)} ideographs in its charset, "
                f"fewer than min_ideographs={min_ideographs}"} for f in few]
    if len(candidates) < 2:
        raise base.DatasetNotFoundError(
            f"glyphs: {len(candidates)} face(s) with at least {min_ideographs} ideographs "
            f"found{' in ' + ', '.join(fonts) if fonts else ' by fontconfig'}; a benchmark "
            "needs two or more (see the README for the apt-get line)")
    return candidates, dropped


def default_root(root: str | None = None) -> str:
    """``root``, else where the glyphs dataset looks: ``$HDML_GLYPHS_DIR``, else
    ``$HDML_DATA_DIR/glyphs``, else ``~/hdml_data/glyphs``."""
    return root or base.default_root("HDML_GLYPHS_DIR", NAME)


def _faces_and_characters(fonts, min_ideographs, size, margin, seed, max_chars, log):
    """Steps 1-3 of the module docstring: (candidate faces, probe characters, kept faces,
    their probe drawings, the shared code points, the faces' drawings, dropped faces)."""
    candidates, dropped = select_faces(fonts, min_ideographs)
    probe = probe_characters(candidates)
    log(f"glyphs: {len(candidates)} faces with >= {min_ideographs} ideographs; "
        f"deduplicating on {len(probe)} probe characters")
    kept, drawings, more = deduplicate(candidates, probe)
    dropped += more
    kept, codes, results, more = draw_shared(kept, size, margin, seed, max_chars, log)
    dropped += more
    if len(kept) < 2 or not codes:
        raise ValueError(f"glyphs: {len(kept)} distinct faces sharing {len(codes)} "
                         "characters: nothing to build")
    return candidates, probe, kept, drawings, codes, results, dropped


def build(out: str | None = None, *, size: int = 16, margin: int | None = None, seed: int = 0,
          max_chars: int | None = None, min_ideographs: int = 7000,
          fractions: Sequence[float] = (0.45, 0.05, 0.5), held_out: float = 1 / 3,
          counts: Sequence[int] | None = None, pretrain_faces: float = 0.15,
          fonts: Sequence[str] | None = None, command: str = "", log=print) -> dict:
    """Write the glyph folder (module docstring) to ``out``; returns the manifest.

    Args:
        out: output directory (default `default_root`): empty, absent or a glyph folder.
        size: image side in pixels. margin: white pixels on each side of the face box
            (default ``max(1, size // 16)``).
        seed: decides the characters kept under ``max_chars`` and the split.
        max_chars: keep this many shared characters (a seeded sample), or all.
        min_ideographs: faces whose charset holds fewer ideographs are skipped.
        fractions: (train, val, test) shares of the characters.
        held_out: share of the faces, whole families (`held_out_groups`), that draw only
            the val and test characters while the others draw only the train
            characters: retrieval of unseen characters in unseen typefaces. 0: every
            face draws every character.
        counts: (train, val, test) character counts instead of ``fractions``; every
            other character becomes the "pretrain" split, drawn only by a
            ``pretrain_faces`` share of the training faces (whole families, chosen as
            `held_out_groups` chooses): the fine-tuning protocol of docs/results.md,
            in which a backbone is pretrained on characters and faces the fine-tuning
            never sees.
        pretrain_faces: see ``counts``; 1: every training face.
        fonts: font files or directories to use instead of every installed face.
        command: the command line, recorded in the manifest.
    """
    out = default_root(out)
    margin = max(1, size // 16) if margin is None else margin
    settings = {"size": size, "margin": margin, "seed": seed, "max_chars": max_chars,
                "min_ideographs": min_ideographs, "fractions": list(fractions),
                "held_out": held_out, "fonts": list(fonts or [])}
    if counts is not None:
        settings.update(counts=[int(c) for c in counts], pretrain_faces=pretrain_faces)
    candidates, probe, kept, drawings, codes, results, dropped = _faces_and_characters(
        fonts, min_ideographs, size, margin, seed, max_chars, log)
    every = list(candidates) + [d["face"] for d in dropped]
    packages, ids = debian_packages({f.file for f in every}), face_ids(every)
    groups = family_groups(kept, drawings, packages, dropped)
    split = split_characters(codes, fractions, seed, counts)
    test_groups = held_out_groups(groups, held_out, seed)
    held = frozenset(f.key for f in kept if groups[f.key] in test_groups)
    pretrain, pretrain_groups = frozenset(), []
    if counts is not None:
        pretrain, pretrain_groups = pretraining_faces(groups, held, pretrain_faces, seed)
    _prepare_out(out)
    images = write_folder(out, kept, codes, results, ids, split, held, pretrain)
    manifest = _manifest(command, settings, probe, kept, dropped, codes, results, ids,
                         packages, groups, held, test_groups, pretrain, pretrain_groups,
                         split, counts is not None, images)
    with open(os.path.join(out, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=1, sort_keys=True)
        f.write("\n")
    log(_summary(manifest, kept, held, pretrain, out))
    return manifest


def _manifest(command, settings, probe, kept, dropped, codes, results, ids, packages,
              groups, held, test_groups, pretrain, pretrain_groups, split, with_pretrain,
              images) -> dict:
    """The manifest.json of `build` (module docstring, step 5)."""
    return {
        "format": FORMAT, "command": command,
        "settings": {**settings, "range": "U+%04X-U+%04X" % IDEOGRAPHS,
                     "oversample": OVERSAMPLE, "max_rejected": MAX_REJECTED,
                     "dedup": {"probe": len(probe), "same_drawing": SAME_DRAWING,
                               "duplicate_share": DUPLICATE_SHARE,
                               "related_share": RELATED_SHARE}},
        "software": _software(),
        "faces": [_face_entry(f, ids, packages, groups, held, pretrain) for f in kept],
        "held_out_groups": test_groups,
        **({"pretrain_groups": pretrain_groups} if with_pretrain else {}),
        "dropped": _dropped_entries(dropped, ids, packages),
        "characters": "".join(chr(c) for c in codes),
        "shared_in_charsets": len(frozenset.intersection(*[f.ideographs for f in kept])),
        "rejected_characters": _rejections(kept, results, ids),
        "splits": {s: sum(v == s for v in split.values()) for s in SPLITS
                   if s != "pretrain" or with_pretrain},
        "images": images,
    }


def pretraining_faces(groups: dict, held: frozenset, share: float, seed: int):
    """(face keys, family names) of the training faces that draw the pretraining
    characters: a ``share`` of them in whole families (`held_out_groups`), or all of
    them when ``share`` is 1."""
    training = {key: group for key, group in groups.items() if key not in held}
    names = (sorted(set(training.values())) if share == 1 else
             held_out_groups(training, share, seed, "pretrain_faces", min_rest=0))
    return frozenset(key for key in training if groups[key] in names), names


def _summary(manifest, kept, held, pretrain, out) -> str:
    sides = (f"; {len(kept) - len(held)} draw the train ones, {len(held)} "
             f"({', '.join(manifest['held_out_groups'])}) the val and test ones"
             if held else "")
    if pretrain:
        sides += (f"; {len(pretrain)} of the training faces "
                  f"({', '.join(manifest['pretrain_groups'])}) draw the "
                  f"{manifest['splits']['pretrain']} pretraining characters")
    return (f"glyphs: {len(kept)} faces, {len(manifest['characters'])} characters{sides}: "
            f"{manifest['images']} images in {out}")


# -------------------------------------------------------------------- loading


def read_manifest(root: str | None = None) -> dict:
    """The manifest.json of a glyph folder (default: `default_root`)."""
    root = default_root(root)
    with open(base.require_file(os.path.join(root, MANIFEST), "glyphs manifest",
                                "(write the folder with: hdml-tf data glyphs --out DIR)"),
              encoding="utf-8") as f:
        return json.load(f)


def load(split: str, root: str | None = None, *, val_fraction: float = 0.0,
         val_seed: int = 0) -> base.ImageDataset:
    """One split of a glyph folder written by `build`.

    Args:
        split: "train", "val", "test", "all" or (a folder written with ``counts``)
            "pretrain": the characters ``splits.txt`` assigns.
        root: the folder (default ``$HDML_GLYPHS_DIR``, else ``$HDML_DATA_DIR/glyphs``).
        val_fraction, val_seed: only for a folder written without val characters
            (``fractions`` with val 0); see `hdml_tf.data.folder.load`.

    Returns:
        ImageDataset named "glyphs" with ``paths``; class names are the characters.
        Each image's face is `image_faces` of it.
    """
    root = default_root(root)
    split_file = base.require_file(os.path.join(root, SPLIT_FILE), "glyphs split file",
                                   "(write the folder with: hdml-tf data glyphs --out DIR)")
    data = folder.load(split, root, split_file=split_file, val_fraction=val_fraction,
                       val_seed=val_seed)
    return dataclasses.replace(data, name=NAME)


def image_faces(data: base.ImageDataset) -> np.ndarray:
    """The face id of every image of a glyph split (its file name), str array (N,)."""
    return np.array([os.path.splitext(os.path.basename(p))[0] for p in data.paths])
