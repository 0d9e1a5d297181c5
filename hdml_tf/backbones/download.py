"""Fetch a weights file by URL and verify its SHA-256 (for Colab and fresh machines).

:func:`fetch_weights` downloads with ``urllib`` (``https://``, ``http://`` and
``file://`` URLs) into a temporary file in the destination folder, hashes it while
writing, and only renames it into place when the digest matches. So:

* a checksum mismatch raises :class:`ChecksumError` naming the expected and actual
  digests, and leaves nothing behind (a file already at the destination is untouched);
* an interrupted download leaves no partial file under the final name;
* a file already at the destination with the expected digest is reused, without any
  network access.

:data:`KNOWN_WEIGHTS` documents the converted BVLC GoogLeNet weights the HDML authors'
code loads (``tf_ckpt_from_caffe.mat``). Its URL and digest are not recorded here: they
could not be downloaded and hashed when this was written, and a digest that nobody
computed from the real file would be worse than none. Supply both
(``docs/weights.md`` says how), then convert with ``hdml-tf weights import``.

Command line (the same function)::

    python -m hdml_tf.backbones.download URL --sha256 HEX [-o DEST] [--cache-dir DIR]
    python -m hdml_tf.backbones.download --hash FILE     # print a file's SHA-256
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import re
import sys
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
    "sha256_file",
    "fetch_main",
]

_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class KnownWeights:
    """A published weights file: what it is and where it is described.

    Attributes:
        file_name: the name the publisher's code expects.
        description: what the file holds and which backbone reads it.
        source: the page that points to the file (not a download URL).
        url: a direct download URL, or None when it must be supplied by the user.
        sha256: the hex SHA-256 of the file, or None when it must be supplied.
        convert: the command that turns it into Keras weights.
    """

    file_name: str
    description: str
    source: str
    url: Optional[str] = None
    sha256: Optional[str] = None
    convert: str = ""


KNOWN_WEIGHTS = {
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
    """The downloaded bytes do not have the expected SHA-256.

    Attributes:
        url: what was downloaded.
        expected: the digest asked for (lower-case hex).
        actual: the digest of the bytes received.
    """

    def __init__(self, url, expected, actual):
        self.url, self.expected, self.actual = url, expected, actual
        super().__init__(
            f"SHA-256 mismatch for {url}: expected {expected}, got {actual}. "
            "The download was discarded; nothing was written. Check the URL and the "
            "digest (a changed file, an HTML error page or a truncated transfer all "
            "give a different digest)."
        )


def default_cache_dir():
    """``$HDML_TF_CACHE/weights`` if set, else ``~/.cache/hdml_tf/weights``."""
    root = os.environ.get("HDML_TF_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "hdml_tf")
    return os.path.join(root, "weights")


def sha256_file(path):
    """The lower-case hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise_sha256(sha256):
    if sha256 is None:
        raise ValueError(
            "sha256 is required: pass the published hex SHA-256 of the file (compute "
            "it on a copy you trust with `sha256sum FILE` or `python -m "
            "hdml_tf.backbones.download --hash FILE`)")
    value = str(sha256).strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:"):]
    if not _HEX64.match(value):
        raise ValueError(f"sha256 must be 64 hexadecimal characters, got {sha256!r}")
    return value


def _file_name_of(url):
    name = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    if not name:
        raise ValueError(f"cannot take a file name from {url!r}; pass dest=")
    return name


def fetch_weights(url, sha256, dest=None, *, cache_dir=None, timeout=60.0):
    """Download ``url`` to ``dest`` unless a verified copy is already there.

    Args:
        url: ``https://``, ``http://`` or ``file://`` URL.
        sha256: the expected hex SHA-256 (64 characters, case-insensitive, an optional
            ``sha256:`` prefix is accepted).
        dest: the file to write. An existing directory means "in this folder, under
            the URL's file name". Default: the URL's file name in ``cache_dir``.
        cache_dir: folder used when ``dest`` is None (default
            :func:`default_cache_dir`).
        timeout: seconds for the connection and for each read.

    Returns:
        The absolute path of the verified file (str).

    Raises:
        ValueError: ``url`` or ``sha256`` missing or malformed.
        DownloadError: the URL could not be read (the message names it and the reason).
        ChecksumError: the bytes received have another digest; nothing is written and
            an existing file at ``dest`` is left as it was.
    """
    if not url:
        raise ValueError("url is required (see docs/weights.md for where to find it)")
    url = str(url)
    expected = _normalise_sha256(sha256)
    if dest is None:
        dest = os.path.join(cache_dir or default_cache_dir(), _file_name_of(url))
    dest = os.fspath(dest)
    if os.path.isdir(dest):
        dest = os.path.join(dest, _file_name_of(url))
    dest = os.path.abspath(dest)

    if os.path.isfile(dest) and sha256_file(dest) == expected:
        return dest  # verified copy already there: no download

    folder = os.path.dirname(dest)
    os.makedirs(folder, exist_ok=True)
    # Same folder as dest, so the final os.replace is an atomic rename.
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dest) + ".", suffix=".part",
                               dir=folder)
    try:
        digest = hashlib.sha256()
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
            raise ChecksumError(url, expected, actual)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def fetch_known_weights(name, url=None, sha256=None, dest=None, *, cache_dir=None):
    """:func:`fetch_weights` for an entry of :data:`KNOWN_WEIGHTS`.

    ``url`` / ``sha256`` override the entry's (required where the entry has none);
    the file keeps the entry's ``file_name`` unless ``dest`` says otherwise.
    """
    if name not in KNOWN_WEIGHTS:
        raise ValueError(f"unknown weights {name!r}; known: {', '.join(sorted(KNOWN_WEIGHTS))}")
    entry = KNOWN_WEIGHTS[name]
    url, sha256 = url or entry.url, sha256 or entry.sha256
    if not url or not sha256:
        raise ValueError(
            f"{name}: no {'URL' if not url else 'SHA-256'} is recorded for "
            f"{entry.file_name}; pass url= and sha256= (see docs/weights.md; source: "
            f"{entry.source})")
    if dest is None:
        dest = os.path.join(cache_dir or default_cache_dir(), entry.file_name)
    return fetch_weights(url, sha256, dest)


def fetch_main(argv=None):
    """``python -m hdml_tf.backbones.download``: fetch and verify, or hash a file.

    Returns 0 on success, 1 on a download or checksum error, 2 on bad arguments.
    """
    parser = argparse.ArgumentParser(
        prog="python -m hdml_tf.backbones.download",
        description="Download a weights file and verify its SHA-256 (file:// works too).")
    parser.add_argument("url", nargs="?", help="https://, http:// or file:// URL")
    parser.add_argument("--sha256", help="expected hex SHA-256")
    parser.add_argument("-o", "--output", help="destination file or folder")
    parser.add_argument("--cache-dir", help=f"default folder ({default_cache_dir()})")
    parser.add_argument("--hash", metavar="FILE", help="print FILE's SHA-256 and exit")
    args = parser.parse_args(argv)
    if args.hash:
        print(f"{sha256_file(args.hash)}  {args.hash}")
        return 0
    if not args.url or not args.sha256:
        parser.print_usage(sys.stderr)
        print("error: URL and --sha256 are required", file=sys.stderr)
        return 2
    try:
        path = fetch_weights(args.url, args.sha256, args.output, cache_dir=args.cache_dir)
    except (DownloadError, ChecksumError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(fetch_main())
