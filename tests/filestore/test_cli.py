"""`glammp files put/get/ls/rm/info` against a served filestore."""

from __future__ import annotations

import argparse
import io
import json
import os
import uuid
from collections.abc import Callable

import pytest

from services.filestore import cli
from services.mogilefs.devcluster import DevCluster
from tests.filestore.conftest import Store


def _run(fs: Store, *argv: str) -> int:
    p = argparse.ArgumentParser(prog="glammp")
    cli.add_commands(p.add_subparsers(dest="command"))
    verb, *rest = argv
    args = p.parse_args(["files", verb, "--host", fs.host, "--port", str(fs.port), *rest])
    return int(args.func(args))


def test_put_get_ls_info_rm(filestore: Callable[..., Store], mogilefs: DevCluster,
                            tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    fs = filestore(mogilefs)
    base = str(tmp_path)
    src, dst = os.path.join(base, "src.bin"), os.path.join(base, "dst.bin")
    data = os.urandom(300 * 1024 + 17)
    with open(src, "wb") as f:
        f.write(data)
    prefix = f"cli-{uuid.uuid4().hex[:8]}/"
    # Small chunks make both directions take many calls.
    assert _run(fs, "put", prefix + "a.bin", src, "--chunk-kib", "64", "--class", "single") == 0
    assert _run(fs, "put", prefix + "b.bin", src) == 0
    assert _run(fs, "get", prefix + "a.bin", dst, "--chunk-kib", "64") == 0
    with open(dst, "rb") as f:
        assert f.read() == data
    capsys.readouterr()
    assert _run(fs, "ls", "--prefix", prefix) == 0
    assert capsys.readouterr().out.split() == [prefix + "a.bin", prefix + "b.bin"]
    assert _run(fs, "info", prefix + "a.bin") == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["length"], info["storage_class"]) == (len(data), "single")
    assert _run(fs, "rm", prefix + "a.bin", prefix + "b.bin") == 0
    assert _run(fs, "info", prefix + "a.bin") == 1
    assert "404" in capsys.readouterr().err
    assert _run(fs, "get", prefix + "a.bin", dst + ".2") == 1
    assert not os.path.exists(dst + ".2") and not os.path.exists(dst + ".2.part")


def test_progress_line() -> None:
    out = io.StringIO()
    progress = cli.Progress(1048576 * 10, True, out)
    progress.started -= 5  # as if the transfer had run five seconds
    progress.update(1048576 * 5)
    progress.finish()
    text = out.getvalue()
    assert "5.0 / 10.0 MiB" in text and "50.0%" in text and text.endswith("\n")
    quiet = io.StringIO()
    short = cli.Progress(100, True, quiet)
    short.update(50)
    short.finish()
    assert quiet.getvalue() == ""


def test_unreachable_port_is_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    from services.core.children import free_port

    fs = Store(handler=None, host="127.0.0.1", port=free_port())  # type: ignore[arg-type]
    assert _run(fs, "ls") == 2
    assert "cannot reach" in capsys.readouterr().err
