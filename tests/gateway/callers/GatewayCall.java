import org.apache.thrift.protocol.TBinaryProtocol;
import org.apache.thrift.protocol.TCompactProtocol;
import org.apache.thrift.protocol.TMultiplexedProtocol;
import org.apache.thrift.protocol.TProtocol;
import org.apache.thrift.transport.TSSLTransportFactory;
import org.apache.thrift.transport.TSocket;
import org.apache.thrift.transport.TTransport;
import org.apache.thrift.transport.layered.TFramedTransport;
import org.glammp.base.Base;
import org.glammp.cache.Cache;
import org.glammp.common.ServiceError;

/**
 * Calls through the gateway from Java (Debian libthrift-java).
 * Usage: GatewayCall HOST PORT binary|compact [KEYSTORE.p12 TRUSTSTORE.p12 PASSWORD]
 * With the stores the connection is TLS with a client certificate.
 */
public class GatewayCall {
  public static void main(String[] args) throws Exception {
    String host = args[0];
    int port = Integer.parseInt(args[1]);
    TSocket socket;
    if (args.length > 3) {
      TSSLTransportFactory.TSSLTransportParameters params =
          new TSSLTransportFactory.TSSLTransportParameters();
      params.setKeyStore(args[3], args[5], null, "PKCS12");
      params.setTrustStore(args[4], args[5], null, "PKCS12");
      socket = TSSLTransportFactory.getClientSocket(host, port, 10000, params);
    } else {
      socket = new TSocket(host, port, 10000);
      socket.open();
    }
    try (TTransport transport = new TFramedTransport(socket)) {
      TProtocol proto = args[2].equals("compact")
          ? new TCompactProtocol(transport) : new TBinaryProtocol(transport);
      Base.Client base = new Base.Client(new TMultiplexedProtocol(proto, "Base"));
      System.out.println("name " + base.getName());
      Cache.Client cache = new Cache.Client(new TMultiplexedProtocol(proto, "Cache"));
      System.out.println("get " + new String(cache.get("hello", null).getValue(), "UTF-8"));
      for (String key : new String[] {"bad key"}) {
        try {
          cache.get(key, null);
          System.out.println("no error");
        } catch (ServiceError e) {
          System.out.println("ServiceError " + e.getCode() + " " + e.getOrigin()
              + " retryable=" + e.isRetryable());
        }
      }
      try {
        cache.flush(0, "default");
        System.out.println("flushed");
      } catch (ServiceError e) {
        System.out.println("ServiceError " + e.getCode() + " " + e.getOrigin()
            + " retryable=" + e.isRetryable());
      }
    }
  }
}
