import NIOCore
import NIOEmbedded
import Testing

@testable import PortcullisProxy

@Suite struct UpstreamHandlerTests {
    /// Counts the reads the upstream handler lets through to the channel.
    final class ReadCounter: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        private(set) var reads = 0

        func read(context: ChannelHandlerContext) {
            self.reads += 1
            context.read()
        }
    }

    /// One upstream connection in an `EmbeddedChannel`: the test is the origin.
    final class Origin {
        let loop = EmbeddedEventLoop()
        let channel: EmbeddedChannel
        let handler = UpstreamHandler()
        let reads = ReadCounter()
        /// The owners of the requests so far: the handler holds them weakly, as a client
        /// connection's pipeline holds its handler.
        private var owners: [RecordingUpstreamOwner] = []

        init() throws {
            // The pool measures idleness back from `now`; at the loop's time zero nothing would be fresh.
            self.loop.advanceTime(by: .minutes(1))
            self.channel = EmbeddedChannel(loop: self.loop)
            try self.channel.pipeline.syncOperations.addHandlers([self.reads, self.handler])
            try self.channel.connect(to: SocketAddress(ipAddress: "192.0.2.80", port: 80)).wait()
        }

        /// A request from `owner`, as the client side sends it.
        func request(from owner: RecordingUpstreamOwner, isHEAD: Bool = false) {
            self.owners.append(owner)
            self.handler.attach(to: owner)
            self.handler.sendHead(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: origin\r\n\r\n"), isHEAD: isHEAD)
            self.handler.flush()
        }

        /// The origin's bytes, one read (and its readComplete) each.
        func respond(_ parts: String...) throws {
            for part in parts { try self.channel.writeInbound(ByteBuffer(string: part)) }
        }

        /// The origin stops sending (a half-close).
        func sendEOF() {
            self.channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        }

        /// What went to the origin so far.
        func sent() throws -> String {
            var text = ""
            while let part = try self.channel.readOutbound(as: ByteBuffer.self) { text += String(buffer: part) }
            return text
        }

        func finish() {
            _ = try? self.channel.finish(acceptAlreadyClosed: true)
        }
    }

    static let request = "GET / HTTP/1.1\r\nHost: origin\r\n\r\n"
    static let key = UpstreamPool.Key(host: "origin", port: 80)
    static let ok = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

    /// Acts like the client side at a response's end: detach and hand the connection back.
    static func releaseAtEnd(_ owner: RecordingUpstreamOwner, _ origin: Origin, to pool: UpstreamPool) {
        owner.onEvent = { [unowned origin] event in
            guard case .end = event else { return }
            origin.handler.detach()
            pool.release(origin.handler, key: Self.key, now: origin.loop.now)
        }
    }

    @Test func aRequestGoesOutAndItsResponseComesBackToTheOwner() throws {
        let origin = try Origin()
        defer { origin.finish() }
        let owner = RecordingUpstreamOwner()
        origin.request(from: owner)
        #expect(try origin.sent() == Self.request)
        try origin.respond(Self.ok)
        #expect(owner.calls == [.head(200, .length(5)), .body("hello"), .end, .readComplete])
        #expect(origin.handler.isUsable && origin.channel.isActive)
    }

    @Test(arguments: [1, 2, 3, 7, 19, 44, 45, 1000])
    func aResponseSplitAtAnyByteArrivesWhole(step: Int) throws {
        let origin = try Origin()
        defer { origin.finish() }
        let owner = RecordingUpstreamOwner()
        origin.request(from: owner)
        let chunks = "5\r\nhello\r\n7;x=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n"
        let bytes = Array(
            ("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks).utf8
        )
        var parts = 0
        for start in stride(from: 0, to: bytes.count, by: step) {
            try origin.channel.writeInbound(ByteBuffer(bytes: bytes[start..<min(bytes.count, start + step)]))
            parts += 1
        }
        #expect(owner.response == [.informational(100), .head(200, .chunked), .body(chunks), .end])
        #expect(owner.calls.filter { $0 == .readComplete }.count == parts)
        #expect(origin.handler.isUsable)
    }

    @Test func aPooledConnectionCarriesTheNextExchange() throws {
        let origin = try Origin()
        defer { origin.finish() }
        let pool = UpstreamPool(eventLoop: origin.loop, maximumIdlePerOrigin: 2, idleTimeout: .seconds(30))
        defer { pool.shutdown() }
        let first = RecordingUpstreamOwner()
        Self.releaseAtEnd(first, origin, to: pool)
        origin.request(from: first)
        try origin.respond(Self.ok)
        // Detached inside the read, the first owner still gets the readComplete that flushes its client.
        #expect(first.calls == [.head(200, .length(5)), .body("hello"), .end, .readComplete])
        #expect(origin.handler.pool === pool)

        let reused = pool.acquire(Self.key, now: origin.loop.now)
        #expect(reused === origin.handler)
        let second = RecordingUpstreamOwner()
        origin.request(from: second)
        #expect(origin.handler.pool == nil && origin.handler.poolKey == nil)
        #expect(try origin.sent() == Self.request + Self.request)
        try origin.respond("HTTP/1.1 204 No Content\r\n\r\n")
        #expect(second.calls == [.head(204, .none), .end, .readComplete])
        #expect(first.calls.count == 4)
    }

    @Test func aPipelinedExchangeStartedInsideTheBurstLeavesItsReadCompleteToTheFirstOwner() throws {
        let origin = try Origin()
        defer { origin.finish() }
        let pool = UpstreamPool(eventLoop: origin.loop, maximumIdlePerOrigin: 2, idleTimeout: .seconds(30))
        defer { pool.shutdown() }
        let first = RecordingUpstreamOwner()
        let second = RecordingUpstreamOwner()
        first.onEvent = { [unowned origin] event in
            guard case .end = event else { return }
            origin.handler.detach()
            pool.release(origin.handler, key: UpstreamPool.Key(host: "origin", port: 80), now: origin.loop.now)
            // The client's next request, already read, takes the connection straight back.
            _ = pool.acquire(UpstreamPool.Key(host: "origin", port: 80), now: origin.loop.now)
            origin.request(from: second)
        }
        origin.request(from: first)
        try origin.respond(Self.ok)
        #expect(first.calls == [.head(200, .length(5)), .body("hello"), .end, .readComplete])
        #expect(second.calls == [])
        try origin.respond(Self.ok)
        #expect(second.calls == [.head(200, .length(5)), .body("hello"), .end, .readComplete])
    }

    @Test(arguments: ["Connection: close\r\n", ""])
    func aResponseTheOriginWillCloseAfterIsNotPooled(connectionHeader: String) throws {
        let origin = try Origin()
        defer { origin.finish() }
        let pool = UpstreamPool(eventLoop: origin.loop, maximumIdlePerOrigin: 2, idleTimeout: .seconds(30))
        defer { pool.shutdown() }
        let owner = RecordingUpstreamOwner()
        Self.releaseAtEnd(owner, origin, to: pool)
        let onEnd = owner.onEvent
        // The client side reads the head's `Connection: close` (or an HTTP/1.0 status line).
        owner.onEvent = { [unowned origin] event in
            if case .head = event { origin.handler.originWillClose() }
            onEnd?(event)
        }
        origin.request(from: owner)
        let version = connectionHeader.isEmpty ? "1.0" : "1.1"
        try origin.respond("HTTP/\(version) 200 OK\r\n\(connectionHeader)Content-Length: 2\r\n\r\nok")
        #expect(owner.calls == [.head(200, .length(2)), .body("ok"), .end, .readComplete])
        #expect(pool.acquire(Self.key, now: origin.loop.now) == nil)
        #expect(!origin.channel.isActive && !origin.handler.isUsable)
    }

    @Test func bytesPastTheResponseKeepTheConnectionFromThePool() throws {
        let origin = try Origin()
        defer { origin.finish() }
        let pool = UpstreamPool(eventLoop: origin.loop, maximumIdlePerOrigin: 2, idleTimeout: .seconds(30))
        defer { pool.shutdown() }
        let owner = RecordingUpstreamOwner()
        Self.releaseAtEnd(owner, origin, to: pool)
        origin.request(from: owner)
        try origin.respond(Self.ok + "HTTP/1.1 200 OK\r\n")
        #expect(owner.calls == [.head(200, .length(5)), .body("hello"), .end, .readComplete])
        #expect(pool.acquire(Self.key, now: origin.loop.now) == nil && !origin.channel.isActive)
    }

    @Test func bytesOnAnIdleConnectionCloseIt() throws {
        let origin = try Origin()
        defer { origin.finish() }
        try origin.respond("HTTP/1.1 200 OK\r\n\r\n")
        #expect(!origin.channel.isActive && !origin.handler.isUsable)
    }

    @Test func anEOFBeforeTheResponseIsReportedAsACloseWithoutAnError() throws {
        let origin = try Origin()
        defer { origin.finish() }
        let owner = RecordingUpstreamOwner()
        origin.request(from: owner)
        origin.sendEOF()
        // One readComplete at the EOF, one as the channel closes, then why.
        #expect(
            owner.calls == [
                .readComplete, .readComplete, .closed(nil),
            ]
        )
        #expect(!origin.channel.isActive)
    }

    @Test func anEOFInTheMiddleOfABodyIsReportedAsSuch() throws {
        let origin = try Origin()
        defer { origin.finish() }
        let owner = RecordingUpstreamOwner()
        origin.request(from: owner)
        try origin.respond("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        owner.forgetCalls()
        origin.sendEOF()
        #expect(
            owner.calls == [
                .readComplete, .readComplete, .closed("origin closed the connection in the middle of a response"),
            ]
        )
    }

    @Test func aCloseDelimitedBodyEndsAtEOFAndTheConnectionCloses() throws {
        let origin = try Origin()
        defer { origin.finish() }
        let pool = UpstreamPool(eventLoop: origin.loop, maximumIdlePerOrigin: 2, idleTimeout: .seconds(30))
        defer { pool.shutdown() }
        let owner = RecordingUpstreamOwner()
        Self.releaseAtEnd(owner, origin, to: pool)
        origin.request(from: owner)
        try origin.respond("HTTP/1.0 200 OK\r\n\r\nall of", " it")
        origin.sendEOF()
        #expect(
            owner.calls == [
                .head(200, .untilClose), .body("all of"), .readComplete, .body(" it"), .readComplete, .end,
                .readComplete,
            ]
        )
        #expect(pool.acquire(Self.key, now: origin.loop.now) == nil && !origin.channel.isActive)
    }

    @Test func aCloseWithoutHalfCloseEndsACloseDelimitedBodyToo() throws {
        let origin = try Origin()
        defer { origin.finish() }
        let owner = RecordingUpstreamOwner()
        owner.onEvent = { [unowned origin] event in
            if case .end = event {
                origin.handler.detach()
                origin.handler.close()
            }
        }
        origin.request(from: owner)
        try origin.respond("HTTP/1.1 200 OK\r\n\r\nall")
        owner.forgetCalls()
        origin.channel.close(promise: nil)
        #expect(owner.calls == [.end, .readComplete])
    }

    @Test func anIdlePooledConnectionThatClosesLeavesThePool() throws {
        let origin = try Origin()
        defer { origin.finish() }
        // Room for one: the closed connection must give its place to the next one released.
        let pool = UpstreamPool(eventLoop: origin.loop, maximumIdlePerOrigin: 1, idleTimeout: .seconds(30))
        defer { pool.shutdown() }
        let owner = RecordingUpstreamOwner()
        Self.releaseAtEnd(owner, origin, to: pool)
        origin.request(from: owner)
        try origin.respond(Self.ok)
        #expect(origin.handler.pool === pool)
        origin.sendEOF()
        #expect(!origin.channel.isActive)
        #expect(owner.calls == [.head(200, .length(5)), .body("hello"), .end, .readComplete])

        let next = try Origin()
        defer { next.finish() }
        let nextOwner = RecordingUpstreamOwner()
        Self.releaseAtEnd(nextOwner, next, to: pool)
        next.request(from: nextOwner)
        try next.respond(Self.ok)
        #expect(next.channel.isActive)
        #expect(pool.acquire(Self.key, now: next.loop.now) === next.handler)
    }

    @Test func aProtocolErrorIsWhatTheOwnerIsToldNotTheCloseAfterIt() throws {
        let origin = try Origin()
        defer { origin.finish() }
        let owner = RecordingUpstreamOwner()
        origin.request(from: owner)
        try origin.respond("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
        #expect(
            owner.calls == [.informational(100), .readComplete, .closed("invalid or conflicting Content-Length")]
        )
        #expect(!origin.channel.isActive)
    }

    @Test func aChannelErrorClosesAndIsReportedOnce() throws {
        let origin = try Origin()
        defer { origin.finish() }
        let owner = RecordingUpstreamOwner()
        origin.request(from: owner)
        origin.channel.pipeline.fireErrorCaught(UpstreamTestError(description: "connection reset"))
        #expect(owner.calls == [.readComplete, .closed("connection reset")])
        #expect(!origin.channel.isActive)
    }

    @Test func readsWaitWhileTheOwnersClientIsFull() throws {
        let origin = try Origin()
        defer { origin.finish() }
        let owner = RecordingUpstreamOwner()
        origin.request(from: owner)
        origin.channel.read()
        #expect(origin.reads.reads == 1)
        owner.ownerIsWritable = false
        origin.channel.read()
        #expect(origin.reads.reads == 1)
        origin.handler.resumeReading()
        #expect(origin.reads.reads == 2)
        // Nothing held any more: a second resume reads nothing.
        origin.handler.resumeReading()
        #expect(origin.reads.reads == 2)
    }

    @Test func aReadHeldForAnOwnerThatLeavesGoesOut() throws {
        let origin = try Origin()
        defer { origin.finish() }
        let owner = RecordingUpstreamOwner()
        owner.ownerIsWritable = false
        origin.request(from: owner)
        origin.channel.read()
        #expect(origin.reads.reads == 0)
        origin.handler.detach()
        #expect(origin.reads.reads == 1)
        // Idle: no client to wait for.
        origin.channel.read()
        #expect(origin.reads.reads == 2)
    }

    @Test func theOriginsWritabilityIsPassedToTheOwner() throws {
        let origin = try Origin()
        defer { origin.finish() }
        let owner = RecordingUpstreamOwner()
        origin.request(from: owner)
        origin.channel.isWritable = false
        origin.channel.pipeline.fireChannelWritabilityChanged()
        #expect(owner.calls == [.writabilityChanged(false)])
        #expect(!origin.handler.isWritable)
    }

    @Test func chunkedBodiesAreDecodedForAnHTTP10Client() throws {
        let origin = try Origin()
        defer { origin.finish() }
        let owner = RecordingUpstreamOwner()
        origin.handler.clientIsHTTP10 = true
        origin.request(from: owner)
        try origin.respond("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        #expect(owner.calls == [.head(200, .chunked), .body("hello"), .end, .readComplete])
    }

    @Test func theResponseToHEADHasNoBody() throws {
        let origin = try Origin()
        defer { origin.finish() }
        let owner = RecordingUpstreamOwner()
        origin.request(from: owner, isHEAD: true)
        try origin.respond("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        #expect(owner.calls == [.head(200, .none), .end, .readComplete])
        #expect(origin.handler.isUsable)
    }
}
