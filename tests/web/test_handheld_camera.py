"""Camera scanning on the handheld page, for devices with no scanner: chromium's camera films a video of
a barcode, and the page reads it. Chromium on Linux has no BarcodeDetector of its own, so this drives
the fallback: ZXing in WebAssembly (``barcode-detector`` from npm), loaded from the box under the page's
policy, never from a CDN. The pairing QR the dashboard shows pairs the phone the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import segno

from tests.conftest import ServerProcess
from tests.web.handheld import LONG_LEASES, Phone, Store, provisioned_server, trusting_browser, trusting_home
from tests.web.test_handheld import stored, writer_id

WIDTH, HEIGHT = 640, 480
BLACK, WHITE = 16, 235  # video levels of Y

# EAN-13 digit patterns (GS1 General Specifications 5.2.1.2): L and G for the left half, R for the right.
L_CODES = ["0001101", "0011001", "0010011", "0111101", "0100011", "0110001", "0101111", "0111011", "0110111", "0001011"]
G_CODES = ["0100111", "0110011", "0011011", "0100001", "0011101", "0111001", "0000101", "0010001", "0001001", "0010111"]
R_CODES = ["1110010", "1100110", "1101100", "1000010", "1011100", "1001110", "1010000", "1000100", "1001000", "1110100"]
PARITY = ["LLLLLL", "LLGLGG", "LLGGLG", "LLGGGL", "LGLLGG", "LGGLLG", "LGGGLL", "LGLGLG", "LGLGGL", "LGGLGL"]


def ean13_modules(code: str) -> str:
    """The 95 modules of an EAN-13 symbol, 1 for a bar."""
    first, left, right = int(code[0]), code[1:7], code[7:]
    halves = "".join((L_CODES if p == "L" else G_CODES)[int(d)] for p, d in zip(PARITY[first], left, strict=True))
    return "101" + halves + "01010" + "".join(R_CODES[int(d)] for d in right) + "101"


def y4m(path: Path, luma: list[bytearray], frames: int = 30) -> Path:
    """A 4:2:0 Y4M video of one still picture (chromium loops it)."""
    chroma = bytes([128]) * (WIDTH // 2 * HEIGHT // 2)
    picture = b"".join(bytes(row) for row in luma) + chroma + chroma
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            out.write(b"FRAME\n" + picture)
    return path


def blank() -> list[bytearray]:
    return [bytearray([WHITE]) * WIDTH for _ in range(HEIGHT)]


def barcode_video(path: Path, code: str) -> Path:
    luma, module = blank(), 5
    left = (WIDTH - 95 * module) // 2
    for i, bit in enumerate(ean13_modules(code)):
        if bit == "1":
            for row in luma[90:390]:
                row[left + i * module : left + (i + 1) * module] = bytes([BLACK]) * module
    return y4m(path, luma)


def qr_video(path: Path, text: str) -> Path:
    matrix = segno.make_qr(text, error="m").matrix
    luma, module = blank(), max(2, 400 // len(matrix))
    top, left = (HEIGHT - len(matrix) * module) // 2, (WIDTH - len(matrix) * module) // 2
    for y, line in enumerate(matrix):
        for x, dark in enumerate(line):
            if dark:
                for row in luma[top + y * module : top + (y + 1) * module]:
                    row[left + x * module : left + (x + 1) * module] = bytes([BLACK]) * module
    return y4m(path, luma)


@pytest.fixture
def box(tmp_path: Path) -> Iterator[ServerProcess]:
    server = provisioned_server(tmp_path / "box", env=LONG_LEASES)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_pairing_and_scanning_with_the_camera(box: ServerProcess, tmp_path: Path) -> None:
    store = Store(box)
    home = trusting_home(tmp_path / "home", box.data_dir / "tls" / "ca.pem")
    made = store.boss.post("/api/devices/pairing-codes")
    assert made.status_code == 201, made.text
    qr = qr_video(tmp_path / "qr.y4m", made.json()["qr"])

    # Pairing: the dashboard's QR, filmed.
    with trusting_browser(home, tmp_path / "profile", camera=qr) as context:
        phone = Phone(context, box)
        phone.page.fill("#pair-name", "Camera phone")
        phone.page.click("#pair-camera")
        phone.until("document.getElementById('pair-code').value !== ''", 30)
        assert phone.page.input_value("#pair-code") == made.json()["code"]
        phone.page.click("#pair-form button[type=submit]")
        phone.page.wait_for_selector("body[data-view='login']")
        writer = writer_id(phone)

    # Scanning: a product's EAN-13 on the shelf, filmed (the same phone, its camera now on the shelf).
    store.verifier("ines")
    session = store.session("ines", ["G-11"], start=True)
    product = next(p for p in store.products(60) if p["codes"] and p["codes"][0]["kind"] == "ean13")
    ean = product["codes"][0]["code"][-13:]
    shelf = barcode_video(tmp_path / "shelf.y4m", ean)
    with trusting_browser(home, tmp_path / "profile", camera=shelf) as context:
        phone = Phone(context, box)
        phone.login("ines", "ines-pass")
        phone.open_session(session["session_id"])
        phone.claim("G-11")
        phone.page.click("#count-camera")
        phone.until("document.body.dataset.scans === '1'", 30)
        assert phone.text("#last-name") == product["name"]
        phone.wait_drained(30)
        box_origin = urlsplit(box.url).netloc
        fetched = [u for u in phone.requests if "/static/vendor/" in u]
        assert any(u.endswith("/decoder.js") for u in fetched)
        assert any(u.endswith("/zxing_reader.wasm") for u in fetched)
        assert all(urlsplit(u).netloc == box_origin for u in phone.requests if u.startswith("http"))
        assert not phone.errors
    scans = [e for e in stored(box, writer) if e[2] == "scan.recorded"]
    assert len(scans) == 1
