"""First-use download of pretrained weights, against a server on 127.0.0.1 (never the internet).

The official URL is kept (https://download.pytorch.org/models/<name>-<sha>.pth) and the server
is reached through TL_WEIGHTS_MIRROR, the path users behind a firewall take.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.weights_server import hashed_name, tiny_weights, weights_server
from tl_cli.backbones import weights as W
from tl_cli.backbones.registry import load_state_dict_file
from tl_cli.errors import ConfigError, DownloadError, WeightsNotFound
from tl_cli.runtime.atomic import TMP_PREFIX
from tl_cli.runtime.locks import remove_unlocked_temporaries, try_lock_fd
from tl_cli.runtime.progress import Reporter, RichReporter

OFFICIAL = "https://download.pytorch.org/models/"
REPO = Path(__file__).resolve().parents[2]


class Recorder(Reporter):
    def __init__(self):
        self.total, self.got, self.logs = None, 0, []

    def start(self, description, total):
        self.total = total

    def advance(self, n=1, **fields):
        self.got += n

    def log(self, message):
        self.logs.append(message)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("TL_OFFLINE", raising=False)
    with weights_server() as srv:
        monkeypatch.setenv("TL_WEIGHTS_MIRROR", srv.url + "/mirror")
        yield srv


def _serve(srv, data: bytes, stem: str = "tiny") -> tuple[str, str]:
    """Serve `data` under its hashed name; returns (official URL, server path)."""
    name = hashed_name(stem, data)
    srv.files[f"/mirror/models/{name}"] = data
    return OFFICIAL + name, f"/mirror/models/{name}"


def _hub() -> Path:
    return Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"


def _leftovers() -> list[str]:
    return sorted(p.name for p in _hub().glob("*")) if _hub().is_dir() else []


def test_mirror_replaces_scheme_and_host_and_keeps_the_path():
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert W.mirrored(url, "http://mirror.lan") == "http://mirror.lan/models/resnet18-f37072fd.pth"
    assert W.mirrored(url, "https://m.corp/pytorch/") == "https://m.corp/pytorch/models/resnet18-f37072fd.pth"
    assert W.mirrored(url, "") == url
    for bad in ("ftp://m.lan", "m.lan/x", "http://"):
        with pytest.raises(ConfigError, match="TL_WEIGHTS_MIRROR"):
            W.mirrored(url, bad)


def test_hash_prefix_is_read_from_torchvisions_file_names():
    assert W.expected_hash_prefix("resnet18-f37072fd.pth") == "f37072fd"
    assert W.expected_hash_prefix("efficientnet_b0_rwightman-7f5810bc.pth") == "7f5810bc"
    assert W.expected_hash_prefix("alexnet-owt-7be5be79.pth") == "7be5be79"
    assert W.expected_hash_prefix("weights.pth") is None


def test_download_with_progress_lands_in_torch_hub_cache_and_loads_weights_only(server):
    data = tiny_weights()
    url, path = _serve(server, data)
    rec = Recorder()
    got = W.fetch_weights(url, reporter=rec)
    assert got == _hub() / url.rsplit("/", 1)[1] and got.read_bytes() == data
    assert server.requests == [path]  # through the mirror, with the official path
    assert rec.total == len(data) == rec.got and url.rsplit("/", 1)[1] in rec.logs[0]
    assert _leftovers() == [got.name]
    torch.testing.assert_close(load_state_dict_file(got)["w"], torch.load(io.BytesIO(data), weights_only=True)["w"])
    # second call: no request at all
    assert W.fetch_weights(url, reporter=rec) == got and len(server.requests) == 1


def test_rich_progress_bar_shows_size_and_speed(server):
    from rich.console import Console

    data = tiny_weights() * 40  # ~700 kB: several chunks
    name = f"big-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server.files[f"/mirror/models/{name}"] = data
    buf = io.StringIO()
    W.fetch_weights(OFFICIAL + name, reporter=RichReporter(Console(file=buf, force_terminal=True, width=150,
                                                                   color_system=None), unit="bytes"))
    text = buf.getvalue()
    size = f"{len(data) / 1e3:.1f}"  # rich's DownloadColumn: done/total kB, then the speed
    assert f"downloading {name}" in text and f"{size}/{size} kB" in text, text
    assert re.search(r"\d MB/s|\d kB/s", text), text


def test_hash_mismatch_is_refused_and_nothing_is_kept(server):
    data = tiny_weights()
    name = hashed_name("tiny", tiny_weights(seed=1))  # the name promises other bytes
    server.files[f"/mirror/models/{name}"] = data
    with pytest.raises(DownloadError, match="hash mismatch") as e:
        W.fetch_weights(OFFICIAL + name, reporter=Recorder())
    assert name.split("-")[1][:8] in str(e.value) and hashlib.sha256(data).hexdigest()[:8] in str(e.value)
    assert "not kept" in e.value.hint
    assert _leftovers() == []


def test_cut_transfer_leaves_nothing_and_the_next_run_succeeds(server):
    data = tiny_weights()
    url, path = _serve(server, data)
    server.mode[path] = "cut"
    with pytest.raises(DownloadError, match="cut off") as e:
        W.fetch_weights(url, reporter=Recorder())
    assert url.replace(OFFICIAL, server.url + "/mirror/models/") in str(e.value)
    assert _leftovers() == []
    server.mode[path] = "ok"
    assert W.fetch_weights(url, reporter=Recorder()).read_bytes() == data
    assert _leftovers() == [url.rsplit("/", 1)[1]]


@pytest.mark.parametrize("mode,code", [("404", 404), ("403", 403)])
def test_http_errors_are_one_line_naming_url_and_destination(server, mode, code):
    data = tiny_weights()
    url, path = _serve(server, data)
    if mode == "404":
        del server.files[path]
    else:
        server.mode[path] = mode
    with pytest.raises(DownloadError, match=f"HTTP {code}") as e:
        W.fetch_weights(url, reporter=Recorder())
    dest = _hub() / url.rsplit("/", 1)[1]
    assert server.url in str(e.value) and str(dest) in e.value.hint and "\n" not in str(e.value) + e.value.hint
    assert _leftovers() == []


def test_server_that_never_answers_times_out_within_the_limit(server):
    url, path = _serve(server, tiny_weights())
    server.mode[path] = "hang"
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"no answer .* within 1 s"):
        W.fetch_weights(url, reporter=Recorder(), timeout=1.0)
    assert time.monotonic() - t0 < 10  # the 1 s limit, not the default's minutes (slack: a busy CI machine)
    assert _leftovers() == []


def test_stall_in_the_middle_times_out_and_leaves_nothing(server, monkeypatch):
    url, path = _serve(server, tiny_weights())
    server.mode[path] = "stall"
    monkeypatch.setenv("TL_DOWNLOAD_TIMEOUT", "1")
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="within 1 s"):
        W.fetch_weights(url, reporter=Recorder())
    assert time.monotonic() - t0 < 10 and _leftovers() == []  # the 1 s stall limit, with slack for a busy machine


def test_no_network_is_one_clear_line(monkeypatch):
    monkeypatch.delenv("TL_OFFLINE", raising=False)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    monkeypatch.setenv("TL_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError, match="refused the connection") as e:
        W.fetch_weights(OFFICIAL + "tiny-0123abcd.pth", reporter=Recorder())
    assert f"127.0.0.1:{port}/models/tiny-0123abcd.pth" in str(e.value)
    assert str(_hub() / "tiny-0123abcd.pth") in e.value.hint


def test_disk_full_is_named_and_leaves_nothing(server, monkeypatch):
    url, _ = _serve(server, tiny_weights())

    def full(fh, chunk):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(W, "_write", full)
    with pytest.raises(DownloadError, match="disk full") as e:
        W.fetch_weights(url, reporter=Recorder())
    assert str(_hub()) in e.value.hint
    assert _leftovers() == []


def test_offline_never_touches_the_network_and_names_the_file(server, monkeypatch):
    url, _ = _serve(server, tiny_weights())
    monkeypatch.setenv("TL_OFFLINE", "1")
    with pytest.raises(WeightsNotFound, match="TL_OFFLINE=1") as e:
        W.fetch_weights(url, label="tiny")
    dest = _hub() / url.rsplit("/", 1)[1]
    assert f"{dest} is missing" in str(e.value) and "for tiny" in str(e.value)
    assert str(dest) in e.value.hint and "/mirror/models/" in e.value.hint
    assert server.requests == []


def test_offline_through_the_cli_for_a_torchvision_backbone(image_folder, monkeypatch):
    from typer.testing import CliRunner

    from tl_cli.cli import app

    monkeypatch.setenv("TL_OFFLINE", "1")
    r = CliRunner().invoke(app, ["extract", str(image_folder), "--backbone", "resnet18"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "resnet18-f37072fd.pth is missing (TL_OFFLINE=1: no download)" in " ".join(r.output.split())


def test_timeout_setting_is_validated(monkeypatch):
    monkeypatch.setenv("TL_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="TL_DOWNLOAD_TIMEOUT"):
        W.download_timeout()


def test_a_live_downloads_temporary_is_kept_and_a_dead_ones_removed(tmp_path):
    live = tmp_path / f"{TMP_PREFIX}x.pth.live.part"
    dead = tmp_path / f"{TMP_PREFIX}x.pth.dead.part"
    live.write_bytes(b"1")
    dead.write_bytes(b"2")
    fd = os.open(live, os.O_RDONLY)
    try:
        assert try_lock_fd(fd)
        assert remove_unlocked_temporaries(tmp_path, "x.pth") == 1
        assert live.exists() and not dead.exists()
    finally:
        os.close(fd)


def test_killed_download_leaves_nothing_used_and_the_next_run_cleans_up(server):
    """A real process killed mid-transfer (SIGKILL: no clean-up code runs)."""
    data = tiny_weights()
    url, path = _serve(server, data)
    server.mode[path] = "stall"  # half the bytes, then silence: the kill lands mid-transfer
    code = f"from tl_cli.backbones.weights import fetch_weights; fetch_weights({url!r}, timeout=60)"
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 0 for p in _hub().glob(TMP_PREFIX + "*")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    name = url.rsplit("/", 1)[1]
    assert not (_hub() / name).exists() and len(_leftovers()) == 1  # only the dead temporary
    server.mode[path] = "ok"
    assert W.fetch_weights(url, reporter=Recorder()).read_bytes() == data
    assert _leftovers() == [name]


@pytest.fixture
def downloadable_lenet(server):
    """A registered backbone (LeNet-5 with a state dict we serve) whose weights_url is on download.pytorch.org."""
    import dataclasses

    from tl_cli.backbones import create_backbone, get_spec
    from tl_cli.backbones.registry import _REGISTRY

    ref, _ = create_backbone("lenet5", pretrained=False)
    torch.manual_seed(3)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    url, _ = _serve(server, buf.getvalue(), stem="lenet5_test")
    spec = dataclasses.replace(get_spec("lenet5"), name="lenet5_download_test", has_pretrained=True, weights_url=url)
    _REGISTRY[spec.name] = spec
    try:
        yield spec, state
    finally:
        del _REGISTRY[spec.name]


def test_create_backbone_downloads_registered_weights_on_first_use(downloadable_lenet):
    from tl_cli.backbones import create_backbone

    spec, state = downloadable_lenet
    net, choice = create_backbone(spec.name)
    assert choice.pretrained and choice.path == _hub() / spec.weights_url.rsplit("/", 1)[1]
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def test_tl_extract_downloads_once_then_uses_the_cache(downloadable_lenet, server, image_folder):
    from typer.testing import CliRunner

    from tl_cli.cli import app

    spec, _ = downloadable_lenet
    args = ["extract", str(image_folder), "--backbone", spec.name, "--workers", "0", "--no-train"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "downloading " + server.url + "/mirror/models/lenet5_test-" in " ".join(first.output.split())
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0 and "downloading" not in second.output
    assert len(server.requests) == 1


def test_backbones_listing_says_torchvision_weights_come_on_first_use():
    from tl_cli.backbones.builtin import torchvision_weights_file
    from tl_cli.backbones.describe import describe

    d = describe("resnet18")
    assert d.downloadable and not d.weights_available
    path = torchvision_weights_file("resnet18")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    assert describe("resnet18").weights_available and not describe("lenet5").downloadable
