import NIOCore
import NIOHTTP1
import Testing

@testable import PortcullisProxy

@Suite struct RequestFramerTests {
    /// What the framer makes of `input`, fed in pieces of `step` bytes: heads as their target,
    /// bodies concatenated, ends as "|".
    private func events(_ input: String, step: Int = .max) throws(RequestFramer.RequestError) -> [String] {
        var framer = RequestFramer()
        var out: [String] = []
        var body = ""
        let bytes = Array(input.utf8)
        var offset = 0
        repeat {
            let end = min(bytes.count, offset + step)
            framer.append(ByteBuffer(bytes: bytes[offset..<end]))
            offset = end
            while let event = try framer.next() {
                switch event {
                case .head(let head): out.append(head.target)
                case .body(let buffer): body += String(buffer: buffer)
                case .end:
                    if !body.isEmpty { out.append(body) }
                    body = ""
                    out.append("|")
                }
            }
        } while offset < bytes.count
        return out
    }

    private func refusal(_ input: String) -> RequestFramer.RequestError? {
        do {
            _ = try events(input)
            return nil
        } catch {
            return error
        }
    }

    @Test func pipelinedRequestsWithBodiesComeOutInOrderWhateverTheReadSizes() throws {
        let input =
            "GET http://a/1 HTTP/1.1\r\nHost: a\r\n\r\n"
            + "POST http://a/2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
            + "POST http://a/3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
            + "GET http://a/4 HTTP/1.1\r\nHost: a\r\n\r\n"
        let expected = [
            "http://a/1", "|", "http://a/2", "hello", "|", "http://a/3",
            "3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n", "|", "http://a/4", "|",
        ]
        for step in [1, 2, 7, 64, Int.max] {
            #expect(try events(input, step: step) == expected, "step \(step)")
        }
    }

    @Test func headFieldsAreWorkedOutOnce() throws {
        let head = try RequestHead.parse(
            "PUT http://a/ HTTP/1.1\r\nHost: a\r\nConnection: close, X-Hop\r\nExpect: 100-Continue\r\n"
                + "Proxy-Authorization: Basic eDp5\r\nContent-Length: 3, 3\r\n\r\n"
        )
        #expect(head.method == .put)
        #expect(head.minorVersion == 1)
        #expect(head.framing == .length(3))
        #expect(!head.keepAlive)
        #expect(head.connectionOptions == ["x-hop"])
        #expect(head.expectsContinue)
        #expect(head.values(named: "proxy-authorization") == ["Basic eDp5"])
        #expect(String(decoding: head.methodBytes, as: UTF8.self) == "PUT")
    }

    @Test func http10IsNotKeptAliveAndNeedsNoHost() throws {
        let head = try RequestHead.parse("GET http://a/ HTTP/1.0\r\n\r\n")
        #expect(head.minorVersion == 0)
        #expect(!head.keepAlive)
    }

    @Test func emptyLinesBeforeARequestAreIgnored() throws {
        #expect(try events("\r\n\r\nGET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n") == ["http://a/", "|"])
    }

    /// Framing a front end and a back end could read differently is refused, never guessed
    /// (RFC 9112 §6.1, §6.3, §5.1, §3.2).
    @Test(arguments: [
        ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "both Transfer-Encoding and Content-Length"),
        ("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "both Transfer-Encoding and Content-Length"),
        ("Content-Length: 5\r\nContent-Length: 6\r\n", "invalid or conflicting Content-Length"),
        ("Content-Length: 5, 6\r\n", "invalid or conflicting Content-Length"),
        ("Content-Length: -1\r\n", "invalid or conflicting Content-Length"),
        ("Content-Length: 0x5\r\n", "invalid or conflicting Content-Length"),
        ("Content-Length: 99999999999999999999\r\n", "invalid or conflicting Content-Length"),
        ("Transfer-Encoding: gzip\r\n", "Transfer-Encoding does not end in chunked"),
        ("Transfer-Encoding: chunked, gzip\r\n", "invalid Transfer-Encoding"),
        ("Transfer-Encoding: chunked, chunked\r\n", "invalid Transfer-Encoding"),
        ("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n", "invalid Transfer-Encoding"),
        ("Transfer-Encoding: \"chunked\"\r\n", "invalid Transfer-Encoding"),
        ("Transfer-Encoding:\r\n", "invalid Transfer-Encoding"),
        ("Content-Length : 5\r\n", "malformed header line"),
        ("X-A: 1\r\n folded\r\n", "obsolete line folding"),
        ("X-A: a\u{0}b\r\n", "control character in a header field"),
        ("X-A: a\rb\r\n", "malformed header line"),
        ("X-A: a\nX-B: b\r\n", "control character in a header field"),
        (": empty name\r\n", "malformed header line"),
        ("Host: b\r\n", "more than one Host field"),
    ])
    func ambiguousFramingIsRefused(fields: String, reason: String) {
        let error = refusal("POST http://a/ HTTP/1.1\r\nHost: a\r\n\(fields)\r\n")
        #expect(error == .bad(reason))
    }

