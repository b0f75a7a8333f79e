import NIOCore
import Testing

@testable import PortcullisProxy

@Suite struct HeaderRewriterTests {
    /// The upstream head for a GET carrying `fields` (raw `Name: value` lines).
    private func forwarded(_ fields: [String], requestLine: String = "GET http://h/ HTTP/1.1") throws -> String {
        let head = try RequestHead.parse(([requestLine, "Host: h"] + fields).joined(separator: "\r\n") + "\r\n\r\n")
        let bytes = HeaderRewriter.upstreamRequestHead(
            head,
            pathAndQuery: "/",
            hostHeader: "h",
            allocator: ByteBufferAllocator()
        )
        return String(buffer: bytes)
    }

    @Test func removesHopByHopFieldsAndThoseNamedInConnection() throws {
        let text = try forwarded([
            "Proxy-Authorization: Basic c2VjcmV0", "proxy-connection: keep-alive",
            "Connection: keep-alive, X-Secret", "Keep-Alive: timeout=5", "TE: trailers",
            "Trailer: X-T", "Upgrade: websocket", "X-Secret: 1", "Accept: */*",
            "Proxy-Authenticate: Basic", "Proxy-Authentication-Info: x",
        ])
        #expect(text == "GET / HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nVia: 1.1 portcullis\r\n\r\n")
    }

    @Test func keepsAnExistingViaAndAppendsOurs() throws {
        let text = try forwarded(["Via: 1.0 other", "Content-Type: a/b"])
        #expect(text.contains("Via: 1.0 other\r\nContent-Type: a/b\r\nVia: 1.1 portcullis\r\n"))
    }

    @Test func connectionCloseDoesNotRemoveAFieldCalledClose() throws {
        #expect(try forwarded(["Connection: close", "Close: x"]).contains("Close: x\r\n"))
    }

    @Test func headerLinesAreCopiedByteForByte() throws {
        // Name case and inner spacing survive; only the surrounding OWS rules of the value apply.
        #expect(try forwarded(["x-MiXeD:  a  b"]).contains("\r\nx-MiXeD:  a  b\r\n"))
    }

    @Test func byteAndStringHopByHopChecksAgree() {
        for name in [
            "TE", "Trailer", "Upgrade", "Connection", "Keep-Alive", "Proxy-Connection",
            "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Authentication-Info", "Accept", "Via", "Host",
        ] {
            let bytes = ByteBuffer(string: name)
            #expect(HeaderRewriter.isAlwaysHopByHop(name) == HeaderRewriter.isAlwaysHopByHop(bytes.readableBytesView))
        }
        #expect(HeaderRewriter.isAlwaysHopByHop("proxy-AUTHORIZATION"))
        #expect(!HeaderRewriter.isAlwaysHopByHop("X-Proxy-Authorization"))
    }

    /// RFC 9112 §6.3: repeats of one length are sent on as one field, never as a list another
    /// parser may read as invalid (and then take the body for the next request).
    @Test(arguments: [["Content-Length: 4", "content-length: 4"], ["Content-Length: 4 , 4"]])
    func aRepeatedContentLengthGoesUpstreamAsOneField(fields: [String]) throws {
        let text = try forwarded(fields, requestLine: "POST http://h/ HTTP/1.1")
        #expect(text == "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nVia: 1.1 portcullis\r\n\r\n")
    }
}

@Suite struct UpstreamRequestHeadTests {
    private func serialize(_ text: String) throws -> String {
        let bytes = HeaderRewriter.upstreamRequestHead(
            try RequestHead.parse(text),
            pathAndQuery: "/p?q=1",
            hostHeader: "origin.example:8080",
            allocator: ByteBufferAllocator()
        )
        return String(buffer: bytes)
    }

    @Test func originFormTargetHostReplacedSecretsAndHopByHopDropped() throws {
        let text = try serialize(
            "GET http://origin.example:8080/p?q=1 HTTP/1.0\r\nHost: spoofed\r\n"
                + "Proxy-Authorization: Basic c2VjcmV0\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
                + "Accept: */*\r\nProxy-Connection: keep-alive\r\n\r\n"
        )
        #expect(
            text
                == "GET /p?q=1 HTTP/1.1\r\nHost: origin.example:8080\r\nAccept: */*\r\nVia: 1.1 portcullis\r\n\r\n"
        )
    }

    @Test func chunkedBodiesKeepTheirTransferEncoding() throws {
        let text = try serialize("POST http://o/ HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n")
        #expect(text.hasPrefix("POST /p?q=1 HTTP/1.1\r\n"))
        #expect(text.contains("Transfer-Encoding: chunked\r\n"))
    }
}
