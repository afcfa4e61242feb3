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


# -- the apps a server starts end with their tab, and with the server -------------------------------
def app_processes(model: Path) -> list[int]:
    """The app processes (not the server) running `model`, found by their command line."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"nntrace.cli" in args and str(model).encode() in args and b"serve" not in args and state != "Z":
            pids.append(int(cmdline.parent.name))
    return pids


def wait_until(condition, seconds: float) -> float:
    """Seconds until `condition()` held; fails the test after `seconds`."""
    started = time.time()
    while not condition():
        if time.time() - started > seconds:
            pytest.fail(f"still not so after {seconds} s")
        time.sleep(0.1)
    return time.time() - started


class Browser:
    """Headless Chromium driven over its DevTools protocol: open a tab, wait for the app's first
    screen in it, close it."""

    def __init__(self, profile: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--remote-debugging-port={self.port}", "--window-size=1000,700",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def __aenter__(self) -> "Browser":
        import aiohttp

        self.http = aiohttp.ClientSession()
        for _ in range(100):
            try:
                async with self.http.get(f"http://127.0.0.1:{self.port}/json/version") as resp:
                    url = (await resp.json())["webSocketDebuggerUrl"]
                    break
            except aiohttp.ClientError:
                await asyncio.sleep(0.2)
        self.ws = await self.http.ws_connect(url, max_msg_size=0)
        self.ids = iter(range(1, 10**6))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()
        await self.http.close()
        self.process.kill()
        self.process.wait(10)

    async def call(self, method: str, session: str | None = None, **params):
        mid = next(self.ids)
        await self.ws.send_str(json.dumps({"id": mid, "method": method, "params": params,
                                           **({"sessionId": session} if session else {})}))
        async for msg in self.ws:
            data = json.loads(msg.data)
            if data.get("id") == mid:
                return data.get("result", {})

    async def open(self, url: str) -> str:
        """A new tab showing `url`, once the app's first screen has arrived in it."""
        target = (await self.call("Target.createTarget", url=url))["targetId"]
        session = (await self.call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
        for _ in range(240):
            result = await self.call("Runtime.evaluate", session,
                                     expression="document.body && document.body.classList.contains('-first-byte')")
            if result.get("result", {}).get("value"):
                return target
            await asyncio.sleep(0.25)
        pytest.fail(f"the app never sent its first screen to the tab at {url}")

    async def close(self, target: str) -> None:
        await self.call("Target.closeTarget", targetId=target)


@pytest.fixture
def served(tmp_path):
    """`start(model)`: an `nntrace serve` of `model` on 127.0.0.1 (its own process group); the server
    and any app left over are killed afterwards."""
    started = []

    def start(model: Path) -> tuple[subprocess.Popen, str]:
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "nntrace.cli", "serve", "cnn", "--model", str(model),
                                   "--port", str(port), "--host", "127.0.0.1"], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                  env={**os.environ, "NNTRACE_STATE": str(tmp_path / "state")})
        started.append((server, model))
        wait_for_port(port, 60)
        return server, f"http://127.0.0.1:{port}/"

    yield start
    for server, model in started:
        for pid in [server.pid, *app_processes(model)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        server.wait(10)


def test_closing_a_tab_ends_its_app_and_sigterm_ends_an_app(tmp_path, served):
    """Keras is still loading in the background when the tab closes: the app does not wait for it."""
    assert CHROMIUM, "CI must install chromium"
    model = small_cnn()
    model.save(tmp_path / "m.keras")
    path = load_scratch(model).save_weights(tmp_path / "m.npz")
    server, url = served(path)

    async def scenario() -> None:
        async with Browser(tmp_path / "profile") as browser:
            first = await browser.open(url)
            await browser.open(url)
            assert len(app_processes(path)) == 2
            await browser.close(first)
            assert wait_until(lambda: len(app_processes(path)) == 1, 5) < 5
            (other,) = app_processes(path)
            os.kill(other, signal.SIGTERM)
            wait_until(lambda: not app_processes(path), 5)
            assert server.poll() is None  # the server goes on serving

    asyncio.run(scenario())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_stopping_the_server_ends_every_app_it_started(tmp_path, served, sig):
    """SIGTERM and SIGINT: the server ends its apps; SIGKILL: each app sees its input hang up."""
    assert CHROMIUM, "CI must install chromium"
    path = load_scratch(small_cnn()).save_weights(tmp_path / f"m-{sig.name}.npz")
    server, url = served(path)

    async def scenario() -> None:
        async with Browser(tmp_path / "profile") as browser:
            await browser.open(url)
            await browser.open(url)
            assert len(app_processes(path)) == 2
            os.kill(server.pid, sig)
            wait_until(lambda: server.poll() is not None and not app_processes(path), 10)
            assert server.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 0)

    asyncio.run(scenario())


def test_a_port_in_use_is_one_line_and_nothing_is_served(tmp_path, capsys):
    from nntrace import cli

    path = load_scratch(small_cnn()).save_weights(tmp_path / "m.npz")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--model", str(path), "--host", "127.0.0.1", "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert "serving" not in out
    assert err == (f"nntrace: cannot serve on 127.0.0.1:{port}: the port is in use (by another program, or another "
                   "nntrace serve); pick another with --port or --host\n")
