import NIOCore
import Testing

@testable import PortcullisProxy

@Suite struct ResponseFramerTests {
    enum Seen: Equatable {
        case informational(Int)
        case head(Int, ResponseFramer.Framing)
        case body(String)
        case end
    }

    /// Feeds `text` in pieces of `step` bytes and collects what the framer reports, with
    /// adjacent body pieces joined so results do not depend on how the bytes were split.
    private func run(
        _ text: String,
        toHead: Bool = false,
        dechunk: Bool = false,
        step: Int = .max,
        eof: Bool = false
    ) throws -> (seen: [Seen], reusable: Bool) {
        var framer = ResponseFramer()
        framer.expectResponse(toHead: toHead, dechunk: dechunk)
        var seen: [Seen] = []
        let emit: (ResponseFramer.Event) -> Void = { event in
            switch event {
            case .informational(let head): seen.append(.informational(head.status))
            case .head(let head, let framing): seen.append(.head(head.status, framing))
            case .body(let buffer):
                let text = String(buffer: buffer)
                if case .body(let previous) = seen.last {
                    seen[seen.count - 1] = .body(previous + text)
                } else {
                    seen.append(.body(text))
                }
            case .end: seen.append(.end)
            }
        }
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + step)
            try framer.feed(ByteBuffer(bytes: bytes[offset..<end]), emit)
            offset = end
        }
        if eof { try framer.feedEOF(emit) }
        return (seen, framer.reusable)
    }

    @Test(arguments: [1, 2, 3, 7, 1000])
    func contentLengthBodyEndsExactly(step: Int) throws {
        let r = try run("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", step: step)
        #expect(r.seen == [.head(200, .length(5)), .body("hello"), .end])
        #expect(r.reusable)
    }

    @Test(arguments: [1, 2, 5, 1000])
    func chunkedBodyIsRelayedRawAndItsEndFound(step: Int) throws {
        let wire = "4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n"
        let r = try run("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + wire, step: step)
        #expect(r.seen == [.head(200, .chunked), .body(wire), .end])
    }

    @Test(arguments: [1, 3, 1000])
    func chunkedBodyIsDecodedForHTTP10Clients(step: Int) throws {
        let r = try run(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n",
            dechunk: true,
            step: step
        )
        #expect(r.seen == [.head(200, .chunked), .body("Wikipedia"), .end])
    }

    @Test func closeDelimitedBodyEndsAtEOFAndIsNotReusable() throws {
        let r = try run("HTTP/1.0 200 OK\r\n\r\nall of it", eof: true)
        #expect(r.seen == [.head(200, .untilClose), .body("all of it"), .end])
        #expect(!r.reusable)
    }

    @Test func headAnd204And304HaveNoBody() throws {
        #expect(
            try run("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", toHead: true).seen == [.head(200, .none), .end]
        )
        #expect(try run("HTTP/1.1 204 No Content\r\n\r\n").seen == [.head(204, .none), .end])
        #expect(try run("HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n").seen == [.head(304, .none), .end])
    }

    @Test func informationalResponsesPrecedeTheFinalOne() throws {
        let r = try run("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", step: 4)
        #expect(r.seen == [.informational(100), .head(201, .length(2)), .body("ok"), .end])
    }

    @Test func transferEncodingWinsOverContentLength() throws {
        let r = try run("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        #expect(r.seen == [.head(200, .chunked), .body("0\r\n\r\n"), .end])
    }

    @Test func identicalContentLengthsAreOneValue() throws {
        let r = try run("HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok")
        #expect(r.seen == [.head(200, .length(2)), .body("ok"), .end])
    }

    /// RFC 9112 §6.3: one number, or a list of identical numbers; anything else is no length.
    @Test(
        arguments: [
            ("1024", nil, 1024), ("0", nil, 0), (" 7\t", nil, 7), ("5, 5", nil, 5), ("5,5 ,\t5", nil, 5),
            ("5", 5, 5), ("000000000000000042", nil, 42), ("999999999999999999", nil, 999_999_999_999_999_999),
            ("", nil, nil), (" ", nil, nil), ("5,6", nil, nil), ("5,", nil, nil), (",5", nil, nil), ("5,,5", nil, nil),
            ("5 5", nil, nil), ("+5", nil, nil), ("-1", nil, nil), ("0x10", nil, nil), ("5", 6, nil),
            // 19 digits: refused before the arithmetic could overflow.
            ("1000000000000000000", nil, nil), ("99999999999999999999999", nil, nil),
        ] as [(String, Int?, Int?)]
    )
    func contentLengthValues(value: String, previous: Int?, expected: Int?) {
        let buffer = ByteBuffer(string: value)
        #expect(MessageSyntax.contentLength(buffer.readableBytesView, previous: previous) == expected)
    }

    @Test func bytesAfterTheResponseMakeTheConnectionUnusable() throws {
        let r = try run("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
        #expect(r.seen == [.head(200, .length(2)), .body("ok"), .end])
        #expect(!r.reusable)
    }

    @Test(arguments: [
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "ICY 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\n\r\n",
        "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX: a\u{01}b\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
    ])
    func malformedResponsesAreProtocolErrors(text: String) {
        #expect(throws: ResponseFramer.ProtocolError.self) { try run(text) }
    }

    @Test func anOversizedHeadIsRefused() {
        let huge = "HTTP/1.1 200 OK\r\nX: " + String(repeating: "a", count: 70_000)
        #expect(throws: ResponseFramer.ProtocolError.self) { try run(huge) }
        // Also when all of it, end included, arrives in one read.
        #expect(throws: ResponseFramer.ProtocolError.self) { try run(huge + "\r\n\r\n") }
    }

    @Test(arguments: [1, 2, 5, 1000])
    func hopByHopTrailerFieldsAreNotRelayed(step: Int) throws {
        let wire = "4\r\nWiki\r\n0\r\nX-Trailer: 1\r\nProxy-Authenticate: Basic realm=x\r\nConnection: y\r\n\r\n"
        let r = try run("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + wire, step: step)
        #expect(r.seen == [.head(200, .chunked), .body("4\r\nWiki\r\n0\r\nX-Trailer: 1\r\n\r\n"), .end])
    }

    @Test func eofBeforeTheEndIsAnError() {
        #expect(throws: ResponseFramer.ProtocolError.self) {
            try run("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", eof: true)
        }
    }

    /// Not one byte of a response: a close (an origin dropping a keep-alive connection), which
    /// the owner may answer with a retry — not broken HTTP.
    @Test func eofBeforeAnyResponseByteIsAClose() throws {
        #expect(try run("", eof: true).seen.isEmpty)
    }

    @Test func headerLinesAreKeptAsSent() throws {
        var framer = ResponseFramer()
        framer.expectResponse(toHead: false, dechunk: false)
        var head: ResponseHead?
        try framer.feed(
            ByteBuffer(string: "HTTP/1.1 404 Not Found\r\nX-A:  spaced value \r\nContent-Length: 0\r\n\r\n")
        ) {
            if case .head(let h, _) = $0 { head = h }
        }
        let h = try #require(head)
        #expect(h.status == 404)
        #expect(h.lines.count == 2)
        #expect(String(decoding: h.value(h.lines[0]), as: UTF8.self) == "spaced value")
        #expect(String(decoding: h.name(h.lines[1]), as: UTF8.self) == "Content-Length")
        #expect(String(decoding: h.value(h.lines[1]), as: UTF8.self) == "0")
    }
}
