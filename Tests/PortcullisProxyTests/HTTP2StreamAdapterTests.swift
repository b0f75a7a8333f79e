import NIOCore
import NIOHPACK
import Testing

@testable import PortcullisProxy

/// The HTTP/2 ↔ HTTP/1.1 conversions of one stream (RFC 9113 §8.3.1, §8.5), without sockets.
@Suite struct HTTP2StreamAdapterTests {
    func head(_ pairs: [(String, String)], endStream: Bool = true) -> Result<HTTP2StreamAdapter.ConvertedRequest, HTTP2StreamAdapter.RequestRefusal> {
        HTTP2StreamAdapter.requestHead(HPACKHeaders(pairs), endStream: endStream, allocator: ByteBufferAllocator())
    }

    func text(_ result: Result<HTTP2StreamAdapter.ConvertedRequest, HTTP2StreamAdapter.RequestRefusal>) -> String? {
        guard case .success(let converted) = result else { return nil }
        return String(buffer: converted.bytes)
    }

    @Test func aGetBecomesAnAbsoluteFormRequestWithItsHostAndCookiesJoined() {
        let result = self.head([
            (":method", "GET"), (":scheme", "http"), (":authority", "o.test:8080"), (":path", "/a?b"),
            ("cookie", "a=1"), ("proxy-authorization", "Basic x"), ("cookie", "b=2"),
        ])
        #expect(
            self.text(result)
                == "GET http://o.test:8080/a?b HTTP/1.1\r\nhost: o.test:8080\r\nproxy-authorization: Basic x\r\ncookie: a=1; b=2\r\n\r\n"
        )
    }

    @Test func aBodyWithoutLengthIsChunkedAndOneWithALengthIsNot() throws {
        let chunked = self.head([(":method", "POST"), (":scheme", "http"), (":authority", "o"), (":path", "/")], endStream: false)
        #expect(self.text(chunked)?.contains("transfer-encoding: chunked\r\n") == true)
        let sized = self.head(
            [(":method", "POST"), (":scheme", "http"), (":authority", "o"), (":path", "/"), ("content-length", "3")],
            endStream: false
        )
        #expect(self.text(sized)?.contains("transfer-encoding") == false)
        guard case .success(let converted) = sized else { return }
        #expect(!converted.chunked && !converted.isConnect)
    }

    @Test func connectTakesTheAuthorityAlone() {
        let result = self.head([(":method", "CONNECT"), (":authority", "o.test:443"), ("proxy-authorization", "Basic x")], endStream: false)
        #expect(self.text(result) == "CONNECT o.test:443 HTTP/1.1\r\nhost: o.test:443\r\nproxy-authorization: Basic x\r\n\r\n")
        guard case .success(let converted) = result else { return }
        #expect(converted.isConnect && !converted.chunked)
    }

    @Test(arguments: [
        ([(":method", "CONNECT"), (":authority", "o:443"), (":path", "/")], "bad-connect"),
        ([(":method", "CONNECT"), (":authority", "o:443"), (":protocol", "websocket")], "extended-connect"),
        ([(":method", "GET"), (":scheme", "http"), (":path", "/")], "missing-pseudo-header"),
        ([(":method", "GET"), (":authority", "o"), (":scheme", "http")], "missing-pseudo-header"),
        ([(":method", "GET"), (":authority", "o"), (":scheme", "http"), (":path", "/"), (":bogus", "1")], "bad-pseudo-header"),
    ])
    func malformedRequestsAreRefusedOnTheirStream(pairs: [(String, String)], details: String) {
        guard case .failure(let refusal) = self.head(pairs) else {
            Issue.record("accepted")
            return
        }
        #expect(refusal.details == details)
        #expect((400...501).contains(refusal.status))
    }

    @Test(arguments: [
        ("NTLM TlRMTVNTUAABAAAA", true),
        ("ntlm TlRMTVNTUAABAAAA", true),
        ("Negotiate TlRMTVNTUAABAAAA", true),
        ("Negotiate YIIBhgYGKwYBBQUCoIIBejCCAXagMDAu", false),
        ("Basic YWxpY2U6c2VjcmV0", false),
        ("NTLMfoo", false),
    ])
    func ntlmIsRecognisedWhereverItIsCarried(value: String, ntlm: Bool) {
        #expect(HTTP2StreamAdapter.carriesNTLM(HPACKHeaders([("proxy-authorization", value)])) == ntlm)
    }

    @Test func aResponseHeadIsTakenOnceWholeAndTheBodyStays() throws {
        var buffer = ByteBuffer(string: "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic")
        #expect(HTTP2StreamAdapter.takeResponseHead(&buffer) == nil)
        buffer.writeString(" realm=\"R\"\r\nContent-Length: 2\r\n\r\nhi")
        let head = try #require(HTTP2StreamAdapter.takeResponseHead(&buffer))
        #expect(head.status == 407)
        #expect(head.fields.map(\.name) == ["Proxy-Authenticate", "Content-Length"])
        #expect(head.fields[0].value == "Basic realm=\"R\"")
        #expect(String(buffer: buffer) == "hi")
    }

    @Test func chunkedBodiesAreDecodedAcrossAnySplit() {
        let wire = "5;ext=1\r\nhello\r\n0b\r\n world, hi!\r\n0\r\nx-trailer: dropped\r\n\r\n"
        for split in 1..<wire.utf8.count {
            var decoder = ChunkedDecoder()
            // Split by bytes ("\r\n" is one Character).
            var first = ByteBuffer(bytes: Array(wire.utf8).prefix(split))
            var second = ByteBuffer(bytes: Array(wire.utf8).dropFirst(split))
            let (a, doneA) = decoder.decode(&first)
            let (b, doneB) = decoder.decode(&second)
            #expect(!doneA)
            #expect(doneB, "split at \(split)")
            #expect(String(buffer: a) + String(buffer: b) == "hello world, hi!", "split at \(split)")
        }
    }
}
