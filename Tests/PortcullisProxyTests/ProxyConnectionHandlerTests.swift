import NIOCore
import Testing

@testable import PortcullisProxy

/// The client connection without sockets (``ConnectionHarness``): password checks finish when
/// the test says, time moves when the test says.
@Suite struct ProxyConnectionHandlerTests {
    static let good = "Proxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n"  // alice:secret
    static let wrong = "Proxy-Authorization: Basic dTpw\r\n"  // u:p

    private func harness(lockoutThreshold: Int = 1000) throws -> ConnectionHarness {
        try ConnectionHarness(shared: .init(lockoutThreshold: lockoutThreshold))
    }

    /// Finding 1 of the security review: a request pipelined behind one that closes the
    /// connection was parsed after the close began; its password check finished after the
    /// handler was removed, and touching the gone context crashed the process.
    @Test(arguments: [
        "GET http://o.test/a HTTP/1.0\r\n\r\n",
        "GET http://o.test/a HTTP/1.1\r\nHost: o.test\r\nConnection: close\r\n\r\n",
        "GET http://o.test/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "POST http://o.test/a HTTP/1.1\r\nHost: o.test\r\nContent-Length: 100000000\r\n\r\n",
    ])
    func nothingPipelinedBehindAClosingResponseIsServed(first: String) throws {
        let h = try self.harness()
        try h.send(first + "GET http://o.test/b HTTP/1.1\r\nHost: x\r\n" + Self.wrong + "\r\n")
        #expect(h.statuses.count == 1)
        #expect(h.outputText.contains("Connection: close\r\n"))
        h.close()
        #expect(!h.isOpen)
        // The check the crash came from, had it been started: it must find nothing to answer.
        h.completeChecks()
        #expect(h.shared.work.pending == 0)
        #expect(h.statuses.count == 1)
        h.finish()
    }

    @Test func aCheckThatFinishesAfterTheClientLeftAnswersNothing() throws {
        let h = try self.harness()
        try h.send("GET http://o.test/b HTTP/1.1\r\nHost: x\r\n" + Self.wrong + "\r\n")
        #expect(h.shared.work.pending == 1)
        h.close()
        h.completeChecks()
        #expect(h.statuses.isEmpty)
        h.finish()
    }

    @Test func aWrongPasswordGets407AndTheConnectionStaysForTheRetry() throws {
        let h = try self.harness()
        try h.send("GET http://o.test/b HTTP/1.1\r\nHost: x\r\n" + Self.wrong + "\r\n")
        #expect(h.statuses.isEmpty)  // not before the check finished
        h.completeChecks()
        #expect(h.statuses == [407])
        try h.send("GET http://o.test/b HTTP/1.1\r\nHost: x\r\n" + Self.good + "\r\n")
        h.completeChecks()
        // Authenticated, then refused by the harness' deny-all rule: 403, never a 407 loop.
        #expect(h.statuses == [407, 403])
        #expect(h.isOpen)
        h.finish()
    }

    @Test func pipelinedRequestsAreAnsweredInOrderOneAtATime() throws {
        let h = try self.harness()
        let request = "GET http://o.test/b HTTP/1.1\r\nHost: x\r\n" + Self.wrong + "\r\n"
        try h.send(request + request + "GET http://o.test/c HTTP/1.1\r\nHost: x\r\n\r\n")
        // Only the first request is being served: one check, nothing answered yet.
        #expect(h.shared.work.pending == 1)
        #expect(h.statuses.isEmpty)
        h.completeChecks()  // also the second's check, which the first's answer let start
        #expect(h.statuses == [407, 407, 407])
        h.finish()
    }

