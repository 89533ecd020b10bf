import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.KeyStore;
import java.security.cert.CertificateFactory;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.Callable;
import java.util.function.UnaryOperator;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.TrustManagerFactory;
import org.apache.thrift.TException;
import org.apache.thrift.protocol.TBinaryProtocol;
import org.apache.thrift.protocol.TMultiplexedProtocol;
import org.apache.thrift.transport.TSocket;
import org.apache.thrift.transport.TTransport;
import org.apache.thrift.transport.layered.TFramedTransport;
import org.glammp.base.Base;
import org.glammp.cache.Cache;
import org.glammp.cache.Item;
import org.glammp.cache.ReadOptions;
import org.glammp.cache.StoreResult;
import org.glammp.cache.Target;
import org.glammp.cache.ValueType;
import org.glammp.cache.WriteOptions;
import org.glammp.common.ErrorCode;
import org.glammp.common.ServiceError;
import org.glammp.filestore.FetchOptions;
import org.glammp.filestore.FileInfo;
import org.glammp.filestore.Filestore;
import org.glammp.filestore.StoreOptions;
import org.glammp.jobs.Job;
import org.glammp.jobs.JobResult;
import org.glammp.jobs.Jobs;
import org.glammp.jobs.Submitted;

/**
 * Calling glammp from Java: the cache, files and jobs over one multiplexed connection.
 *
 * <pre>
 *   java GlammpExample                    the tour (prints one line per step)
 *   java GlammpExample get KEY            reads one item and prints its value and PHP type
 *   java GlammpExample store DOMAIN KEY TEXT   stores a file
 * </pre>
 *
 * GLAMMP_HOST and GLAMMP_PORT say where glammp listens (default 127.0.0.1:9090). With
 * GLAMMP_TLS_CA (a PEM file) the connection is TLS, and the server's certificate must be signed
 * by that CA and name the host (what a gateway with [gateway.tls] offers). The jobs part
 * needs a worker serving {@code reverse}, e.g.
 * {@code glammp worker --server 127.0.0.1:4730 reverse=tests.examples.jobfuncs:reverse}.
 */
public final class GlammpExample implements AutoCloseable {
  /** Socket read timeout: must outlast the slowest call, here a foreground job. */
  static final int SOCKET_TIMEOUT_MS = 15_000;
  static final int CONNECT_TIMEOUT_MS = 5_000;
  static final int JOB_TIMEOUT_MS = 10_000;
  static final String PREFIX = "example:java:";

  final TTransport transport;
  final Base.Client base;
  final Cache.Client cache;
  final Filestore.Client files;
  final Jobs.Client jobs;

  /** One framed binary connection; every service is multiplexed over it by name. */
  GlammpExample(String host, int port, String tlsCa) throws Exception {
    TSocket socket;
    if (tlsCa == null) {
      socket = new TSocket(host, port, SOCKET_TIMEOUT_MS);
      socket.setConnectTimeout(CONNECT_TIMEOUT_MS);
    } else {
      socket = new TSocket(tlsSocket(host, port, tlsCa));
      socket.setTimeout(SOCKET_TIMEOUT_MS);
    }
    transport = new TFramedTransport(socket);
    if (!transport.isOpen()) {
      transport.open();
    }
    TBinaryProtocol protocol = new TBinaryProtocol(transport);
    base = new Base.Client(new TMultiplexedProtocol(protocol, "Base"));
    cache = new Cache.Client(new TMultiplexedProtocol(protocol, "Cache"));
    files = new Filestore.Client(new TMultiplexedProtocol(protocol, "Filestore"));
    jobs = new Jobs.Client(new TMultiplexedProtocol(protocol, "Jobs"));
  }

  /**
   * A connected TLS socket that trusts only the CA in the PEM file and checks that the server's
   * certificate names `host` (HTTPS rules). Thrift's TSSLTransportFactory wants a Java key
   * store instead of a PEM file, and does not check the host name.
   */
  static SSLSocket tlsSocket(String host, int port, String caPem)
      throws IOException, GeneralSecurityException {
    KeyStore trusted = KeyStore.getInstance(KeyStore.getDefaultType());
    trusted.load(null, null);
    try (InputStream in = new FileInputStream(caPem)) {
      trusted.setCertificateEntry("glammp-ca",
          CertificateFactory.getInstance("X.509").generateCertificate(in));
    }
    TrustManagerFactory trust =
        TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
    trust.init(trusted);
    SSLContext context = SSLContext.getInstance("TLS");
    context.init(null, trust.getTrustManagers(), null);
    SSLSocket socket = (SSLSocket) context.getSocketFactory().createSocket();
    SSLParameters params = socket.getSSLParameters();
    params.setEndpointIdentificationAlgorithm("HTTPS");
    socket.setSSLParameters(params);
    socket.connect(new InetSocketAddress(host, port), CONNECT_TIMEOUT_MS);
    socket.startHandshake();
    return socket;
  }