    @Test func transferEncodingInHTTP10IsRefused() {
        #expect(
            refusal("POST http://a/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
                == .bad("Transfer-Encoding in an HTTP/1.0 request")
        )
    }

    @Test func http11WithoutHostIsRefused() {
        #expect(refusal("GET http://a/ HTTP/1.1\r\n\r\n") == .bad("an HTTP/1.1 request needs a Host field"))
    }

    @Test(arguments: [
        ("GET  http://a/ HTTP/1.1", "malformed request line"),
        ("GET http://a/  HTTP/1.1", "malformed HTTP version"),
        ("GET http://a/", "malformed request line"),
        ("G(T http://a/ HTTP/1.1", "malformed request line"),
        ("GET http://a/\u{7F} HTTP/1.1", "invalid request target"),
        ("GET http://a/ HTTP/1.1 ", "malformed HTTP version"),
        ("GET http://a/ http/1.1", "malformed HTTP version"),
        ("GET http://a/ HTTP/1.1\nX: y", "bare LF in the request line"),
    ])
    func malformedRequestLinesAreRefused(line: String, reason: String) {
        #expect(refusal("\(line)\r\nHost: a\r\n\r\n") == .bad(reason))
    }

    @Test func otherHTTPVersionsGet505() {
        #expect(refusal("GET http://a/ HTTP/2.0\r\nHost: a\r\n\r\n")?.status == .httpVersionNotSupported)
        #expect(refusal("GET http://a/ HTTP/1.2\r\nHost: a\r\n\r\n")?.status == .httpVersionNotSupported)
    }

    @Test func oversizedHeadsGet431AndOverlongRequestLines414() {
        let big = "GET http://a/ HTTP/1.1\r\nHost: a\r\nX: " + String(repeating: "a", count: 70_000) + "\r\n\r\n"
        #expect(refusal(big)?.status == .requestHeaderFieldsTooLarge)
        let unfinished = "GET http://a/ HTTP/1.1\r\nHost: a\r\nX: " + String(repeating: "a", count: 70_000)
        #expect(refusal(unfinished)?.status == .requestHeaderFieldsTooLarge)
        let longLine = "GET http://a/" + String(repeating: "a", count: 20_000)
        #expect(refusal(longLine)?.status == .uriTooLong)
        #expect(refusal(longLine + " HTTP/1.1\r\nHost: a\r\n\r\n")?.status == .uriTooLong)
    }

    @Test(arguments: [
        ("zz\r\n", "invalid chunk size"),
        ("3\r\nabcX\r\n", "chunk data not followed by CRLF"),
        ("3\nabc\r\n", "bare LF in chunked framing"),
        ("10000000000000000\r\n", "invalid chunk size"),
    ])
    func badChunkFramingIsRefused(body: String, reason: String) {
        let error = refusal("POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\(body)")
        #expect(error == .bad(reason))
    }

