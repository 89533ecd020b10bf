"""Binary results that are sent while they are still being read.

A handler method whose result is `binary` may return a `StreamedBody` instead of bytes when
the value comes from another socket (a file on a storage node) and its length is known
before its first byte. On the binary fast path the server writes the reply's header, then
each chunk as it arrives, so the caller receives the first bytes while the rest is still on
its way, and the server holds one chunk, not the whole value. Everywhere else (other
protocols, THeader) the body is read whole first (`read_all`), as any result is.

Once the reply's first bytes are written the frame is promised: a body that fails midway
and cannot make up its bytes from elsewhere can only end the connection, which the caller
sees as a transport error instead of a ServiceError. Bodies are meant for sources that can
make up their bytes (another copy of the same file); a failure before the reply starts is
still an ordinary error.
"""

from __future__ import annotations

from collections.abc import Iterator

#: Values shorter than this are read whole by whoever makes them: the server joins small
#: replies into one buffer, which a body cannot be part of.
MIN_BYTES = 64 * 1024


class StreamedBody:
    """`length` bytes to be read from somewhere: `chunks()` yields exactly that many (or
    raises), once; `close()` releases what the body holds and is always called, whether the
    body was sent, cut short, or never started."""

    def __init__(self, length: int) -> None:
        if length < MIN_BYTES:
            raise ValueError(f"a body of {length} bytes is to be read whole")
        self.length = length

    def __len__(self) -> int:
        return self.length

    def chunks(self) -> Iterator[bytes | bytearray | memoryview]:
        raise NotImplementedError

    def close(self) -> None:
        """Releases what the body holds (idempotent)."""

    def read_all(self) -> bytes:
        """The whole value (for replies that cannot be streamed); closes the body."""
        try:
            out = bytearray(self.length)
            view, at = memoryview(out), 0
            for chunk in self.chunks():
                view[at : at + len(chunk)] = chunk
                at += len(chunk)
            return bytes(out)
        finally:
            self.close()
