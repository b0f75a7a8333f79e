import NIOCore
import NIOHTTP1
import Testing

@testable import PortcullisProxy

@Suite struct HeaderRewriterTests {
    private func forwarded(_ headers: HTTPHeaders) -> String {
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: headers)
        let (bytes, _) = HeaderRewriter.upstreamRequestHead(
            head,
            pathAndQuery: "/",
            hostHeader: "h",
            allocator: ByteBufferAllocator()
        )
        return String(buffer: bytes)
    }

    @Test func removesHopByHopFieldsAndThoseNamedInConnection() {
        let text = forwarded([
            "Proxy-Authorization": "Basic c2VjcmV0", "proxy-connection": "keep-alive",
            "Connection": "keep-alive, X-Secret", "Keep-Alive": "timeout=5", "TE": "trailers",
            "Trailer": "X-T", "Upgrade": "websocket", "X-Secret": "1", "Accept": "*/*",
            "Proxy-Authenticate": "Basic", "Proxy-Authentication-Info": "x",
        ])
        #expect(text == "GET / HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nVia: 1.1 portcullis\r\n\r\n")
    }

    @Test func keepsAnExistingViaAndAppendsOurs() {
        let text = forwarded(["Via": "1.0 other", "Content-Type": "a/b"])
        #expect(text.contains("Via: 1.0 other\r\nContent-Type: a/b\r\nVia: 1.1 portcullis\r\n"))
    }

    @Test func connectionCloseDoesNotRemoveAFieldCalledClose() {
        #expect(forwarded(["Connection": "close", "Close": "x"]).contains("Close: x\r\n"))
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
}

@Suite struct UpstreamRequestHeadTests {
    private func serialize(_ head: HTTPRequestHead) -> (String, Bool) {
        let (bytes, chunked) = HeaderRewriter.upstreamRequestHead(
            head,
            pathAndQuery: "/p?q=1",
            hostHeader: "origin.example:8080",
            allocator: ByteBufferAllocator()
        )
        return (String(buffer: bytes), chunked)
    }

    @Test func originFormTargetHostReplacedSecretsAndHopByHopDropped() {
        let head = HTTPRequestHead(
            version: .http1_0,
            method: .GET,
            uri: "http://origin.example:8080/p?q=1",
            headers: [
                "Host": "spoofed", "Proxy-Authorization": "Basic c2VjcmV0", "Connection": "keep-alive, X-Hop",
                "X-Hop": "1", "Accept": "*/*", "Proxy-Connection": "keep-alive",
            ]
        )
        let (text, chunked) = serialize(head)
        #expect(!chunked)
        #expect(
            text
                == "GET /p?q=1 HTTP/1.1\r\nHost: origin.example:8080\r\nAccept: */*\r\nVia: 1.1 portcullis\r\n\r\n"
        )
    }

    @Test func chunkedBodiesStayChunkedAndContentLengthIsDroppedBesideIt() {
        let head = HTTPRequestHead(
            version: .http1_1,
            method: .POST,
            uri: "/",
            headers: ["Transfer-Encoding": "chunked", "Content-Length": "5"]
        )
        let (text, chunked) = serialize(head)
        #expect(chunked)
        #expect(text.contains("Transfer-Encoding: chunked\r\n"))
        #expect(!text.contains("Content-Length"))
    }
}
