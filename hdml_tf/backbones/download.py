"""Fetch a weights file by URL and verify its digest (for Colab and fresh machines).

:func:`fetch_weights` downloads with ``urllib`` (``https://``, ``http://`` and
``file://`` URLs) into a temporary file in the destination folder, hashes it while
writing, and only renames it into place when the digest (SHA-256, or SHA-1 where that
is what the publisher gives) matches. So:

* a checksum mismatch raises :class:`ChecksumError` naming the expected and actual
  digests, and leaves nothing behind (a file already at the destination is untouched);
* an interrupted download leaves no partial file under the final name;
* a file already at the destination with the expected digest is reused, without any
  network access.

:data:`KNOWN_WEIGHTS` lists published files. ``bvlc_googlenet`` is the paper's
backbone as BVLC released it: URL and SHA-1 as published in Caffe's
``models/bvlc_googlenet/readme.md``. :func:`fetch_and_convert` fetches such an entry,
verifies it and converts it to Keras weights in the cache, once; later calls find both
files there and touch no network. ``googlenet_caffe_hdml`` documents the HDML authors'
converted ``tf_ckpt_from_caffe.mat``, whose URL and digest are not recorded here (they
could not be downloaded and hashed when this was written, and a digest nobody computed
from the real file would be worse than none): supply both (``docs/weights.md``).

Command line (parsed in ``hdml_tf/cli.py``, which calls these functions)::

    hdml-tf weights fetch bvlc_googlenet [--url MIRROR_URL] [--cache-dir DIR]
    python -m hdml_tf.backbones.download URL --sha256 HEX [-o DEST] [--cache-dir DIR]
    python -m hdml_tf.backbones.download URL --sha1 HEX [-o DEST]
    python -m hdml_tf.backbones.download --hash FILE     # print a file's SHA-256
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

__all__ = [
    "KNOWN_WEIGHTS",
    "KnownWeights",
    "ChecksumError",
    "DownloadError",
    "default_cache_dir",
    "fetch_weights",
    "fetch_known_weights",
    "fetch_and_convert",
    "FetchedWeights",
    "sha256_file",
    "sha1_file",
]

_CHUNK = 1 << 20
# Digest algorithms accepted, with the hex length of their digests.
_ALGORITHMS = {"sha256": 64, "sha1": 40}
_LABELS = {"sha256": "SHA-256", "sha1": "SHA-1"}


@dataclasses.dataclass(frozen=True)
class KnownWeights:
    """A published weights file: what it is and where it is described.

    Attributes:
        file_name: the name the publisher's code expects.
        description: what the file holds and which backbone reads it.
        source: the page that points to the file (not a download URL).
        url: a direct download URL, or None when it must be supplied by the user.
        sha256: the hex SHA-256 of the file, or None when it must be supplied.
        sha1: the hex SHA-1 of the file when that is the digest the publisher gives.
        convert: the command that turns it into Keras weights.
    """

    file_name: str
    description: str
    source: str
    url: Optional[str] = None
    sha256: Optional[str] = None
    sha1: Optional[str] = None
    convert: str = ""


KNOWN_WEIGHTS = {
    "bvlc_googlenet": KnownWeights(
        file_name="bvlc_googlenet.caffemodel",
        description=(
            "BVLC GoogLeNet (Caffe model zoo), trained on ILSVRC 2012: the network the "
            "HDML authors converted for the paper. Top-1 68.7 %, top-5 88.9 % on the "
            "ImageNet validation set (centre crop, per its readme); released for "
            "unrestricted use. Read directly by hdml_tf.backbones.load_caffe_weights."
        ),
        source=(
            "BVLC Caffe repository, models/bvlc_googlenet/readme.md "
            "(caffemodel_url and sha1)"
        ),
        url="http://dl.caffe.berkeleyvision.org/bvlc_googlenet.caffemodel",
        sha1="405fc5acd08a3bb12de8ee5e23a96bec22f08204",
        convert="hdml-tf weights fetch bvlc_googlenet",
    ),
    "googlenet_caffe_hdml": KnownWeights(
        file_name="tf_ckpt_from_caffe.mat",
        description=(
            "BVLC GoogLeNet (Caffe, ImageNet) converted to a MATLAB .mat of OIHW "
            "kernels and '<layer>_bias' arrays under Caffe layer names; the file the "
            "HDML authors' code loads (lib/GoogleNet_Model.py). Read by "
            "hdml_tf.backbones.InceptionV1 through hdml-tf weights import."
        ),
        source=(
            "HDML authors' README (github.com/wzzheng/HDML, 'Pretrained model'): "
            "https://github.com/Wei2624/Feature_Embed_GoogLeNet"
        ),
        # Deliberately unset: neither the file nor its digest could be obtained when
        # this was written (no network). See docs/weights.md.
        url=None,
        sha256=None,
        convert="hdml-tf weights import tf_ckpt_from_caffe.mat -o googlenet.weights.h5",
    ),
}


class DownloadError(OSError):
    """The URL could not be read (unreachable host, HTTP error, missing file)."""


class ChecksumError(ValueError):
    """The downloaded bytes do not have the expected digest.

    Attributes:
        url: what was downloaded.
        expected: the digest asked for (lower-case hex).
        actual: the digest of the bytes received.
        algorithm: ``"sha256"`` or ``"sha1"``.
    """

    def __init__(self, url, expected, actual, algorithm="sha256"):
        self.url, self.expected, self.actual = url, expected, actual
        self.algorithm = algorithm
        super().__init__(
            f"{_LABELS[algorithm]} mismatch for {url}: expected {expected}, got {actual}. "
            "The download was discarded; nothing was written. Check the URL and the "
            "digest (a changed file, an HTML error page or a truncated transfer all "
            "give a different digest)."
        )


def default_cache_dir():
    """``$HDML_TF_CACHE/weights`` if set, else ``~/.cache/hdml_tf/weights``."""
    root = os.environ.get("HDML_TF_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "hdml_tf")
    return os.path.join(root, "weights")


def _file_digest(path, algorithm):
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path):
    """The lower-case hex SHA-256 of a file, read in 1 MiB chunks."""
    return _file_digest(path, "sha256")


def sha1_file(path):
    """The lower-case hex SHA-1 of a file (the digest Caffe's model zoo publishes)."""
    return _file_digest(path, "sha1")


def _normalise_digest(sha256, sha1):
    """``(algorithm, lower-case hex)`` from exactly one of the two arguments."""
    if sha256 is not None and sha1 is not None:
        raise ValueError("pass either sha256 or sha1, not both")
    if sha256 is None and sha1 is None:
        raise ValueError(
            "sha256 is required: pass the published hex SHA-256 of the file (compute "
            "it on a copy you trust with `sha256sum FILE` or `python -m "
            "hdml_tf.backbones.download --hash FILE`), or sha1= where the publisher "
            "gives a SHA-1")
    algorithm, given = ("sha256", sha256) if sha256 is not None else ("sha1", sha1)
    value = str(given).strip().lower()
    if value.startswith(algorithm + ":"):
        value = value[len(algorithm) + 1:]
    size = _ALGORITHMS[algorithm]
    if len(value) != size or not re.fullmatch(r"[0-9a-f]+", value):
        raise ValueError(f"{algorithm} must be {size} hexadecimal characters, got {given!r}")
    return algorithm, value


def _file_name_of(url):
    name = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    if not name:
        raise ValueError(f"cannot take a file name from {url!r}; pass dest=")
    return name


def fetch_weights(url, sha256=None, dest=None, *, sha1=None, cache_dir=None, timeout=60.0):
    """Download ``url`` to ``dest`` unless a verified copy is already there.

    Args:
        url: ``https://``, ``http://`` or ``file://`` URL.
        sha256: the expected hex SHA-256 (64 characters, case-insensitive, an optional
            ``sha256:`` prefix is accepted).
        sha1: instead of ``sha256``, the expected hex SHA-1 (40 characters), for
            publishers that give only that (Caffe's model zoo).
        dest: the file to write. An existing directory means "in this folder, under
            the URL's file name". Default: the URL's file name in ``cache_dir``.
        cache_dir: folder used when ``dest`` is None (default
            :func:`default_cache_dir`).
        timeout: seconds for the connection and for each read.

    Returns:
        The absolute path of the verified file (str).

    Raises:
        ValueError: ``url`` missing, or not exactly one well-formed digest.
        DownloadError: the URL could not be read (the message names it and the reason).
        ChecksumError: the bytes received have another digest; nothing is written and
            an existing file at ``dest`` is left as it was.
    """
    if not url:
        raise ValueError("url is required (see docs/weights.md for where to find it)")
    url = str(url)
    algorithm, expected = _normalise_digest(sha256, sha1)
    if dest is None:
        dest = os.path.join(cache_dir or default_cache_dir(), _file_name_of(url))
    dest = os.fspath(dest)
    if os.path.isdir(dest):
        dest = os.path.join(dest, _file_name_of(url))
    dest = os.path.abspath(dest)

    return _fetch(url, algorithm, expected, dest, timeout)[0]


def _fetch(url, algorithm, expected, dest, timeout):
    """:func:`fetch_weights` after argument checks; returns ``(dest, downloaded)``."""
    if os.path.isfile(dest) and _file_digest(dest, algorithm) == expected:
        return dest, False  # verified copy already there: no download

    folder = os.path.dirname(dest)
    os.makedirs(folder, exist_ok=True)
    # Same folder as dest, so the final os.replace is an atomic rename.
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dest) + ".", suffix=".part",
                               dir=folder)
    try:
        digest = hashlib.new(algorithm)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
                    url, timeout=timeout) as response:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as error:
            raise DownloadError(f"cannot download {url}: HTTP {error.code} "
                                f"{error.reason}") from error
        except urllib.error.URLError as error:
            raise DownloadError(f"cannot download {url}: {error.reason}") from error
        except (OSError, ValueError) as error:  # timeouts, resets, bad URL schemes
            raise DownloadError(f"cannot download {url}: {error}") from error
        actual = digest.hexdigest()
        if actual != expected:
            raise ChecksumError(url, expected, actual, algorithm)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest, True