  @Override
  public void close() {
    transport.close();
  }

  static ByteBuffer bytes(String text) {
    return ByteBuffer.wrap(text.getBytes(StandardCharsets.UTF_8));
  }

  static String text(byte[] data) {
    return new String(data, StandardCharsets.UTF_8);
  }

  /** "400 BAD_REQUEST retryable=false origin=cache: message". */
  static String describe(ServiceError e) {
    ErrorCode name = ErrorCode.findByValue(e.getCode());
    return e.getCode() + " " + (name == null ? "UNKNOWN" : name) + " retryable="
        + e.isRetryable() + " origin=" + e.getOrigin() + ": " + e.getMessage();
  }

  /**
   * Runs the call, again (up to {@code attempts} times) while glammp says the error is
   * retryable, waiting what the error asks for. A 400 or 404 will not get better: rethrown.
   */
  static <T> T withRetry(Callable<T> call, int attempts) throws Exception {
    for (int i = 1; ; i++) {
      try {
        return call.call();
      } catch (ServiceError e) {
        if (!e.isRetryable() || i >= attempts) {
          throw e;
        }
        Thread.sleep(e.isSetRetry_after_ms() ? e.getRetry_after_ms() : 100);
      }
    }
  }

  /** Prints why a step is skipped when the server does not implement it yet (501). */
  static void skipIfNotImplemented(String step, ServiceError e) throws ServiceError {
    if (e.getCode() != ErrorCode.NOT_IMPLEMENTED.getValue()) {
      throw e;
    }
    System.out.println(step + " skipped: " + describe(e));
  }

  /**
   * The cas retry loop: read the item with its cas token, compute the new value, store it only
   * if nobody changed the item in between, and start over when somebody did.
   * Returns the attempts it took.
   */
  int casUpdate(String key, UnaryOperator<String> change, int maxAttempts) throws TException {
    for (int attempt = 1; attempt <= maxAttempts; attempt++) {
      Item item = cache.get(key, new ReadOptions());
      ByteBuffer value = bytes(change.apply(item.isFound() ? text(item.getValue()) : null));
      StoreResult result = item.isFound()
          ? cache.cas(key, value, item.getCas(), new WriteOptions())
          : cache.add(key, value, new WriteOptions());
      if (result == StoreResult.STORED) {
        return attempt;
      }
      // EXISTS: changed since we read it; NOT_FOUND / NOT_STORED: deleted or created meanwhile.
    }
    throw new IllegalStateException("cas on " + key + " lost " + maxAttempts + " times");
  }

  void cacheTour() throws Exception {
    ReadOptions read = new ReadOptions();
    StoreResult stored = cache.put(PREFIX + "greeting", bytes("hello from java"),
        new WriteOptions().setTtl(300));
    System.out.println("put " + stored);

    Item item = withRetry(() -> cache.get(PREFIX + "greeting", read), 3);
    System.out.println("get found value=" + text(item.getValue()) + " type=" + item.getType());

    cache.put(PREFIX + "a", bytes("1"), new WriteOptions());
    cache.put(PREFIX + "b", bytes("2"), new WriteOptions());
    List<String> keys = Arrays.asList(PREFIX + "a", PREFIX + "b", PREFIX + "missing");
    List<Item> items = cache.get_multi(keys, read, true);  // preserve_order: misses included
    long hits = items.stream().filter(Item::isFound).count();
    System.out.println("get_multi hits=" + hits + " misses=" + (items.size() - hits));

    // Delayed multi-get, as pecl/memcached's getDelayed/fetchAll: send the request, do other
    // work while the server gathers the keys, then read the answer.
    cache.send_get_multi(Arrays.asList(PREFIX + "a", PREFIX + "b"), read, false);
    // ... render the rest of the page here ...
    items = cache.recv_get_multi();
    System.out.println("delayed get_multi hits=" + items.size());

    // A concurrent writer is simulated inside the change function: it changes the counter
    // between our read and our cas, so the first cas answers EXISTS and the loop runs again.
    cache.put(PREFIX + "counter", bytes("0"), new WriteOptions());
    boolean[] interfered = {false};
    int attempts = casUpdate(PREFIX + "counter", old -> {
      if (!interfered[0]) {
        interfered[0] = true;
        try {
          cache.put(PREFIX + "counter", bytes("100"), new WriteOptions());
        } catch (TException e) {
          throw new IllegalStateException(e);
        }
      }
      return String.valueOf(Long.parseLong(old == null ? "0" : old) + 1);
    }, 10);
    String counter = text(cache.get(PREFIX + "counter", read).getValue());
    System.out.println("cas counter=" + counter + " attempts=" + attempts);

    // Namespaces: every key written under a namespace goes away with one call.
    try {
      Target ns = new Target().setNs("example-java");
      cache.put("profile:1", bytes("cached page"), new WriteOptions().setTarget(ns));
      boolean before = cache.get("profile:1", new ReadOptions().setTarget(ns)).isFound();
      cache.invalidate_namespace("example-java", "default");
      boolean after = cache.get("profile:1", new ReadOptions().setTarget(ns)).isFound();
      System.out.println("namespace invalidated before=" + (before ? "hit" : "miss")
          + " after=" + (after ? "hit" : "miss"));
    } catch (ServiceError e) {
      skipIfNotImplemented("namespace", e);
    }

    // A key with a space is not a memcached key: the cache answers ServiceError 400.
    try {
      cache.get("bad key", read);
      System.out.println("error none");
    } catch (ServiceError e) {
      System.out.println("error " + describe(e));
    }
  }

