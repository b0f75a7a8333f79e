/*
 * One request through a proxy with Java's own HTTP clients, configured the way Java programs are:
 * the proxy from the standard system properties (http.proxyHost/Port, https.proxyHost/Port, read
 * by the default ProxySelector), credentials from a java.net.Authenticator that answers proxy
 * challenges, the JDK's default trust store unless -Djavax.net.ssl.trustStore says otherwise.
 * Prints ONE JSON line: {"status": int|null, "body": str, "error": str|null, "client_version": str}.
 *
 *   java [JVM options] ProxyClient.java --api httpclient|urlconnection --proxy URL --url URL
 *        [--user U --password P] [--timeout SECONDS] [--scheme-hint S] [--cacert FILE]
 *
 * --api httpclient: java.net.http.HttpClient (Basic only; the Authenticator is asked after a 407).
 * --api urlconnection: java.net.HttpURLConnection / HttpsURLConnection (Basic, Digest, NTLM,
 *   Negotiate; the JDK picks the strongest scheme offered).
 * An https:// --proxy is configured like any other (Java has no TLS-to-proxy support): the host and
 * port go into the properties and Java speaks plain HTTP to them.
 * --cacert FILE (PEM) builds the trust for https origins in memory; without it the JDK's trust
 * store (javax.net.ssl.trustStore) is used.
 * Exit 0 whenever a result could be reported (a 407 or an exception from the client included);
 * 2 when the driver itself was used wrongly.
 */

import java.io.ByteArrayOutputStream;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.Authenticator;
import java.net.HttpURLConnection;
import java.net.PasswordAuthentication;
import java.net.ProxySelector;
import java.net.URI;
import java.net.URL;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import javax.net.ssl.HttpsURLConnection;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public class ProxyClient {
    static final int BODY_LIMIT = 2000;

    public static void main(String[] argv) {
        Map<String, String> opt = new HashMap<>();
        for (int i = 0; i < argv.length; i++) {
            if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
                usage("bad argument " + argv[i]);
            }
            opt.put(argv[i].substring(2), argv[++i]);
        }
        String api = opt.getOrDefault("api", "");
        if (!opt.containsKey("proxy") || !opt.containsKey("url") || !(api.equals("httpclient") || api.equals("urlconnection"))) {
            usage("--api httpclient|urlconnection, --proxy and --url are required");
        }
        String version = "java " + System.getProperty("java.version") + " "
                + (api.equals("httpclient") ? "java.net.http.HttpClient" : "HttpURLConnection");
        Integer status = null;
        String body = "";
        String error = null;
        try {
            URI proxy = new URI(opt.get("proxy"));
            int port = proxy.getPort() > 0 ? proxy.getPort() : ("https".equals(proxy.getScheme()) ? 443 : 80);
            for (String p : new String[] {"http", "https"}) {
                System.setProperty(p + ".proxyHost", proxy.getHost());
                System.setProperty(p + ".proxyPort", Integer.toString(port));
            }
            String user = opt.get("user");
            String password = opt.getOrDefault("password", "");
            if (user != null) {
                Authenticator.setDefault(new ProxyAuthenticator(user, password));
            }
            SSLContext tls = opt.containsKey("cacert") ? contextFor(opt.get("cacert")) : SSLContext.getDefault();
            double seconds = Double.parseDouble(opt.getOrDefault("timeout", "10"));
            Duration timeout = Duration.ofMillis((long) (seconds * 1000));
            Object[] out = api.equals("httpclient")
                    ? viaHttpClient(opt.get("url"), user != null, tls, timeout)
                    : viaUrlConnection(opt.get("url"), tls, timeout);
            status = (Integer) out[0];
            body = (String) out[1];
        } catch (Exception e) {
            error = e.getClass().getName() + ": " + e.getMessage();
            e.printStackTrace(); // stderr: for whoever reads the test's output
        }
        StringBuilder json = new StringBuilder("{\"status\": ");
        json.append(status == null ? "null" : status.toString());
        json.append(", \"body\": ").append(quote(body));
        json.append(", \"error\": ").append(error == null ? "null" : quote(error));
        json.append(", \"client_version\": ").append(quote(version)).append("}");
        System.out.println(json);
    }

    /** As real programs do: answer proxy challenges only, with the configured credentials. */
    static final class ProxyAuthenticator extends Authenticator {
        final String user;
        final char[] password;

        ProxyAuthenticator(String user, String password) {
            this.user = user;
            this.password = password.toCharArray();
        }

        @Override
        protected PasswordAuthentication getPasswordAuthentication() {
            if (getRequestorType() != RequestorType.PROXY) {
                return null;
            }
            return new PasswordAuthentication(user, password);
        }
    }

    static Object[] viaHttpClient(String url, boolean withAuthenticator, SSLContext tls, Duration timeout) throws Exception {
        HttpClient.Builder builder = HttpClient.newBuilder()
                .proxy(ProxySelector.getDefault())
                .sslContext(tls)
                .connectTimeout(timeout);
        if (withAuthenticator) {
            builder.authenticator(Authenticator.getDefault());
        }
        HttpClient client = builder.build();
        HttpRequest request = HttpRequest.newBuilder(URI.create(url)).timeout(timeout).GET().build();
        HttpResponse<byte[]> response = client.send(request, HttpResponse.BodyHandlers.ofByteArray());
        return new Object[] {response.statusCode(), text(response.body())};
    }

    static Object[] viaUrlConnection(String url, SSLContext tls, Duration timeout) throws Exception {
        HttpURLConnection conn = (HttpURLConnection) new URL(url).openConnection();
        if (conn instanceof HttpsURLConnection) {
            ((HttpsURLConnection) conn).setSSLSocketFactory(tls.getSocketFactory());
        }
        conn.setConnectTimeout((int) timeout.toMillis());
        conn.setReadTimeout((int) timeout.toMillis());
        int code = conn.getResponseCode();
        InputStream in = code >= 400 ? conn.getErrorStream() : conn.getInputStream();
        byte[] data = in == null ? new byte[0] : readAll(in);
        conn.disconnect();
        return new Object[] {code, text(data)};
    }

    static SSLContext contextFor(String pemFile) throws Exception {
        KeyStore store = KeyStore.getInstance(KeyStore.getDefaultType());
        store.load(null, null);
        try (InputStream in = new FileInputStream(pemFile)) {
            int n = 0;
            for (Certificate cert : CertificateFactory.getInstance("X.509").generateCertificates(in)) {
                store.setCertificateEntry("ca" + n++, cert);
            }
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(store);
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(null, tmf.getTrustManagers(), null);
        return ctx;
    }

    static byte[] readAll(InputStream in) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        byte[] buf = new byte[8192];
        int n;
        while ((n = in.read(buf)) > 0 && out.size() < 65536) {
            out.write(buf, 0, n);
        }
        in.close();
        return out.toByteArray();
    }

    static String text(byte[] data) {
        if (data == null) { // HttpClient's answer to a refused CONNECT: the 407 without a body
            return "";
        }
        String s = new String(data, StandardCharsets.UTF_8);
        return s.length() > BODY_LIMIT ? s.substring(0, BODY_LIMIT) : s;
    }

    static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
            }
        }
        return b.append('"').toString();
    }

    static void usage(String why) {
        System.err.println("ProxyClient: " + why);
        System.err.println("usage: java ProxyClient.java --api httpclient|urlconnection --proxy URL --url URL "
                + "[--user U --password P] [--timeout S] [--cacert FILE]");
        System.exit(2);
    }
}
