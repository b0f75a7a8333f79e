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
        switch input[0] % 4 {
        case 0: self.requests(rest, split: split)
        case 1: self.responses(rest, split: split, toHead: input[1] & 0x80 != 0)
        case 2: self.proxyAuthorization(rest)
        default: self.challenges(rest)
        }
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
}