  void fileTour() throws TException {
    // The domain is made by an administrator (the dev cluster of `glammp serve` makes
    // "glammp"); create_domain is an admin method that the gateway refuses to frontends.
    String domain = System.getenv().getOrDefault("GLAMMP_DOMAIN", "glammp");
    String content = "a file stored from Java\n";
    try {
      FileInfo info = files.store(domain, "java/hello.txt", bytes(content), new StoreOptions());
      System.out.println("file stored " + info.getLength() + " bytes");
      ByteBuffer data = files.fetch(domain, "java/hello.txt", new FetchOptions());
      System.out.println("file fetched " + data.remaining() + " bytes same="
          + data.equals(bytes(content)));
    } catch (ServiceError e) {
      skipIfNotImplemented("file", e);
    }
  }

  void jobTour() throws Exception {
    try {
      JobResult result = jobs.submit(new Job().setName("reverse")
          .setWorkload(bytes("glammp-java")).setTimeout_ms(JOB_TIMEOUT_MS));
      System.out.println("job submit " + result.getStatus() + " data=" + text(result.getData()));

      Submitted submitted = jobs.submit_background(
          new Job().setName("reverse").setWorkload(bytes("background-java")));
      // Poll until gearmand no longer knows the job (it finished), with a bounded wait.
      for (int i = 0; i < 200 && jobs.status(submitted.getHandle()).isKnown(); i++) {
        Thread.sleep(50);
      }
      try {
        JobResult done = jobs.fetch_result(submitted.getHandle());
        System.out.println("job background " + done.getStatus() + " data=" + text(done.getData()));
      } catch (ServiceError e) {
        if (e.getCode() != ErrorCode.NOT_FOUND.getValue()) {
          throw e;
        }
        System.out.println("job background finished (no stored result: " + describe(e) + ")");
      }
    } catch (ServiceError e) {
      skipIfNotImplemented("job", e);
    }
  }

  public static void main(String[] args) throws Exception {
    String host = System.getenv().getOrDefault("GLAMMP_HOST", "127.0.0.1");
    int port = Integer.parseInt(System.getenv().getOrDefault("GLAMMP_PORT", "9090"));
    try (GlammpExample glammp = new GlammpExample(host, port, System.getenv("GLAMMP_TLS_CA"))) {
      String command = args.length > 0 ? args[0] : "tour";
      switch (command) {
        case "get": {
          Item item = glammp.cache.get(args[1], new ReadOptions());
          System.out.println(item.isFound()
              ? "get found value=" + text(item.getValue()) + " type=" + item.getType()
              : "get miss");
          break;
        }
        case "store": {
          FileInfo info = glammp.files.store(args[1], args[2], bytes(args[3]),
              new StoreOptions());
          System.out.println("file stored " + info.getLength() + " bytes");
          break;
        }
        default:
          System.out.println("status " + glammp.base.getStatus());
          glammp.cacheTour();
          glammp.fileTour();
          glammp.jobTour();
      }
    } catch (ServiceError e) {
      System.err.println("ServiceError " + describe(e));
      System.exit(2);
    }
  }
}
