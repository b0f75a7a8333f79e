import NIOCore
import PortcullisAuth

// Stand-ins until the stores keep NT hashes (branch i19-ntstore): the shapes the gate is
// written against. Every lookup answers "not enrolled".
public struct NTLMSecrets: Sendable {
    public var user: String
    public var ntHash: NTHash
    public var previousNTHash: NTHash?
    public var standing: AccountStanding

    public init(user: String, ntHash: NTHash, previousNTHash: NTHash? = nil, standing: AccountStanding = .init()) {
        self.user = user
        self.ntHash = ntHash
        self.previousNTHash = previousNTHash
        self.standing = standing
    }
}

public enum NTLMLookup: Sendable {
    case found(NTLMSecrets)
    case notEnrolled(user: String)
    case unknownUser
    case unavailable
}

extension CredentialVerifier {
    public func ntlmSecrets(name: String, on eventLoop: any EventLoop) -> EventLoopFuture<NTLMLookup> {
        eventLoop.makeSucceededFuture(.unknownUser)
    }

    public func cachedNTLMSecrets(name: String, now: NIODeadline = .now()) -> NTLMLookup? { nil }
}
