// A Java 17 app as a bank writes it: java.net.http.HttpClient with the default proxy
// selector (-Dhttps.proxyHost/-Dhttps.proxyPort) and the JVM's truststore. Prints key=value.
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.security.MessageDigest;
import java.util.HexFormat;
import java.util.Random;

public class ProxyClient {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder().proxy(ProxySelector.getDefault()).build();
        String base = args[0];
        try {
            HttpResponse<String> report = client.send(
                HttpRequest.newBuilder(URI.create(base + "/ntb/report")).build(),
                HttpResponse.BodyHandlers.ofString());
            System.out.println("status=" + report.statusCode());
            System.out.println("bearer=" + report.body().contains("\"authorization\": \"Bearer "));
            byte[] data = new byte[Integer.parseInt(args[1]) * 1024 * 1024];
            new Random(7).nextBytes(data);
            HttpResponse<byte[]> echo = client.send(
                HttpRequest.newBuilder(URI.create(base + "/ntb/echo?echo=1"))
                    .POST(HttpRequest.BodyPublishers.ofByteArray(data)).build(),
                HttpResponse.BodyHandlers.ofByteArray());
            System.out.println("up=" + sha256(data));
            System.out.println("down=" + sha256(echo.body()));
            System.out.println("version=" + echo.version());
        } catch (Exception e) {
            System.out.println("error=" + e.getClass().getName() + ": " + e.getMessage());
        }
    }

    static String sha256(byte[] data) throws Exception {
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(data));
    }
}
