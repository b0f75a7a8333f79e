import Foundation
import NIOCore
import PortcullisAuth

/// Entry points for the fuzz target (`Fuzz/`): the parsers that read bytes from the network,
/// driven with arbitrary input. Anything but a clean result or a thrown parse error — a crash,
/// a hang, a sanitizer report — is a bug.
package enum FuzzEntry {
    /// The first input byte picks the parser; the second where the rest is split in two reads
    /// (incremental parsing is where framing bugs hide).
    package static func run(_ input: UnsafeRawBufferPointer) {
        guard input.count >= 2 else { return }
        let rest = UnsafeRawBufferPointer(rebasing: input[2...])
        let split = Int(input[1]) % (rest.count + 1)
        switch input[0] % 5 {
        case 0: self.requests(rest, split: split)
        case 1: self.responses(rest, split: split, toHead: input[1] & 0x80 != 0)
        case 2: self.proxyAuthorization(rest)
        case 3: self.challenges(rest)
        default: self.ntlm(rest, split: split)
        }
    }

    /// NTLM messages from a client: `split` cuts the input into a NEGOTIATE and an AUTHENTICATE
    /// for one acceptor (the second answering its CHALLENGE as far as the bytes allow), then
    /// through every check with a hash that matches nothing.
    static func ntlm(_ bytes: UnsafeRawBufferPointer, split: Int) {
        let first = Array(bytes[..<split])
        let second = Array(bytes[split...])
        _ = NTLMNegotiateMessage.parse(first, maximumSize: 8192)
        _ = NTLMAuthenticateMessage.parse(second, maximumSize: 8192)
        var acceptor = NTLMAcceptor(settings: .init(netbiosDomainName: "FUZZ", netbiosComputerName: "PROXY"))
        var random = SystemRandomNumberGenerator()
        let now = NTLMFileTime(unixMilliseconds: 1_800_000_000_000)
        _ = acceptor.messageReceived(first, now: now, random: &random)
        if case .lookUpNTHash(let lookup) = acceptor.messageReceived(second, now: now, random: &random) {
            _ = acceptor.ntHashFound(NTHash(password: "fuzz"), previous: NTHash(password: "old"), for: lookup.id)
        }
        let gate = ProxyAuthGate(realm: "fuzz", schemes: [.negotiate, .ntlm])
        _ = gate.evaluate(proxyAuthorization: ["NTLM " + Data(second).base64EncodedString()])
    }

    static func requests(_ bytes: UnsafeRawBufferPointer, split: Int) {
        var framer = RequestFramer()
        for piece in [bytes[..<split], bytes[split...]] {
            framer.append(ByteBuffer(bytes: piece))
            while true {
                guard let event = try? framer.next() else { break }
                if case .head(let head) = event {
                    _ = RequestTarget.parse(head.target, isConnect: head.method == .connect)
                    _ = head.values(named: "proxy-authorization")
                    _ = HeaderRewriter.upstreamRequestHead(
                        head,
                        pathAndQuery: "/",
                        hostHeader: "h",
                        allocator: ByteBufferAllocator()
                    )
                }
                if case .end = event { framer.resumeAfterConnect() }
            }
        }
    }

    static func responses(_ bytes: UnsafeRawBufferPointer, split: Int, toHead: Bool) {
        var framer = ResponseFramer()
        framer.expectResponse(toHead: toHead, dechunk: split % 2 == 0)
        do {
            for piece in [bytes[..<split], bytes[split...]] {
                try framer.feed(ByteBuffer(bytes: piece)) { _ in }
            }
            try framer.feedEOF { _ in }
        } catch {}
    }

    static func proxyAuthorization(_ bytes: UnsafeRawBufferPointer) {
        let text = String(decoding: bytes, as: UTF8.self)
        let gate = ProxyAuthGate(realm: "fuzz", schemes: [.basic, .digest])
        let decision = gate.evaluate(proxyAuthorization: text.split(separator: "\n").map(String.init))
        _ = Credentials(fieldValue: text)
        // A parsed Digest answer goes through the server's arithmetic and checks too.
        if case .verifyDigest(let answer) = decision {
            _ = Self.digestAuthority.expectedResponse(answer, ha1: "0123456789abcdef0123456789abcdef", method: "GET")
            _ = Self.digestAuthority.checkNonce(answer.nonce, nonceCount: answer.nonceCount)
            _ = DigestAuthority.uriMatches(answer.uri, requestTarget: "http://h/p?q", isConnect: false)
        }
    }

    private static let digestAuthority = DigestAuthority(
        settings: .init(realm: "fuzz", maximumTrackedNonces: 64),
        key: Array(repeating: 1, count: 32)
    )

    static func challenges(_ bytes: UnsafeRawBufferPointer) {
        let text = String(decoding: bytes, as: UTF8.self)
        guard let parsed = try? ChallengeParser.parse(fieldValue: text) else { return }
        for challenge in parsed {
            if let digest = DigestChallenge(challenge),
                let responder = DigestResponder(challenge: digest, user: "u", password: "p")
            {
                _ = responder.authorization(method: "GET", uri: "/", nonceCount: 1, cnonce: "c")
            }
        }
    }

    // MARK: - The connection target

    /// One client connection driven by the input as a script (see ``ConnectionHarness``): bytes
    /// and canned requests (to reach deep states fast: pipelining, credentials right and wrong,
    /// bodies, CONNECT) gather into one read until the script delivers it; password checks
    /// complete at any point — also after the close —, time moves on, the client half-closes
    /// or the connection closes. Besides crashes, three invariants: nothing is written after a
    /// response that said `Connection: close`, nor after the output was shut, and the password
    /// never appears in what the proxy writes.
    package static func connection(_ input: UnsafeRawBufferPointer) {
        guard let harness = try? ConnectionHarness(shared: Self.harnessShared) else { return }
        var index = 0
        func next() -> Int? {
            guard index < input.count else { return nil }
            defer { index += 1 }
            return Int(input[index])
        }
        // What the client has sent since the last read was delivered: one read, however many
        // requests (a pipelining client, or a slow network joining them).
        var read: [UInt8] = []
        func deliver() {
            guard !read.isEmpty else { return }
            try? harness.send(read)
            read.removeAll(keepingCapacity: true)
        }
        while let op = next() {
            switch op % 8 {
            case 0, 1:
                let count = min((next() ?? 0) + 1, input.count - index)
                read.append(contentsOf: UnsafeRawBufferPointer(rebasing: input[index..<(index + count)]))
                index += count
            case 2:
                deliver()
            case 3:
                deliver()
                harness.completeChecks()
            case 4:
                deliver()
                harness.advanceTime(by: .seconds(Int64(next() ?? 1)))
            case 5:
                deliver()
                harness.clientHalfCloses()
            case 6:
                deliver()
                harness.close()
            default:
                read.append(contentsOf: Self.cannedRequests[(next() ?? 0) % Self.cannedRequests.count].utf8)
            }
        }
        deliver()
        harness.finish()
        Self.checkInvariants(harness.outputText)
        // A socket fails them; the handler must not try (ConnectionHarness keeps the output shut).
        precondition(harness.clientWritesAfterOutputClosed == 0, "a write after the output was shut")
    }

    private static let harnessShared = ConnectionHarness.Shared()

    /// Requests the fuzzer would take long to spell: with the script's splits and orders they
    /// make the states where closing, pipelining and late completions meet.
    static let cannedRequests: [String] = [
        "GET http://o.test/a HTTP/1.0\r\n\r\n",
        "GET http://o.test/b HTTP/1.1\r\nHost: o.test\r\nProxy-Authorization: Basic dTpw\r\n\r\n",
        "GET http://o.test/c HTTP/1.1\r\nHost: o.test\r\nProxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n",
        "GET http://o.test/d HTTP/1.1\r\nHost: o.test\r\nConnection: close\r\n\r\n",
        "POST http://o.test/e HTTP/1.1\r\nHost: o.test\r\nContent-Length: 100000000\r\n\r\nxx",
        "POST http://o.test/f HTTP/1.1\r\nHost: o.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        "CONNECT o.test:443 HTTP/1.1\r\nHost: o.test:443\r\nProxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n",
        "GET http://o.test/g HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "POST http://o.test/h HTTP/1.1\r\nHost: o.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        "GET http://o.test/i HTTP/1.1\r\nHost: o.test\r\nProxy-Authorization: Digest username=\"alice\", realm=\"Portcullis\", nonce=\"x\", uri=\"/i\", response=\"00\"\r\n\r\n",
    ]

    private static func checkInvariants(_ output: String) {
        precondition(!output.contains("YWxpY2U6c2VjcmV0") && !output.contains("secret"), "a credential was echoed")
        // Responses after one that announced the close: a request was served on a closing connection.
        if let close = output.range(of: "Connection: close\r\n") {
            let rest = output[close.upperBound...]
            if let headEnd = rest.range(of: "\r\n\r\n") {
                precondition(!rest[headEnd.upperBound...].contains("HTTP/1.1 "), "a response after Connection: close")
            }
        }
    }
}
