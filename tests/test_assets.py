"""Asset resolution: explicit path, assets dir, cache, download; checksums guard every route."""
import hashlib
import threading
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler

import pytest

from nstjax import assets as A
from nstjax.errors import NstjaxError


def test_every_shipped_style_and_content_matches_the_registry(assets):
    for name, asset in A.REGISTRY.items():
        if name.startswith("data/"):
            assert A.sha256_of(assets / name) == asset.sha256, name


def test_resolution_order(tmp_path, assets, monkeypatch):
    monkeypatch.setenv("NSTJAX_CACHE", str(tmp_path / "cache"))
    explicit = tmp_path / "mine.jpg"
    explicit.write_bytes((assets / "data/styles/mosaic.jpg").read_bytes())
    assert A.resolve(str(explicit)) == explicit
    assert A.resolve("data/styles/mosaic.jpg", assets=str(assets)) == assets / "data/styles/mosaic.jpg"
    with pytest.raises(NstjaxError, match="downloads are off"):
        A.resolve("data/styles/mosaic.jpg", assets=str(tmp_path / "empty"), download=False)
    with pytest.raises(NstjaxError, match="nope.jpg.*not found"):
        A.resolve("nope.jpg", assets=str(assets))


def test_corrupt_cached_file_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("NSTJAX_CACHE", str(tmp_path))
    bad = tmp_path / "data/styles/candy.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not candy")
    with pytest.raises(NstjaxError, match="sha256 mismatch"):
        A.resolve("data/styles/candy.jpg", assets=str(tmp_path / "none"))


@pytest.fixture
def http_dir(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    srv = HTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


def test_download_is_verified_and_atomic(tmp_path, assets, http_dir, monkeypatch):
    root, url = http_dir
    payload = (assets / "data/styles/wave.jpg").read_bytes()
    (root / "good.jpg").write_bytes(payload)
    (root / "bad.jpg").write_bytes(payload[:1000])
    sha = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "cache" / "wave.jpg"
    with pytest.raises(NstjaxError, match="could not download"):
        A.fetch("wave", A.Asset(sha, (f"{url}/bad.jpg",)), dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial file left behind
    # The first route fails (truncated), the second succeeds: routes are tried in order.
    A.fetch("wave", A.Asset(sha, (f"{url}/bad.jpg", f"{url}/good.jpg")), dest)
    assert A.sha256_of(dest) == sha