def _known(name):
    if name not in KNOWN_WEIGHTS:
        raise ValueError(f"unknown weights {name!r}; known: {', '.join(sorted(KNOWN_WEIGHTS))}")
    return KNOWN_WEIGHTS[name]


def _known_source(name, url, sha256, sha1):
    """``(url, algorithm, hex)`` for an entry, the arguments overriding it.

    A digest passed replaces the entry's; a URL alone (a mirror) keeps the published
    digest, so a mirror must serve the same bytes.
    """
    entry = _known(name)
    url = url or entry.url
    if sha256 is None and sha1 is None:
        sha256, sha1 = entry.sha256, entry.sha1
    if not url or (sha256 is None and sha1 is None):
        raise ValueError(
            f"{name}: no {'URL' if not url else 'SHA-256'} is recorded for "
            f"{entry.file_name}; pass url= and sha256= (see docs/weights.md; source: "
            f"{entry.source})")
    return (url, *_normalise_digest(sha256, sha1))


def fetch_known_weights(name, url=None, sha256=None, dest=None, *, sha1=None, cache_dir=None):
    """:func:`fetch_weights` for an entry of :data:`KNOWN_WEIGHTS`.

    ``url`` / ``sha256`` / ``sha1`` override the entry's (required where the entry has
    none; a URL alone keeps the published digest); the file keeps the entry's
    ``file_name`` unless ``dest`` says otherwise.
    """
    url, algorithm, expected = _known_source(name, url, sha256, sha1)
    if dest is None:
        dest = os.path.join(cache_dir or default_cache_dir(), _known(name).file_name)
    return fetch_weights(url, dest=dest, **{algorithm: expected})


