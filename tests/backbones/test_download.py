"""fetch_weights: download, verify, reuse, refuse a wrong digest; file:// URLs only."""

import hashlib
import os

import numpy as np
import pytest

from hdml_tf import cli
from hdml_tf.backbones import download


def _serve(tmp_path, payload=b"converted GoogLeNet weights\n" * 100, name="w.mat"):
    """A 'remote' file under tmp_path/remote, its file:// URL and its SHA-256."""
    remote = tmp_path / "remote"
    remote.mkdir(exist_ok=True)
    source = remote / name
    source.write_bytes(payload)
    return source.as_uri(), hashlib.sha256(payload).hexdigest(), payload


def _listing(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_fetch_writes_the_verified_file(tmp_path):
    url, digest, payload = _serve(tmp_path)
    dest = tmp_path / "out" / "weights.mat"
    path = download.fetch_weights(url, digest, dest)
    assert path == str(dest)
    assert dest.read_bytes() == payload
    assert _listing(dest.parent) == ["weights.mat"]  # no temporary file left


def test_default_destination_is_the_url_file_name_in_the_cache(tmp_path, monkeypatch):
    url, digest, _ = _serve(tmp_path, name="tf_ckpt_from_caffe.mat")
    path = download.fetch_weights(url, digest.upper(), cache_dir=tmp_path / "cache")
    assert path == str(tmp_path / "cache" / "tf_ckpt_from_caffe.mat")
    monkeypatch.setenv("HDML_TF_CACHE", str(tmp_path / "env"))
    path = download.fetch_weights(url, "sha256:" + digest)
    assert path == str(tmp_path / "env" / "weights" / "tf_ckpt_from_caffe.mat")
    # An existing folder as dest means "in there, under the URL's name".
    assert download.fetch_weights(url, digest, tmp_path) == str(
        tmp_path / "tf_ckpt_from_caffe.mat")


def test_a_verified_file_is_reused_without_downloading(tmp_path, monkeypatch):
    url, digest, payload = _serve(tmp_path)
    dest = tmp_path / "weights.mat"
    download.fetch_weights(url, digest, dest)
    mtime = os.stat(dest).st_mtime_ns

    def no_network(*args, **kwargs):
        raise AssertionError("urlopen called although a verified copy exists")

    monkeypatch.setattr(download.urllib.request, "urlopen", no_network)
    (tmp_path / "remote" / "w.mat").unlink()  # the source is gone: reuse must not care
    assert download.fetch_weights(url, digest, dest) == str(dest)
    assert os.stat(dest).st_mtime_ns == mtime and dest.read_bytes() == payload


def test_a_stale_file_is_replaced_by_a_verified_download(tmp_path):
    url, digest, payload = _serve(tmp_path)
    dest = tmp_path / "weights.mat"
    dest.write_bytes(b"truncated")
    download.fetch_weights(url, digest, dest)
    assert dest.read_bytes() == payload


def test_checksum_mismatch_names_both_digests_and_leaves_nothing(tmp_path):
    url, digest, _ = _serve(tmp_path)
    wrong = "0" * 64
    dest = tmp_path / "out" / "weights.mat"
    with pytest.raises(download.ChecksumError) as info:
        download.fetch_weights(url, wrong, dest)
    message = str(info.value)
    assert wrong in message and digest in message and url in message
    assert info.value.expected == wrong and info.value.actual == digest
    assert _listing(dest.parent) == []  # no partial or temporary file


def test_checksum_mismatch_leaves_an_existing_good_file_untouched(tmp_path):
    url, digest, payload = _serve(tmp_path)
    dest = tmp_path / "weights.mat"
    download.fetch_weights(url, digest, dest)
    mtime = os.stat(dest).st_mtime_ns
    # The remote file changed: asking for its new digest while the new bytes differ
    # from what is asked for must fail and keep the good local copy.
    (tmp_path / "remote" / "w.mat").write_bytes(b"an HTML error page")
    with pytest.raises(download.ChecksumError):
        download.fetch_weights(url, "f" * 64, dest)
    assert dest.read_bytes() == payload and os.stat(dest).st_mtime_ns == mtime
    assert _listing(tmp_path) == ["remote", "weights.mat"]


def test_missing_file_is_a_clear_download_error(tmp_path):
    url = (tmp_path / "nowhere" / "w.mat").as_uri()
    dest = tmp_path / "out" / "w.mat"
    with pytest.raises(download.DownloadError, match="cannot download .*nowhere"):
        download.fetch_weights(url, "a" * 64, dest)
    assert _listing(dest.parent) == []


def test_unreachable_host_is_a_clear_download_error(tmp_path):
    # Port 9 on localhost (discard) is closed here: the connection is refused at once.
    with pytest.raises(download.DownloadError, match="cannot download http://127.0.0.1:9/"):
        download.fetch_weights("http://127.0.0.1:9/w.mat", "a" * 64, tmp_path / "w.mat",
                               timeout=5)
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("sha256, match", [
    (None, "sha256 is required"),
    ("abc", "64 hexadecimal"),
    ("g" * 64, "64 hexadecimal"),
])
def test_bad_digest_arguments(tmp_path, sha256, match):
    url, _, _ = _serve(tmp_path)
    with pytest.raises(ValueError, match=match):
        download.fetch_weights(url, sha256, tmp_path / "w.mat")


def test_known_googlenet_entry_needs_a_user_supplied_url_and_digest(tmp_path):
    entry = download.KNOWN_WEIGHTS["googlenet_caffe_hdml"]
    assert entry.file_name == "tf_ckpt_from_caffe.mat"
    assert entry.url is None and entry.sha256 is None  # never an invented digest
    with pytest.raises(ValueError, match="pass url= and sha256="):
        download.fetch_known_weights("googlenet_caffe_hdml")
    url, digest, _ = _serve(tmp_path, name="any_name.mat")
    path = download.fetch_known_weights("googlenet_caffe_hdml", url=url, sha256=digest,
                                        cache_dir=tmp_path / "cache")
    assert os.path.basename(path) == "tf_ckpt_from_caffe.mat"


def test_sha1_digest_as_the_caffe_model_zoo_publishes(tmp_path):
    url, _, payload = _serve(tmp_path, name="bvlc_googlenet.caffemodel")
    sha1 = hashlib.sha1(payload).hexdigest()
    dest = tmp_path / "out" / "m.caffemodel"
    assert download.fetch_weights(url, sha1=sha1.upper(), dest=dest) == str(dest)
    assert download.sha1_file(dest) == sha1
    wrong = "1" * 40
    with pytest.raises(download.ChecksumError, match=f"SHA-1 mismatch .*expected {wrong}, "
                                                     f"got {sha1}") as info:
        download.fetch_weights(url, sha1=wrong, dest=tmp_path / "other" / "m.caffemodel")
    assert info.value.algorithm == "sha1"
    assert _listing(tmp_path / "other") == []
    with pytest.raises(ValueError, match="40 hexadecimal"):
        download.fetch_weights(url, sha1="ab" * 32, dest=dest)
    with pytest.raises(ValueError, match="not both"):
        download.fetch_weights(url, "a" * 64, dest, sha1=sha1)


def test_known_bvlc_googlenet_entry_is_the_published_release():
    """URL and SHA-1 as in Caffe's models/bvlc_googlenet/readme.md."""
    entry = download.KNOWN_WEIGHTS["bvlc_googlenet"]
    assert entry.url == "http://dl.caffe.berkeleyvision.org/bvlc_googlenet.caffemodel"
    assert entry.sha1 == "405fc5acd08a3bb12de8ee5e23a96bec22f08204"
    assert entry.sha256 is None and entry.file_name == "bvlc_googlenet.caffemodel"


def test_known_entry_with_a_file_url_stand_in(tmp_path):
    url, _, payload = _serve(tmp_path, name="anything.bin")
    sha1 = hashlib.sha1(payload).hexdigest()
    path = download.fetch_known_weights("bvlc_googlenet", url=url, sha1=sha1,
                                        cache_dir=tmp_path / "cache")
    assert path == str(tmp_path / "cache" / "bvlc_googlenet.caffemodel")
    # A URL alone is a mirror: the published digest still applies, and these bytes fail it.
    with pytest.raises(download.ChecksumError, match="405fc5acd08a3bb12de8ee5e23a96bec22f08204"):
        download.fetch_known_weights("bvlc_googlenet", url=url, cache_dir=tmp_path / "c2")
    assert _listing(tmp_path / "c2") == []


def test_command_line(tmp_path, capsys):
    fetch = lambda *args: cli.main(["weights", "fetch", *args])  # noqa: E731
    url, digest, _ = _serve(tmp_path)
    out = tmp_path / "cli.mat"
    assert fetch(url, "--sha256", digest, "-o", str(out)) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert fetch("--hash", str(out)) == 0
    assert capsys.readouterr().out.startswith(digest)
    assert fetch(url, "--sha256", "1" * 64, "-o", str(tmp_path / "x.mat")) == 1
    err = capsys.readouterr().err
    assert err.startswith("hdml-tf weights fetch: error: ") and "expected " + "1" * 64 in err
    assert fetch(url) == 2


def test_fetched_caffe_file_converts_and_loads(tmp_path):
    """End to end: a synthetic GoogLeNet .npz, fetched over file://, converted, loaded."""
    from hdml_tf.backbones import (InceptionV1, build_backbone, convert_caffe_weights,
                                   save_caffe_weights)

    source = InceptionV1(include_top=False, input_shape=(64, 64, 3))  # random weights
    remote = tmp_path / "remote" / "googlenet_caffe.npz"
    save_caffe_weights(source, remote)
    digest = download.sha256_file(remote)

    fetched = download.fetch_weights(remote.as_uri(), digest, cache_dir=tmp_path / "cache")
    converted = tmp_path / "googlenet.weights.h5"
    convert_caffe_weights(fetched, converted, input_shape=(64, 64, 3))
    loaded = build_backbone("inception_v1", weights=str(converted), input_shape=(64, 64, 3))

    expected = {v.path: v.numpy() for v in source.weights}
    got = {v.path: v.numpy() for v in loaded.weights}
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    x = np.random.default_rng(0).uniform(-100, 100, (2, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x).numpy(), source(x).numpy(), rtol=1e-5, atol=1e-5)