    @Test func afterAConnectHeadBytesWaitForTheHandlersChoice() throws {
        var framer = RequestFramer()
        framer.append(
            ByteBuffer(
                string: "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\u{16}\u{3}\u{1}GET http://a/ HTTP/1.1\r\n"
            )
        )
        guard case .head(let head) = try framer.next() else { throw Failure("no head") }
        #expect(head.method == .connect)
        guard case .end = try framer.next() else { throw Failure("no end") }
        #expect(try framer.next() == nil)
        // A tunnel: every byte after the head belongs to it.
        var copy = framer
        #expect(String(buffer: copy.takeBufferedBytes()).hasPrefix("\u{16}\u{3}\u{1}GET"))
        // No tunnel (a 407): parsing resumes with what follows.
        framer.resumeAfterConnect()
        #expect(try framer.next() == nil)
        framer.append(ByteBuffer(string: "Host: a\r\n\r\n"))
        #expect(throws: RequestFramer.RequestError.bad("malformed request line")) { _ = try framer.next() }
    }

    @Test func onlyASingleProxyAuthorizationLineIsKept() throws {
        let one = try RequestHead.parse("GET http://a/ HTTP/1.1\r\nHost: a\r\nProxy-Authorization: Basic eDp5\r\n\r\n")
        #expect(one.proxyAuthorization.map { String(decoding: one.value($0), as: UTF8.self) } == "Basic eDp5")
        let two = try RequestHead.parse(
            "GET http://a/ HTTP/1.1\r\nHost: a\r\nProxy-Authorization: Basic eDp5\r\nProxy-Authorization: Basic eDp5\r\n\r\n"
        )
        #expect(two.proxyAuthorization == nil)
        #expect(two.values(named: "proxy-authorization").count == 2)
    }

    @Test func aRetryAfterARefusedConnectIsParsed() throws {
        var framer = RequestFramer()
        framer.append(ByteBuffer(string: "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\nCONNECT a:443 HTTP/1.1\r\n"))
        _ = try framer.next()
        _ = try framer.next()
        framer.resumeAfterConnect()
        #expect(try framer.next() == nil)
        framer.append(ByteBuffer(string: "Host: a:443\r\nProxy-Authorization: Basic eDp5\r\n\r\n"))
        guard case .head(let retry) = try framer.next() else { throw Failure("no retry head") }
        #expect(retry.proxyAuthorization != nil)
    }

    /// RFC 9110 §6.5.1: credentials for this proxy, hop-by-hop and framing fields never pass
    /// in a trailer section (a `Proxy-Authorization` there once reached the origin); the
    /// other trailer fields pass unchanged, whatever the read sizes.
    @Test func forbiddenTrailerFieldsAreDroppedWhateverTheReadSizes() throws {
        let input =
            "POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "4\r\nabcd\r\n0\r\nX-Sum: 1\r\nProxy-Authorization: Basic c2VjcmV0\r\n"
            + "proxy-authorization: Basic eA==\r\nConnection: x\r\nContent-Length: 9\r\nNoColon\r\n"
            + "X-After: 2\r\n\r\n"
            + "GET http://a/2 HTTP/1.1\r\nHost: a\r\n\r\n"
        let expected = [
            "http://a/", "4\r\nabcd\r\n0\r\nX-Sum: 1\r\nX-After: 2\r\n\r\n", "|", "http://a/2", "|",
        ]
        for step in [1, 2, 7, 64, Int.max] {
            #expect(try events(input, step: step) == expected, "step \(step)")
        }
    }

    @Test(arguments: [
        (["Content-Length: 4", "Content-Length: 4"], true),
        (["Content-Length: 4, 4"], true),
        (["Content-Length: 4"], false),
    ])
    func aRepeatedContentLengthIsMarkedForOneField(fields: [String], repeated: Bool) throws {
        let head = try RequestHead.parse(
            (["POST http://a/ HTTP/1.1", "Host: a"] + fields).joined(separator: "\r\n") + "\r\n\r\n"
        )
        #expect(head.framing == .length(4))
        #expect(head.contentLengthIsRepeated == repeated)
    }
}

struct Failure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension RequestFramer.Event: Equatable {
    public static func == (a: Self, b: Self) -> Bool {
        switch (a, b) {
        case (.end, .end): return true
        case (.body(let x), .body(let y)): return x == y
        case (.head(let x), .head(let y)): return x.bytes == y.bytes
        default: return false
        }
    }
}
