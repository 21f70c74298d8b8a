"""Remote rasters are read by range: a COG over HTTP or at ``s3://`` ingests without being downloaded.

The COG is a sparse one (``SPARSE_OK``, with overviews, as ``gdal_translate -of COG`` makes
them): 1 % of its full-resolution blocks hold data, the others are left out of the file.
Ingest must equal the ingest of the local file, and the servers must have sent only the
header (the IFDs and tile tables GDAL reads on open) and the occupied blocks: not the
overviews, and nothing of the left-out blocks, which have no bytes at all. (A dense file's
empty blocks would have to be fetched, to learn that they are empty.)

Both servers listen on 127.0.0.1 only: a small range-capable HTTP server written here,
and moto's S3 server, whose request recorder says which ranges GDAL asked for.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import moto_s3

N, BLOCK = 8192, 256  # 32 x 32 blocks of 256 px, uint16
HELD = 10  # blocks that hold data: 1 %
CHUNK = 16384  # GDAL's /vsicurl/ reads whole 16 kB chunks: the most a request may fetch beyond what it needs

# A range-capable file server, in its own process: rasterio keeps the GIL while GDAL opens a
# file, so a server thread in the test's process could not answer GDAL's requests.
# GET /_log returns the requests served since the last call, as [method, path, range, bytes sent].
_SERVER = r"""
import http.server, json, os, re, sys, threading
root, log, lock = sys.argv[1], [], threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.serve(body=False)

    def do_GET(self):
        if self.path == "/_log":
            with lock:
                body = json.dumps(log).encode()
                log.clear()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.serve(body=True)

    def serve(self, body):
        path = os.path.join(root, self.path.split("?")[0].lstrip("/"))
        sent = 0
        if not os.path.isfile(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            size = os.path.getsize(path)
            asked = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            start, stop = 0, size
            if asked:
                start = int(asked.group(1))
                stop = min(int(asked.group(2)) + 1, size) if asked.group(2) else size
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
            else:
                self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(stop - start))
            self.end_headers()
            if body:
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read(stop - start)
                self.wfile.write(data)
                sent = len(data)
        with lock:
            log.append([self.command, self.path, self.headers.get("Range"), sent])

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@dataclass(frozen=True)
class Cog:
    """The COG, and where its bytes lie: ``header`` bytes before any block, and the occupied blocks' ranges."""

    path: Path
    size: int
    header: int
    held: tuple[tuple[int, int], ...]  # (offset, length) of each full-resolution block in the file
    overviews: int  # bytes of the overviews' blocks


