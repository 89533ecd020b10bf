import org.apache.thrift.protocol.TBinaryProtocol;
import org.apache.thrift.protocol.TMultiplexedProtocol;
import org.apache.thrift.transport.TSocket;
import org.apache.thrift.transport.layered.TFramedTransport;
import org.glammp.base.Base;
import org.glammp.cache.Cache;
import org.glammp.common.ServiceError;

/** Calls a glammp port from Java (Debian libthrift-java); usage: Status HOST PORT. */
public class Status {
  public static void main(String[] args) throws Exception {
    String host = args[0];
    int port = Integer.parseInt(args[1]);
    try (TFramedTransport transport = new TFramedTransport(new TSocket(host, port, 5000))) {
      transport.open();
      TBinaryProtocol proto = new TBinaryProtocol(transport);
      Base.Client base = new Base.Client(new TMultiplexedProtocol(proto, "Base"));
      System.out.println("multiplexed " + base.getStatus());
      Cache.Client cache = new Cache.Client(new TMultiplexedProtocol(proto, "Cache"));
      try {
        cache.get("missing", null);
        System.out.println("no error");
      } catch (ServiceError e) {
        System.out.println("ServiceError " + e.getCode() + " " + e.getOrigin() + " retryable="
            + e.isRetryable() + " " + e.getDetails().get("key"));
      }
    }
    try (TFramedTransport transport = new TFramedTransport(new TSocket(host, port, 5000))) {
      transport.open();
      Base.Client plain = new Base.Client(new TBinaryProtocol(transport));
      System.out.println("plain " + plain.getStatus());
    }
  }
}
