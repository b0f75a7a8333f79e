import NIOHTTP1
import Testing

@testable import PortcullisProxy

@Suite struct HeaderRewriterTests {
    @Test func removesHopByHopFieldsAndThoseNamedInConnection() {
        let headers = HTTPHeaders([
            ("Host", "example.com"), ("Proxy-Authorization", "Basic c2VjcmV0"), ("proxy-connection", "keep-alive"),
            ("Connection", "keep-alive, X-Secret"), ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
            ("Trailer", "X-T"), ("Upgrade", "websocket"), ("X-Secret", "1"), ("Accept", "*/*"),
            ("Proxy-Authenticate", "Basic"), ("Proxy-Authentication-Info", "x"),
        ])
        let out = HeaderRewriter.forwardable(headers)
        #expect(out.map(\.name) == ["Host", "Accept", "Via"])
        #expect(out["Via"] == ["1.1 portcullis"])
    }

    @Test func keepsFramingHeadersAndAppendsToAnExistingVia() {
        let headers = HTTPHeaders([("Transfer-Encoding", "chunked"), ("Via", "1.0 other"), ("Content-Type", "a/b")])
        let out = HeaderRewriter.forwardable(headers)
        #expect(out["Transfer-Encoding"] == ["chunked"])
        #expect(out["Via"] == ["1.0 other", "1.1 portcullis"])
    }

    @Test func connectionCloseDoesNotRemoveAFieldCalledClose() {
        let headers = HTTPHeaders([("Connection", "close"), ("Close", "x")])
        #expect(HeaderRewriter.forwardable(headers)["Close"] == ["x"])
    }
}