@dataclasses.dataclass(frozen=True)
class FetchedWeights:
    """What :func:`fetch_and_convert` left in the cache.

    Attributes:
        name: the :data:`KNOWN_WEIGHTS` entry.
        source: the verified file as published (e.g. ``bvlc_googlenet.caffemodel``).
        weights: the Keras weights of ``InceptionV1(include_top=False)`` converted from
            it (``<name>.weights.h5``), what ``model.weights=`` of a preset takes.
        downloaded: whether this call downloaded `source` (False: verified copy reused).
        converted: whether this call wrote `weights` (False: found in the cache).
    """

    name: str
    source: str
    weights: str
    downloaded: bool
    converted: bool


def fetch_and_convert(name="bvlc_googlenet", *, url=None, sha256=None, sha1=None,
                      cache_dir=None, input_size=227, timeout=60.0, print_fn=print):
    """Fetch a known weights file, verify its published digest, convert it, once.

    The file goes to ``cache_dir`` (default :func:`default_cache_dir`) under the
    entry's file name, only if its digest matches; then it is converted into
    ``<name>.weights.h5`` beside it (written under a temporary name and renamed, so
    an interrupted conversion leaves no file that looks finished). A second call finds
    the verified file and the converted weights and does no network access and no
    conversion.

    Args:
        name: an entry of :data:`KNOWN_WEIGHTS` (``"bvlc_googlenet"``).
        url: another URL for the same bytes (a mirror; the published digest is still
            checked), or the URL where the entry records none.
        sha256, sha1: a digest replacing the entry's (at most one).
        cache_dir: the folder for both files.
        input_size: square input size the converted model is built at (weights do not
            depend on it).
        timeout: seconds for the connection and each read.
        print_fn: where progress lines go (``None``: silent).

    Returns:
        :class:`FetchedWeights`.

    Raises:
        ValueError: unknown name, or no URL / digest for it.
        DownloadError, ChecksumError: as :func:`fetch_weights` (nothing is written).
        hdml_tf.backbones.CaffeWeightsError: the verified file does not fit InceptionV1.
    """
    say = print_fn or (lambda *args, **kwargs: None)
    entry = _known(name)
    url, algorithm, expected = _known_source(name, url, sha256, sha1)
    folder = os.path.abspath(os.fspath(cache_dir or default_cache_dir()))
    source, downloaded = _fetch(url, algorithm, expected,
                                os.path.join(folder, entry.file_name), timeout)
    say(f"{name}: {_LABELS[algorithm]} {expected} verified: {source}"
        + (f" (downloaded from {url})" if downloaded else " (already in the cache)"))

    weights = os.path.join(folder, f"{name}.weights.h5")
    converted = downloaded or not os.path.isfile(weights)
    if converted:
        from hdml_tf.backbones.weights import convert_with_report, skipped_layers_lines

        tmp = os.path.join(folder, f".{name}.{os.getpid()}.part.weights.h5")
        try:
            _, report = convert_with_report(source, tmp, input_shape=(input_size, input_size, 3))
            os.replace(tmp, weights)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        say(f"{name}: converted {len(report['loaded'])} layers to Keras weights "
            f"(InceptionV1, include_top=False): {weights}")
        for line in skipped_layers_lines(report["ignored"]):
            say(f"{name}: {line}")
    else:
        say(f"{name}: Keras weights already in the cache: {weights}")
    return FetchedWeights(name, source, weights, downloaded, converted)