    /// Finding 2: a response decided before the body arrived leaves at once; a large or
    /// unknown-length body is not waited for.
    @Test(arguments: [
        "POST http://o.test/a HTTP/1.1\r\nHost: o.test\r\nContent-Length: 100000000\r\n\r\nxx",
        "POST http://o.test/a HTTP/1.1\r\nHost: o.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ])
    func aResponseDecidedBeforeTheBodyLeavesAtOnceAndTheConnectionCloses(request: String) throws {
        let h = try self.harness()
        try h.send(request)
        #expect(h.statuses == [407])
        #expect(h.outputText.contains("Connection: close\r\n"))
        // The lingering close ends by itself.
        h.advanceTime(by: .seconds(3))
        #expect(!h.isOpen)
        h.finish()
    }

    @Test func aSmallRejectedBodyIsReadAndTheConnectionKept() throws {
        let h = try self.harness()
        try h.send("POST http://o.test/a HTTP/1.1\r\nHost: o.test\r\nContent-Length: 10\r\n\r\n01234")
        #expect(h.statuses == [407])
        try h.send("56789")
        try h.send("GET http://o.test/b HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(h.statuses == [407, 407])
        #expect(h.isOpen)
        h.finish()
    }

    @Test func aStalledBodyGets408AtTheBodyDeadline() throws {
        let h = try self.harness()
        try h.send("POST http://o.test/a HTTP/1.1\r\nHost: o.test\r\n" + Self.good + "Content-Length: 10\r\n\r\n012")
        // The password check is ours to finish: a body that waits for it is not stalled.
        h.advanceTime(by: .seconds(45))
        #expect(h.statuses.isEmpty)
        h.completeChecks()
        #expect(h.statuses == [403])  // decided before the body ended; the body is small: drained
        try h.send("45")
        h.advanceTime(by: .seconds(29))
        #expect(h.isOpen)
        h.advanceTime(by: .seconds(31))
        #expect(!h.isOpen)
        h.finish()
    }

    @Test func aBodyThatKeepsComingIsNotCutOff() throws {
        let h = try self.harness()
        try h.send("POST http://o.test/a HTTP/1.1\r\nHost: o.test\r\nContent-Length: 100\r\n\r\n")
        #expect(h.statuses == [407])
        for _ in 0..<9 {
            h.advanceTime(by: .seconds(20))
            try h.send(String(repeating: "x", count: 10))
        }
        #expect(h.isOpen)
        h.finish()
    }

    @Test func anIncompleteHeadGets408() throws {
        let h = try self.harness()
        try h.send("GET http://o.test/a HTTP/1.1\r\nHost:")
        h.advanceTime(by: .seconds(31))
        #expect(h.statuses == [408])
        h.advanceTime(by: .seconds(3))
        #expect(!h.isOpen)
        h.finish()
    }

    @Test func anIdleKeepAliveConnectionCloses() throws {
        let h = try self.harness()
        try h.send("GET http://o.test/a HTTP/1.1\r\nHost: o.test\r\n\r\n")
        #expect(h.statuses == [407])
        h.advanceTime(by: .seconds(59))
        #expect(h.isOpen)
        h.advanceTime(by: .seconds(2))
        #expect(!h.isOpen)
        h.finish()
    }

    /// Finding 15: only registered scheme names are echoed.
    @Test func aBareTokenIsNeverEchoed() throws {
        let h = try self.harness()
        try h.send("GET http://o.test/a HTTP/1.1\r\nHost: o.test\r\nProxy-Authorization: 0123456789abcdef\r\n\r\n")
        #expect(h.statuses == [407])
        #expect(!h.outputText.contains("0123456789abcdef"))
        h.finish()
    }

    /// The connection fuzzer's canned requests in every order of two, each check finishing
    /// before, between or after the close: the invariants the fuzzer checks hold here too.
    @Test func cannedRequestPairsKeepTheFuzzerInvariants() throws {
        let canned = FuzzEntry.cannedRequests
        for a in canned.indices {
            for b in canned.indices {
                for script in [[7, a, 7, b, 3, 6, 3], [7, a, 3, 7, b, 5, 3], [7, a, 6, 7, b, 3]] {
                    let bytes = script.map(UInt8.init)
                    bytes.withUnsafeBytes { FuzzEntry.connection($0) }
                }
            }
        }
    }

    /// Finding 10: a locked address gets 429 for the right password too — except on a
    /// connection that proved that very credential before the lock (by a check, or from the
    /// cache), which learns nothing new from it.
    @Test func aLockedAddressGets429ForTheRightPasswordExceptWhereItWasProved() throws {
        let shared = ConnectionHarness.Shared(lockoutThreshold: 2)
        let request = "GET http://o.test/a HTTP/1.1\r\nHost: o.test\r\n"
        let checked = try ConnectionHarness(shared: shared)
        try checked.send(request + Self.good + "\r\n")
        checked.completeChecks()
        let cached = try ConnectionHarness(shared: shared)
        try cached.send(request + Self.good + "\r\n")
        #expect(checked.statuses == [403] && cached.statuses == [403])  // authenticated, then deny-all
        let guesser = try ConnectionHarness(shared: shared)
        for guess in ["Basic YWxpY2U6MQ==", "Basic YWxpY2U6Mg=="] {  // alice:1, alice:2
            try guesser.send(request + "Proxy-Authorization: \(guess)\r\n\r\n")
            guesser.completeChecks()
            guesser.advanceTime(by: .seconds(6))  // the backoff holds failed answers back
        }
        #expect(guesser.statuses == [407, 407])
        let newcomer = try ConnectionHarness(shared: shared)
        try newcomer.send(request + Self.good + "\r\n")
        #expect(newcomer.statuses == [429])
        for proved in [checked, cached] {
            try proved.send(request + Self.good + "\r\n")
            #expect(proved.statuses == [403, 403])
        }
        for h in [checked, cached, guesser, newcomer] { h.finish() }
    }
}
