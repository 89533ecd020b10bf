"""`glammp files`: put, get, list, remove and describe files through a glammp port.

    glammp files put KEY PATH|-      [--class C] [--domain D]   upload (stdin with -)
    glammp files get KEY [PATH|-]    [--domain D]               download (stdout by default)
    glammp files ls  [--prefix P] [--limit N] [--domain D]      keys, one a line
    glammp files rm  KEY...          [--domain D]
    glammp files info KEY            [--domain D]               JSON

Transfers stream in chunks (`--chunk-kib`) through an upload session and ranged reads, so
neither this process nor the service holds a whole file. A progress line goes to stderr when
a transfer lasts more than a moment and stderr is a terminal (or with `--progress`).
Exit codes: 0 done, 1 the service refused (the ServiceError is printed), 2 no connection.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from thrift.transport.TTransport import TTransportException

from glammp.common.ttypes import ServiceError
from glammp.filestore.ttypes import StoreOptions
from services.client import connect, to_json

#: Bytes per append_chunk / fetch_range call, in KiB.
DEFAULT_CHUNK_KIB = 4096
#: A transfer shows progress once it has run this long, in seconds.
PROGRESS_AFTER_S = 1.0
#: Least time between two progress updates, in seconds.
PROGRESS_EVERY_S = 0.2
#: Socket timeout of the CLI's connection, in seconds (a large finish_upload takes a while).
TIMEOUT_S = 600.0


class Progress:
    """A one-line progress report on `out`, shown only after PROGRESS_AFTER_S seconds."""

    def __init__(self, total: int | None, enabled: bool, out: IO[str] = sys.stderr) -> None:
        self.total = total
        self.enabled = enabled
        self.out = out
        self.started = time.monotonic()
        self.shown_at = 0.0
        self.done = 0

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if not self.enabled or now - self.started < PROGRESS_AFTER_S \
                or now - self.shown_at < PROGRESS_EVERY_S:
            return
        self.shown_at = now
        self.out.write("\r" + self._line(now))
        self.out.flush()

    def _line(self, now: float) -> str:
        mib = self.done / 1048576
        rate = mib / max(now - self.started, 1e-9)
        if self.total:
            pct = 100 * self.done / self.total
            return f"{mib:9.1f} / {self.total / 1048576:.1f} MiB {pct:5.1f}% {rate:7.1f} MiB/s"
        return f"{mib:9.1f} MiB {rate:7.1f} MiB/s"

    def finish(self) -> None:
        if self.shown_at:
            self.out.write("\r" + self._line(time.monotonic()) + "\n")
            self.out.flush()


def add_commands(sub: argparse._SubParsersAction) -> None:
    files = sub.add_parser("files", help="put, get, list and remove files (MogileFS)")
    files.set_defaults(func=lambda _: files.print_help() or 2)
    verbs = files.add_subparsers(dest="files_command", metavar="VERB")

    def verb(name: str, func: Callable[[argparse.Namespace], int],
             hlp: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=hlp)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=9090)
        p.add_argument("--domain", default="", help="MogileFS domain (default: the service's)")
        p.set_defaults(func=func)
        return p

    p = verb("put", cmd_put, "upload a file (or stdin with -)")
    p.add_argument("key")
    p.add_argument("path", help="file to upload, - for stdin")
    p.add_argument("--class", dest="storage_class", default=None, help="storage class")
    _transfer_args(p)
    p = verb("get", cmd_get, "download a file (to stdout by default)")
    p.add_argument("key")
    p.add_argument("path", nargs="?", default="-", help="where to write, - for stdout")
    _transfer_args(p)
    p = verb("ls", cmd_ls, "list keys")
    p.add_argument("--prefix", default="")
    p.add_argument("--limit", type=int, default=0, help="stop after this many keys (0: all)")
    p = verb("rm", cmd_rm, "remove files")
    p.add_argument("keys", nargs="+", metavar="KEY")
    p = verb("info", cmd_info, "show what MogileFS knows about a file, as JSON")
    p.add_argument("key")


def _transfer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chunk-kib", type=int, default=DEFAULT_CHUNK_KIB,
                   help="bytes per call, in KiB")
    p.add_argument("--progress", action="store_true", help="show progress even off a terminal")


def _run(args: argparse.Namespace, work: Callable[[Any], int]) -> int:
    """Connects, runs `work(client)`, and turns a ServiceError or a local file error into
    exit code 1."""
    try:
        with connect(args.host, args.port, "Filestore", TIMEOUT_S) as client:
            try:
                return work(client)
            except ServiceError as e:
                # Caught inside the `with`: generated exceptions cannot pass through it.
                detail = " ".join(f"{k}={v}" for k, v in sorted((e.details or {}).items()))
                print(f"glammp files: {e.code} {e.message} {detail}".rstrip(), file=sys.stderr)
                return 1
    except TTransportException as e:
        print(f"glammp files: cannot reach {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"glammp files: {e}", file=sys.stderr)
        return 1


def _show_progress(args: argparse.Namespace) -> bool:
    return bool(args.progress) or sys.stderr.isatty()


def cmd_put(args: argparse.Namespace) -> int:
    chunk = max(1, args.chunk_kib) * 1024
    opts = StoreOptions(storage_class=args.storage_class)

    def work(c: Any) -> int:
        src = sys.stdin.buffer if args.path == "-" else open(args.path, "rb")  # noqa: SIM115
        try:
            total = None if args.path == "-" else os.fstat(src.fileno()).st_size
            up = c.begin_upload(args.domain, args.key, opts)
            step = min(chunk, up.max_chunk)
            progress = Progress(total, _show_progress(args))
            sent = 0
            try:
                while data := src.read(step):
                    sent = c.append_chunk(up.upload_id, sent, data)
                    progress.update(sent)
                info = c.finish_upload(up.upload_id, None)
            except BaseException:
                try:
                    c.abort_upload(up.upload_id)
                except (ServiceError, TTransportException, OSError):
                    pass  # the session expires on its own
                raise
            progress.finish()
        finally:
            if src is not sys.stdin.buffer:
                src.close()
        print(f"{info.key}: {info.length} bytes, fid {info.fid}, class {info.storage_class}",
              file=sys.stderr)
        return 0

    return _run(args, work)


def cmd_get(args: argparse.Namespace) -> int:
    chunk = max(1, args.chunk_kib) * 1024

    def work(c: Any) -> int:
        total = c.info(args.domain, args.key).length
        to_stdout = args.path == "-"
        tmp = f"{args.path}.part" if not to_stdout else ""
        out = sys.stdout.buffer if to_stdout else open(tmp, "wb")  # noqa: SIM115
        progress = Progress(total, _show_progress(args))
        done = False
        try:
            got = 0
            while got < total:
                data = c.fetch_range(args.domain, args.key, got, min(chunk, total - got))
                if not data:
                    break  # the file shrank (overwritten) while we read it
                out.write(data)
                got += len(data)
                progress.update(got)
            progress.finish()
            done = got == total
        finally:
            if not to_stdout:
                out.close()
                if done:
                    os.replace(tmp, args.path)
                else:
                    os.unlink(tmp)
            else:
                out.flush()
        if not done:
            print(f"glammp files: {args.key} changed while being read", file=sys.stderr)
            return 1
        return 0

    return _run(args, work)


def cmd_ls(args: argparse.Namespace) -> int:
    def work(c: Any) -> int:
        after, shown = "", 0
        while True:
            page = c.list_keys(args.domain, args.prefix, after, 1000)
            for key in page.keys:
                if args.limit and shown >= args.limit:
                    return 0
                print(key)
                shown += 1
            if not page.next_after:
                return 0
            after = page.next_after

    return _run(args, work)


def cmd_rm(args: argparse.Namespace) -> int:
    def work(c: Any) -> int:
        for key in args.keys:
            c.remove(args.domain, key)
        return 0

    return _run(args, work)


def cmd_info(args: argparse.Namespace) -> int:
    def work(c: Any) -> int:
        print(json.dumps(to_json(c.info(args.domain, args.key)), indent=2, sort_keys=True))
        return 0

    return _run(args, work)
