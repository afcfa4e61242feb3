"""`nntrace serve`: the app in a browser. Headless Chromium opens the page and waits for the app's
first screen (textual-serve marks the page `-first-byte` when the app's output arrives)."""
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nntrace.models import load_scratch
from tests.keras_models import small_cnn

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("headless Chromium is not installed here (CI installs it)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")


async def first_screen(url: str, debug_port: int, shot: Path) -> bool:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        for _ in range(50):
            try:
                async with http.get(f"http://127.0.0.1:{debug_port}/json") as resp:
                    pages = [p for p in await resp.json() if p["type"] == "page"]
                    if pages:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 10**6))

            async def call(method: str, **params):
                mid = next(ids)
                await ws.send_str(json.dumps({"id": mid, "method": method, "params": params}))
                async for msg in ws:
                    data = json.loads(msg.data)
                    if data.get("id") == mid:
                        return data.get("result", {})

            await call("Page.navigate", url=url)
            started = False
            for _ in range(120):
                result = await call("Runtime.evaluate",
                                    expression="document.body && document.body.classList.contains('-first-byte')")
                if result.get("result", {}).get("value"):
                    started = True
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(2)
            image = await call("Page.captureScreenshot", format="png")
            shot.write_bytes(base64.b64decode(image["data"]))
            return started


def test_serve_renders_the_first_screen_in_headless_chromium(tmp_path):
    assert CHROMIUM, "CI must install chromium"
    path = load_scratch(small_cnn()).save_weights(tmp_path / "m.npz")
    port, debug_port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "nntrace.cli", "serve", "cnn", "--model", str(path), "--port", str(port),
                               "--host", "127.0.0.1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True)  # its own process group: the app it starts goes too
    browser = None
    try:
        wait_for_port(port, 60)
        browser = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                                    "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
                                    f"--remote-debugging-port={debug_port}", "--window-size=1200,800", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shot = tmp_path / "serve.png"
        started = asyncio.run(first_screen(f"http://127.0.0.1:{port}/", debug_port, shot))
        assert started, "the app never sent its first screen to the browser"
        from PIL import Image
        with Image.open(shot) as img:
            colours = len(set(img.convert("RGB").getdata()))
        assert colours > 50  # the app's coloured screen, not the plain loading page
    finally:
        if browser is not None:
            browser.kill()
            browser.wait(10)
        os.killpg(server.pid, signal.SIGKILL)  # the server and every app process it started
        server.wait(10)