def _blocks(src: Any) -> list[tuple[int, int]]:
    """``(offset, length)`` of every block the file holds (band 1), from GDAL's tile tables."""
    rows, cols = src.block_shapes[0]
    out = []
    for i in range(-(-src.height // rows)):
        for j in range(-(-src.width // cols)):
            offset = src.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=1)
            if offset:
                out.append((int(offset), int(src.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=1))))
    return out


@pytest.fixture(scope="module")
def cog(tmp_path_factory: pytest.TempPathFactory) -> Cog:
    import rasterio
    import rasterio.shutil
    from affine import Affine
    from rasterio.windows import Window

    folder = tmp_path_factory.mktemp("cog")
    rng = np.random.default_rng(16)
    flat = rng.choice((N // BLOCK) ** 2, HELD, replace=False)
    draft = folder / "draft.tif"
    with rasterio.open(draft, "w", driver="GTiff", width=N, height=N, count=1, dtype="uint16", tiled=True,
                       blockxsize=BLOCK, blockysize=BLOCK, SPARSE_OK=True, nodata=0, crs="EPSG:32618",
                       transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4600000.0)) as dst:
        for i, j in zip(flat // (N // BLOCK), flat % (N // BLOCK), strict=True):
            values = rng.integers(1, 4000, (BLOCK, BLOCK), dtype=np.uint16)
            values[rng.random((BLOCK, BLOCK)) < 0.5] = 0  # detections: half the block's pixels
            dst.write(values, 1, window=Window(j * BLOCK, i * BLOCK, BLOCK, BLOCK))
    path = folder / "scene.tif"
    rasterio.shutil.copy(draft, path, driver="COG", BLOCKSIZE=BLOCK, COMPRESS="DEFLATE", SPARSE_OK=True,
                         OVERVIEWS="AUTO", RESAMPLING="NEAREST")
    draft.unlink()
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        held = _blocks(src)
        levels = len(src.overviews(1))
    overview_blocks = []
    for level in range(levels):
        with rasterio.open(path, overview_level=level) as src:
            overview_blocks += _blocks(src)
    assert len(held) == HELD and overview_blocks
    return Cog(path, path.stat().st_size, min(o for o, _ in held + overview_blocks), tuple(sorted(held)),
               sum(n for _, n in overview_blocks))


def _check_ranges(cog: Cog, ranges: list[tuple[int, int]]) -> None:
    """The bytes served ``[(start, stop), ...]`` cover the header and every occupied block, and little else.

    Beyond those, each request may fetch at most one of GDAL's 16 kB chunks (it reads whole
    chunks); the overviews, a quarter of the file, are not fetched. The same bytes may be
    sent twice where two threads miss GDAL's cache at once (a block in the halo of two
    index blocks): what is bounded is the set of bytes sent, not their sum.
    """
    needed = [(0, cog.header)] + [(o, o + n) for o, n in cog.held]
    served = np.zeros(cog.size, dtype=bool)
    for start, stop in ranges:
        served[start:stop] = True
    for start, stop in needed:
        assert served[start:stop].all(), f"bytes {start}-{stop} were needed but not served"
    extra = served.copy()
    for start, stop in needed:
        extra[start:stop] = False
    assert int(extra.sum()) <= CHUNK * len(ranges), (int(extra.sum()), len(ranges))
    assert int(served.sum()) < cog.size - cog.overviews + CHUNK * len(ranges)


def _same_scene(got: Any, want: Any) -> None:
    assert got.info == want.info
    np.testing.assert_array_equal(got.index(), want.index())
    assert got.entries_total() == want.entries_total() > 0
    ny, nx = want.info.grid.grid_shape
    for r in range(ny):
        for c in range(nx):
            a, b = got.read_tile(r, c), want.read_tile(r, c)
            assert (a is None) == (b is None), (r, c)
            if a is not None and b is not None:
                for x, y in zip(a.coords(), b.coords(), strict=True):
                    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def local_store(cog: Cog, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tilepipe.execute.ingest import ingest

    return ingest(str(cog.path), tmp_path_factory.mktemp("local") / "scene.zarr", tile_size=1024)


# -- over HTTP ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_server(cog: Cog) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(cog.path.parent)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_http_cog_is_read_by_range(cog: Cog, http_server: str, local_store: Any, tmp_path: Path) -> None:
    from tilepipe.execute.ingest import ingest

    def served() -> list[list[Any]]:
        with urllib.request.urlopen(f"{http_server}/_log", timeout=10) as reply:
            return json.loads(reply.read())  # type: ignore[no-any-return]

    served()
    store = ingest(f"{http_server}/scene.tif", tmp_path / "scene.zarr", tile_size=1024)
    _same_scene(store, local_store)
    reads = [r for r in served() if r[1] == "/scene.tif" and r[0] == "GET"]
    assert reads and all(r[2] for r in reads), "every read of the raster asks for a range"
    ranges = []
    for _, _, asked, sent in reads:
        start = int(asked.removeprefix("bytes=").split("-")[0])
        ranges.append((start, start + sent))
    _check_ranges(cog, ranges)


# -- at s3:// (moto's server) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """moto's S3 server in its own process, recording requests; the environment points botocore at it.

    GDAL is not told about it: tilepipe passes ``AWS_ENDPOINT_URL`` on to GDAL's ``/vsis3/``.
    """
    pytest.importorskip("moto.server")
    logs = tmp_path_factory.mktemp("moto")
    recording = logs / "requests.jsonl"
    with moto_s3(logs, recording=recording) as endpoint:
        yield endpoint, recording


def test_s3_cog_is_read_by_range(cog: Cog, s3_endpoint: tuple[str, Path], local_store: Any, tmp_path: Path,
                                 caplog: pytest.LogCaptureFixture) -> None:
    import boto3

    from tilepipe.execute.ingest import ingest

    endpoint, recording = s3_endpoint
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="rasters")
    s3.upload_file(str(cog.path), "rasters", "remote/scene.tif")
    recorder = f"{endpoint}/moto-api/recorder"
    urllib.request.urlopen(urllib.request.Request(f"{recorder}/start-recording", method="POST"), timeout=10).close()

    store = ingest("s3://rasters/remote/scene.tif", tmp_path / "scene.zarr", tile_size=1024)
    _same_scene(store, local_store)
    requests = [json.loads(line) for line in recording.read_text().splitlines()]
    key = "/rasters/remote/scene.tif"
    reads = [r for r in requests if r["method"] == "GET" and r["url"].split("?")[0].endswith(key)]
    assert reads and all("Range" in r["headers"] for r in reads), "every read of the raster asks for a range"
    ranges = []
    for r in reads:
        start, stop = r["headers"]["Range"].removeprefix("bytes=").split("-")
        ranges.append((int(start), min(int(stop) + 1, cog.size)))
    _check_ranges(cog, ranges)
    assert "amazonaws" not in caplog.text  # GDAL asked moto, never AWS


def test_gdal_keeps_its_own_s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """``AWS_ENDPOINT_URL`` reaches GDAL only for ``s3://``, and never over GDAL's own setting."""
    from tilepipe.location import Location
    from tilepipe.sources.geotiff import _s3_endpoint

    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://minio.example:9000")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_S3_ENDPOINT", raising=False)
    assert _s3_endpoint(Location.of("s3://b/k.tif")) == {
        "AWS_S3_ENDPOINT": "minio.example:9000", "AWS_HTTPS": "YES", "AWS_VIRTUAL_HOSTING": "FALSE"}
    assert _s3_endpoint(Location.of("https://b/k.tif")) == {}
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    assert _s3_endpoint(Location.of("s3://b/k.tif"))["AWS_HTTPS"] == "NO"
    monkeypatch.setenv("AWS_S3_ENDPOINT", "elsewhere:1")
    assert _s3_endpoint(Location.of("s3://b/k.tif")) == {}
