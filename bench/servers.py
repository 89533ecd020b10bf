"""Servers under test, each run in its own process: `python -m bench.servers KIND PORT`.

* `glammp`: glammp's server core with the base service (what every glammp port runs).
* `stock`: Thrift's TThreadedServer under gevent's monkey-patching, with the stock
  TMultiplexedProcessor, framed transport and the accelerated binary protocol: the usual way
  a Python Thrift service is served.

Prints "ready" once listening.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from glammp.base import Base  # noqa: E402
from glammp.base.ttypes import Status  # noqa: E402


class StockBase:
    def getName(self) -> str:
        return "stock"

    def getVersion(self) -> str:
        return "0"

    def getStatus(self) -> int:
        return Status.ALIVE

    def getStatusDetails(self) -> str:
        return ""

    def aliveSince(self) -> int:
        return 0

    def getCounters(self) -> dict:
        return {}

    def getCounter(self, key: str) -> int:
        return 0


def stock(port: int) -> None:
    from thrift.protocol.TBinaryProtocol import TBinaryProtocolAcceleratedFactory
    from thrift.server.TServer import TThreadedServer
    from thrift.TMultiplexedProcessor import TMultiplexedProcessor
    from thrift.transport.TSocket import TServerSocket
    from thrift.transport.TTransport import TFramedTransportFactory

    processor = TMultiplexedProcessor()
    processor.registerProcessor("Base", Base.Processor(StockBase()))
    server = TThreadedServer(processor, TServerSocket("127.0.0.1", port),
                             TFramedTransportFactory(), TBinaryProtocolAcceleratedFactory(),
                             daemon=True)
    print("ready", flush=True)
    server.serve()


def glammp(port: int) -> None:
    from services.core.runner import ServeSpec, run
    from services.core.server import ServerConfig

    cfg = ServerConfig(port=port, admin_port=-1)
    run(ServeSpec(cfg, lambda: [], on_ready=lambda t, a: print("ready", flush=True)))


if __name__ == "__main__":
    {"stock": stock, "glammp": glammp}[sys.argv[1]](int(sys.argv[2]))
